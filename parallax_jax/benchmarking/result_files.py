"""The files a benchmark or check writes: ``<stem>.json`` (everything measured) and ``<stem>.md``
(the table), under a stem of its own. Results are never overwritten: a stem whose ``.json`` or
``.md`` exists gets a suffix (``_2``, ``_3``, ...)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["new_stem", "write"]


def _files(stem: Path) -> tuple[Path, Path]:
  # Not ``with_suffix``: names such as "..._lr0.5" hold dots.
  return Path(f"{stem}.json"), Path(f"{stem}.md")


def new_stem(out_dir: str | Path, name: str) -> Path:
  """``<out_dir>/<name>``, or ``<name>_<i>`` with the smallest ``i >= 2`` whose files do not
  exist yet; creates ``out_dir``."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem, i = out / name, 1
  while any(f.exists() for f in _files(stem)):
    i += 1
    stem = out / f"{name}_{i}"
  return stem


def write(stem: str | Path, result: dict, markdown: str) -> None:
  """Writes ``<stem>.json`` (``result``; non-JSON values as text) and ``<stem>.md``. A run calls
  it again as rows arrive, so a run cut short keeps what it measured."""
  json_path, md_path = _files(Path(stem))
  json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
  md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
