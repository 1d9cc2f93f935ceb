"""The files a benchmark or check writes: ``<stem>.json`` (everything measured) and ``<stem>.md``
(the table), under a stem of its own. Results are never overwritten: a stem whose ``.json`` or
``.md`` exists gets a suffix (``_2``, ``_3``, ...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["add_row", "measure_row", "new_stem", "save", "write"]


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


def save(out_dir: str | Path, name: str, result: dict, markdown: str) -> Path:
  """``write`` under a ``new_stem`` of ``out_dir`` and say so; returns the stem."""
  stem = new_stem(out_dir, name)
  write(stem, result, markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return stem


def measure_row(row: dict, measure: Callable[..., dict], *args, max_chars: int = 1000) -> dict:
  """``row`` updated with ``measure(*args)``'s values or, if it raises, with the error as text
  (``row["error"]``): a failed row is recorded and the run goes on."""
  try:
    row.update(measure(*args))
  except Exception as e:  # noqa: BLE001 - recorded, the run goes on
    row["error"] = f"{type(e).__name__}: {e}"[:max_chars]
  return row


def add_row(
  stem: str | Path,
  result: dict,
  row: dict,
  markdown_of: Callable[[dict], str],
  hide: Iterable[str] = (),
) -> None:
  """Appends ``row`` to ``result["rows"]``, prints it (less the ``hide`` keys: bulky raw data)
  and rewrites the files, so a run cut short keeps every row it finished."""
  result["rows"].append(row)
  hide = set(hide)
  print(json.dumps({k: v for k, v in row.items() if k not in hide}, default=str), flush=True)
  write(stem, result, markdown_of(result))
