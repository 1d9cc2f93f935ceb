"""The provenance every benchmark record carries: date, hardware, versions, exact command."""

from __future__ import annotations

import datetime
import platform
import sys

import jax


def run_info(module: str, argv=None) -> dict:
  """``date``, ``device``, ``backend``, ``jax``, ``python`` and ``command`` (``python -m module``
  with ``argv``, default the process's arguments)."""
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "command": f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv),
  }
