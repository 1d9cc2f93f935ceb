"""A run's files: small records written so that a reader never sees half of one, and whether a
path lies in a run (what reads a run must not write there)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file beside it and ``os.replace``: a
  process killed mid-write leaves the old file (or none), never a cut one."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def lies_in(path: str | Path, directory: str | Path) -> bool:
  """Whether ``path`` (``~`` expanded, made absolute) lies in ``directory`` or is it, as
  written or with symbolic links resolved."""
  path = Path(os.path.abspath(os.path.expanduser(path)))
  directory = Path(directory).absolute()
  return path.is_relative_to(directory) or path.is_relative_to(directory.resolve())
