"""A sweep point's own files, read: ``status.json`` (what the runner recorded) and
``metrics.jsonl`` (what its trainer logged). A damaged one costs its point only: the report
shows it in that point's row, the runner leaves the point as it is, the tools name the file."""

from __future__ import annotations

import json
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.train.metrics import read_metrics


def point_records(directory: Path) -> tuple[list[dict], str | None]:
  """``(metrics records, None)``, or ``([], why)`` for a damaged metrics.jsonl: one damaged
  point must not cost the whole sweep its table and plots."""
  path = Path(directory) / "metrics.jsonl"
  try:
    records = read_metrics(directory, missing_ok=True)
  except UserError as e:
    return [], str(e)
  except ValueError as e:  # UnicodeDecodeError: not text at all
    return [], f"{path} is not text ({e}): the file was damaged"
  for i, r in enumerate(records):
    if not (isinstance(r, dict) and isinstance(r.get("step"), int)):
      return [], (
        f"{path}: record {i + 1} is not a metrics record (a JSON object with an int step): "
        f"{json.dumps(r)[:200]} (the file was changed by hand or damaged); delete it to go on"
      )
  return records, None


def read_status_file(directory: str | Path) -> dict | None:
  """A point's ``status.json`` (None where there is none); one that is not a JSON object (edited
  or cut outside parallax-jax: the sweep writes it atomically) is a ``UserError`` naming it."""
  path = Path(directory) / "status.json"
  if not path.exists():
    return None
  try:
    status = json.loads(path.read_text())
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    problem = f"is not JSON ({type(e).__name__}: {e})"
  else:
    if isinstance(status, dict):
      return status
    problem = "is not a point's record (a JSON object)"
  raise UserError(
    f"{path} {problem}: the point's record is damaged; restore it, or delete that point's folder "
    "to train it again"
  )
