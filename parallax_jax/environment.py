"""What a run or a benchmark ran on: the devices, the library versions and the code's revision.

A run's ``config.json`` (and each resume's history entry) and the benchmarks' JSON records store
``describe()``, so a number can be traced to the card and the software that produced it: a
tokens/s from an H100 is not one from an H200, and a loss from before a library fix is not one
from after it (docs/design.md §16).
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

# Distributions whose versions decide a run's numbers (importlib.metadata names).
PACKAGES = (
  "jax",
  "jaxlib",
  "jax-cuda12-plugin",
  "jax-cuda13-plugin",
  "libtpu",
  "flax",
  "optax",
  "orbax-checkpoint",
  "grain",
  "numpy",
  "ml-collections",
  "tokenizers",
)
_GIT_TIMEOUT_S = 5


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
  """``{distribution: version}`` of those of ``names`` that are installed."""
  out = {}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def device_summary() -> dict:
  """The backend's devices: platform, kind (e.g. "NVIDIA H200"), global and local counts, and
  the number of processes."""
  import jax

  devices = jax.devices()
  return {
    "platform": jax.default_backend(),
    "kind": devices[0].device_kind,
    "count": len(devices),
    "local_count": jax.local_device_count(),
    "processes": jax.process_count(),
  }


def code_revision(root: str | Path | None = None) -> dict | None:
  """``{"commit", "dirty"}`` of the git checkout holding this package (``root``: another
  directory), or None where the code is not a git checkout (an installed wheel, a copied tree)
  or git is absent. ``dirty``: tracked files differ from the commit."""
  root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
  if not (root / ".git").exists():
    return None

  def git(*args: str) -> str:
    return subprocess.run(
      ["git", "-C", str(root), *args],
      capture_output=True,
      text=True,
      check=True,
      timeout=_GIT_TIMEOUT_S,
    ).stdout.strip()

  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": dirty}


def describe(extra_packages: tuple[str, ...] = ()) -> dict:
  """The record: host, Python, ``device_summary()``, ``package_versions()`` (plus
  ``extra_packages``) and ``code_revision()``."""
  return {
    "host": socket.gethostname(),
    "python": platform.python_version(),
    "devices": device_summary(),
    "versions": package_versions(PACKAGES + tuple(extra_packages)),
    "code": code_revision(),
  }


def hardware(record: dict | None) -> str | None:
  """``"<count>x <kind>"`` of a ``describe()`` record (None for a record without one: runs
  recorded before 2026-12-05)."""
  if not record or "devices" not in record:
    return None
  d = record["devices"]
  return f"{d['count']}x {d['kind']}"
