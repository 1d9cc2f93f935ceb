"""Writing a run's small record files so that a reader never sees half of one."""

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
