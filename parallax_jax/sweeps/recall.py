"""MQAR recall per sweep point: final accuracy, when it was learnt, and the guessing level.

Recall is learnt in a jump after a plateau (docs/design.md §15.1), so a point is summarised by
its final held-out accuracy, the first eval at which the accuracy reached ``threshold`` (the
jump's step) and the level a model that knows the rules but cannot match keys would score
(``data.synthetic.mqar_guess_accuracy``): a run that did not learn recall ends near that level.
Everything is read from the finished points' own ``config.json`` and ``metrics.jsonl``, not
from their variant names, so any MQAR sweep's points fit.

CLI: ``python -m experiments.mqar_summary W/points [--threshold 0.95]``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from parallax_jax.data.synthetic import mqar_guess_accuracy, mqar_vocab
from parallax_jax.train.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class RecallPoint:
  """One finished MQAR run: what it trained and how recall went."""

  layers: int
  pairs: int
  queries: int
  values: int  # value ids the answers are drawn from
  kind: str  # model.attention
  learning_rate: float
  seed: int
  final: float  # held-out accuracy at the last eval
  learnt_at: int | None  # first eval step with accuracy >= the threshold; None: never

  @property
  def task(self) -> tuple[int, int, int, int, int]:
    """The table's row: ``(layers, pairs, queries, values, seed)``."""
    return (self.layers, self.pairs, self.queries, self.values, self.seed)

  @property
  def setting(self) -> tuple[str, float]:
    """The table's column: ``(kind, learning_rate)``."""
    return (self.kind, self.learning_rate)


def read_point(point_dir: str | Path, threshold: float) -> RecallPoint | None:
  """The point's ``RecallPoint``; None if it is not a finished MQAR run with an eval."""
  d = Path(point_dir)
  status_path, config_path = d / "status.json", d / "config.json"
  if not (status_path.exists() and config_path.exists()):
    return None
  if json.loads(status_path.read_text()).get("status") != "finished":
    return None
  cfg = json.loads(config_path.read_text())["config"]
  if cfg["data"].get("source") != "mqar":
    return None
  evals = [(r["step"], float(r["eval_accuracy"])) for r in read_metrics(d) if "eval_accuracy" in r]
  if not evals:
    return None
  _, values = mqar_vocab(cfg["data"]["mqar_vocab_size"])
  return RecallPoint(
    layers=cfg["model"]["num_layers"],
    pairs=cfg["data"]["mqar_num_pairs"],
    queries=cfg["data"]["mqar_num_queries"],
    values=len(values),
    kind=cfg["model"]["attention"],
    learning_rate=cfg["optimizer"]["learning_rate"],
    seed=cfg["train"]["seed"],
    final=evals[-1][1],
    learnt_at=next((step for step, acc in evals if acc >= threshold), None),
  )


def read_points(points_dir: str | Path, threshold: float = 0.95) -> list[RecallPoint]:
  """Every finished MQAR point under ``points_dir`` (a sweep workdir's ``points/``)."""
  points = [read_point(d, threshold) for d in sorted(Path(points_dir).iterdir()) if d.is_dir()]
  found = [p for p in points if p is not None]
  if not found:
    raise ValueError(f"{points_dir}: no finished MQAR point with an eval_accuracy")
  return found


def recall_table(points: list[RecallPoint], threshold: float = 0.95) -> str:
  """A markdown table: a row per (layers, pairs, seed), a column per (kind, learning rate); a
  cell is the final accuracy, with the step it first reached ``threshold`` in brackets when it
  did; the last column is the guessing level."""
  cols = sorted({p.setting for p in points})
  rows = sorted({p.task for p in points})
  cell = {(p.task, p.setting): p for p in points}
  head = " | ".join(f"{kind} {lr:g}" for kind, lr in cols)
  lines = [
    f"Final held-out accuracy (in brackets: the first eval step at or above {threshold:g}):",
    "",
    f"| layers | pairs | seed | {head} | guessing level |",
    "|---:|---:|---:|" + "---:|" * len(cols) + "---:|",
  ]
  for task in rows:
    layers, pairs, queries, values, seed = task
    cells = []
    for setting in cols:
      p = cell.get((task, setting))
      if p is None:
        cells.append("-")
      else:
        cells.append(f"{p.final:.4f}" + (f" ({p.learnt_at})" if p.learnt_at is not None else ""))
    guess = mqar_guess_accuracy(pairs, queries, values)
    lines.append(f"| {layers} | {pairs} | {seed} | " + " | ".join(cells) + f" | {guess:.3f} |")
  return "\n".join(lines) + "\n"


__all__ = ["RecallPoint", "read_point", "read_points", "recall_table"]
