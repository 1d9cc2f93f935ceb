"""A sweep's ``results.csv`` as one markdown table: a metric by two of its axes.

Points that differ only in the other axes (e.g. ``train.seed``) are averaged; with several,
the cell shows ``mean ± half the range`` and their count. Unfinished points are left out.

CLI: ``python -m experiments.pivot_results W/results.csv --rows A --cols B --value M``.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from parallax_jax.errors import UserError


def finite(text, column: str = "value") -> float | None:
  """A results.csv cell as a float; None for an empty or non-finite one (``report`` writes a
  non-finite metric as empty: a diverged run has no value to average or pair). A cell that is
  no number (``column`` names it in the error) is a UserError: the column is not a metric."""
  if text is None or text == "":
    return None
  try:
    x = float(text)
  except (TypeError, ValueError):
    raise UserError(f"{column} holds {text!r}, not a number; give a metric column") from None
  return x if math.isfinite(x) else None


def check_format(fmt: str) -> None:
  """A UserError unless ``fmt`` (``--fmt``) formats one number, ``fmt.format(x)``: a bad one
  ended the table in a ValueError / KeyError / IndexError traceback, and one without a field
  printed the same text in every cell."""
  try:
    texts = {fmt.format(x) for x in (1.25, -3.75)}
  except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
    raise UserError(
      f"--fmt {fmt!r} does not format a number ({type(e).__name__}: {e}); e.g. '{{:.3f}}'"
    ) from None
  if len(texts) == 1:
    raise UserError(f"--fmt {fmt!r} has no field for the number; e.g. '{{:.3f}}'")


def mean_spread(xs: list[float], fmt: str = "{:.3f}") -> str:
  """A table cell of repeated measurements: ``-`` (none), the value (one), or ``mean ± half
  the range (n=...)``."""
  if not xs:
    return "-"
  if len(xs) == 1:
    return fmt.format(xs[0])
  half = (max(xs) - min(xs)) / 2
  return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(half)} (n={len(xs)})"


def pivot(csv_path: str | Path, rows: str, cols: str, value: str, fmt: str = "{:.3f}") -> str:
  check_format(fmt)
  with open(csv_path, newline="") as f:
    records = [r for r in csv.DictReader(f) if r.get("status") == "finished"]
  if not records:
    raise UserError(f"{csv_path}: no finished points")
  for key in (rows, cols, value):
    if key not in records[0]:
      raise UserError(f"{csv_path} has no column {key!r}; columns: {list(records[0])}")
  cells: dict[tuple[str, str], list[float]] = {}
  row_keys, col_keys = [], []
  for r in records:
    x = finite(r[value], f"{csv_path}: column {value!r}")
    if x is None:
      continue
    if r[rows] not in row_keys:
      row_keys.append(r[rows])
    if r[cols] not in col_keys:
      col_keys.append(r[cols])
    cells.setdefault((r[rows], r[cols]), []).append(x)

  lines = [
    f"| {rows} \\ {cols} | " + " | ".join(col_keys) + " |",
    "|---|" + "---:|" * len(col_keys),
  ]
  for rk in row_keys:
    lines.append(
      f"| {rk} | " + " | ".join(mean_spread(cells.get((rk, ck), []), fmt) for ck in col_keys) + " |"
    )
  return "\n".join(lines)
