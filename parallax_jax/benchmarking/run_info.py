"""The provenance every benchmark record carries: date, hardware, versions, exact command."""

from __future__ import annotations

import datetime
import platform
import sys

import jax

from parallax_jax import environment


def run_info(module: str, argv=None) -> dict:
  """``date``, ``device``, ``backend``, ``jax``, ``python``, ``versions`` (the libraries that
  decide the numbers), ``code`` (the git commit, None outside a checkout) and ``command``
  (``python -m module`` with ``argv``, default the process's arguments)."""
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "versions": environment.package_versions(),
    "code": environment.code_revision(),
    "command": command(module, argv),
  }


def command(module: str, argv=None) -> str:
  """``python -m module`` with ``argv``: the arguments ``main(argv)`` parsed (None: the
  process's), not ``sys.argv``, which is a caller's (pytest's, a sweep's) under ``main(argv)``."""
  return f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
