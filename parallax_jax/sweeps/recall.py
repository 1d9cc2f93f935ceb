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
from pathlib import Path

from parallax_jax.data.synthetic import mqar_guess_accuracy, mqar_vocab
from parallax_jax.errors import UserError
from parallax_jax.sweeps.point_files import read_status_file
from parallax_jax.train.metrics import read_metrics
from parallax_jax.train.run_record import read_record


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
  # damaged records: a UserError naming the file, not a traceback
  if (read_status_file(d) or {}).get("status") != "finished":
    return None
  cfg = read_record(d)["config"]
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
    raise UserError(f"{points_dir}: no finished MQAR point with an eval_accuracy")
  return found


def recall_table(points: list[RecallPoint], threshold: float = 0.95) -> str:
  """A markdown table: a row per (layers, pairs, seed), a column per (kind, learning rate); a
  cell is the final accuracy, with the step it first reached ``threshold`` in brackets when it
  did; the last column is the guessing level."""
  cols = sorted({p.setting for p in points})
  rows = sorted({p.task for p in points})
  cell = {(p.task, p.setting): p for p in points}
  keys = [(p.task, p.setting) for p in points]
  twice = next((k for k in keys if keys.count(k) > 1), None)
  if twice is not None:  # runs that differ in a key the table does not show: one cell
    (layers, pairs, _, _, seed), (kind, lr) = twice
    raise UserError(
      f"{keys.count(twice)} runs of layers {layers}, pairs {pairs}, seed {seed} at {kind} "
      f"{lr:g}: they differ in a key this table does not show; summarise them apart"
    )
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


def learnt_table(points: list[RecallPoint]) -> str:
  """A markdown table: a row per (layers, pairs), a column per kind; a cell counts the runs
  that learnt recall (reached the threshold ``read_points`` was given) among the kind's runs
  there, over every learning rate and seed."""
  kinds = sorted({p.kind for p in points})
  rows = sorted({(p.layers, p.pairs) for p in points})
  lines = [
    "Runs that learnt recall, of the runs (every learning rate and seed):",
    "",
    "| layers | pairs | " + " | ".join(kinds) + " |",
    "|---:|---:|" + "---:|" * len(kinds),
  ]
  for layers, pairs in rows:
    cells = []
    for kind in kinds:
      runs = [p for p in points if (p.layers, p.pairs, p.kind) == (layers, pairs, kind)]
      learnt = sum(p.learnt_at is not None for p in runs)
      cells.append(f"{learnt} of {len(runs)}" if runs else "-")
    lines.append(f"| {layers} | {pairs} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def recall_figure(points: list[RecallPoint]):
  """A matplotlib ``Figure``: final accuracy against the pair count (log axis), one panel per
  layer count; a colour per kind, a marker per learning rate, each run one point (runs of one
  setting side by side), and each pair count's guessing level as a short grey bar."""
  import matplotlib
  from matplotlib.figure import Figure

  layer_counts = sorted({p.layers for p in points})
  kinds = sorted({p.kind for p in points})
  rates = sorted({p.learning_rate for p in points})
  colors = dict(zip(kinds, matplotlib.colormaps["tab10"].colors, strict=False))
  markers = dict(zip(rates, "os^Dvp", strict=False))
  fig = Figure(figsize=(4.5 * len(layer_counts) + 2, 4.2), layout="constrained")
  axes = fig.subplots(1, len(layer_counts), squeeze=False)[0]
  settings = [(k, lr) for k in kinds for lr in rates]
  for ax, layers in zip(axes, layer_counts, strict=True):
    mine = [p for p in points if p.layers == layers]
    for pairs in sorted({p.pairs for p in mine}):
      first = next(p for p in mine if p.pairs == pairs)  # the task is the same for all
      guess = mqar_guess_accuracy(first.pairs, first.queries, first.values)
      ax.plot([pairs / 1.25, pairs * 1.25], [guess, guess], color="0.6", lw=2)
    for i, (kind, lr) in enumerate(settings):
      runs = sorted((p for p in mine if p.setting == (kind, lr)), key=lambda p: (p.pairs, p.seed))
      if not runs:
        continue
      # a setting's runs side by side around their pair count (log axis: multiplicative)
      shift = 1.06 ** (i - (len(settings) - 1) / 2)
      xs = [p.pairs * shift * 1.02**p.seed for p in runs]
      ax.plot(
        xs,
        [p.final for p in runs],
        linestyle="none",
        marker=markers.get(lr, "x"),
        color=colors[kind],
        label=f"{kind} {lr:g}",
      )
    ax.set_xscale("log")
    pair_counts = sorted({p.pairs for p in mine})
    ax.set_xticks(pair_counts, [str(n) for n in pair_counts])
    ax.minorticks_off()
    ax.set(xlabel="key-value pairs", ylabel="final held-out accuracy", ylim=(0, 1.05))
    ax.set_title(f"{layers} layers (grey: guessing level)")
    ax.grid(alpha=0.3)
  legend = {}  # one entry per setting, from whichever panel has it
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
      legend.setdefault(label, handle)
  fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize="small")
  return fig


__all__ = [
  "RecallPoint",
  "learnt_table",
  "read_point",
  "read_points",
  "recall_figure",
  "recall_table",
]
