"""A run's files: small records written so that a reader never sees half of one, and whether a
path lies in a run (what reads a run must not write there)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
  """``write_bytes_atomic`` of ``text`` in UTF-8."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file beside it and ``os.replace``: a
  process killed mid-write leaves the old file (or none), never a cut one. The file's data
  reaches the disk before the rename and the rename before return (``fsync`` of the file, then
  of its folder): a machine that loses power (a preempted VM) otherwise may keep the rename but
  not the data, an empty record where the old one was."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:  # a platform or filesystem without folder handles (Windows): nothing to sync
    return
  try:
    os.fsync(fd)
  except OSError:  # some filesystems refuse fsync on a folder; the rename itself is done
    pass
  finally:
    os.close(fd)


def lies_in(path: str | Path, directory: str | Path) -> bool:
  """Whether ``path`` (``~`` expanded, made absolute) lies in ``directory`` or is it, as
  written or with symbolic links resolved."""
  path = Path(os.path.abspath(os.path.expanduser(path)))
  directory = Path(directory).absolute()
  return path.is_relative_to(directory) or path.is_relative_to(directory.resolve())
