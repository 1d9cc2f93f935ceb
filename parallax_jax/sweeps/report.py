"""Sweep results: ``results.csv``, ``results.md``, ``loss_curves.png``, ``metric_vs_<axis>.png``.

One row per point: its axis values, status, final step, final train loss, eval loss,
perplexity and accuracy (argmax accuracy on loss_mask positions: the answer accuracy of a
synthetic task), eval MSE (regression tasks; their sweeps also get the baselines' MSE), median
tokens/s, wall time and error. Rows come from each point's ``status.json`` and
``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

from parallax_jax.data.regression import REGRESSION_TASKS
from parallax_jax.sweeps.config import Point, Sweep
from parallax_jax.train.metrics import read_metrics

METRIC_COLUMNS = (
  "train_loss",
  "eval_loss",
  "eval_perplexity",
  "eval_accuracy",
  "eval_mse",
  "tokens_per_s",
)
# Columns added when a point runs a regression task: the reference predictors' eval MSE.
BASELINE_COLUMNS = ("eval_mse_baseline_zero", "eval_mse_baseline_ols", "eval_mse_baseline_bayes")
# Larger is better for these; smaller for the rest.
HIGHER_IS_BETTER = ("eval_accuracy", "tokens_per_s")


def _last(records: list[dict], key: str):
  for r in reversed(records):
    if r.get(key) is not None:
      return r[key]
  return None


def point_row(sweep: Sweep, point: Point, workdir: Path) -> dict:
  directory = Path(workdir) / "points" / point.name
  status_path = directory / "status.json"
  status = json.loads(status_path.read_text()) if status_path.exists() else {}
  records = read_metrics(directory, missing_ok=True)
  speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
  row = {"name": point.name, **{k: point.values.get(k) for k in sweep.axes}}
  row.update(
    status=status.get("status", "pending"),
    final_step=_last(records, "step"),
    train_loss=_last(records, "loss"),
    eval_loss=_last(records, "eval_loss"),
    eval_perplexity=_last(records, "eval_perplexity"),
    eval_accuracy=_last(records, "eval_accuracy"),
    eval_mse=_last(records, "eval_mse"),
    tokens_per_s=statistics.median(speeds) if speeds else None,
  )
  if _sources(sweep) & set(REGRESSION_TASKS):
    row.update({k: _last(records, k) for k in BASELINE_COLUMNS})
  row.update(wall_s=status.get("wall_s"), error=status.get("error"))
  return row


def _sources(sweep: Sweep) -> set[str]:
  return {p.config.data.source for p in sweep.points}


def metric_name(sweep: Sweep, rows: list[dict]) -> str:
  """The sweep's ``metric``, else eval MSE (regression tasks) / task accuracy (MQAR) / eval
  perplexity, whichever applies and is present, else train loss."""
  if sweep.metric:
    return sweep.metric
  from parallax_jax.data.synthetic import TASKS  # imports grain: only when needed

  sources = _sources(sweep)
  if sources & set(REGRESSION_TASKS):
    name = "eval_mse"
  elif sources & set(TASKS):
    name = "eval_accuracy"
  else:
    name = "eval_perplexity"
  return name if any(r.get(name) is not None for r in rows) else "train_loss"


def _fmt(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


def write_tables(sweep: Sweep, workdir: Path) -> list[dict]:
  workdir = Path(workdir)
  rows = [point_row(sweep, p, workdir) for p in sweep.points]
  columns = list(rows[0]) if rows else ["name"]
  with (workdir / "results.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
  metric = metric_name(sweep, rows)
  lines = [
    "# Sweep results",
    "",
    f"- base: `{sweep.base_path}`",
    f"- mode: {sweep.mode}"
    + (f" (seed {sweep.seed}, count {sweep.count})" if sweep.mode == "random" else ""),
    f"- axes: {', '.join(f'`{k}` {v}' for k, v in sweep.axes.items()) or 'none'}",
    f"- fixed overrides: {', '.join(f'`{k}={v}`' for k, v in sweep.overrides.items()) or 'none'}",
    f"- metric: `{metric}`"
    + (" (higher is better)" if metric in HIGHER_IS_BETTER else " (lower is better)"),
    f"- points: {len(rows)}, finished {sum(r['status'] == 'finished' for r in rows)}, "
    f"failed {sum(r['status'] == 'failed' for r in rows)}",
    "",
    "| " + " | ".join(columns) + " |",
    "|" + "---|" * len(columns),
  ]
  for r in rows:
    cells = [_fmt(r[c]).replace("|", "\\|").replace("\n", " ") for c in columns]
    lines.append("| " + " | ".join(cells) + " |")
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  return rows


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def write_plots(sweep: Sweep, workdir: Path, rows: list[dict]) -> list[Path]:
  """loss_curves.png (train loss, and the metric at each eval, per point) and
  metric_vs_<axis>.png (axis dots become underscores)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workdir = Path(workdir)
  out = []
  metric = metric_name(sweep, rows)
  # Left: train loss at every logged step; right: the sweep's metric at every eval.
  fig, (ax, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
  for p in sweep.points:
    recs = read_metrics(workdir / "points" / p.name, missing_ok=True)
    for axis_, key, style in ((ax, "loss", {}), (ax_eval, metric, {"marker": "o"})):
      pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
      if pts:
        axis_.plot(*zip(*pts, strict=True), label=p.name, **style)
  ax.set(xlabel="step", ylabel="train loss", title="Training loss per sweep point")
  ax_eval.set(xlabel="step", ylabel=metric, title=f"{metric} at each eval")
  if metric == "eval_perplexity":
    ax_eval.set_yscale("log")
  for a in (ax, ax_eval):
    if a.lines:
      a.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(workdir / "loss_curves.png", dpi=120)
  plt.close(fig)
  out.append(workdir / "loss_curves.png")

  for axis in sweep.axes:
    others = [a for a in sweep.axes if a != axis]
    values = sweep.axes[axis]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    position = {repr(v): (v if numeric else i) for i, v in enumerate(values)}
    groups: dict[str, list[tuple]] = {}
    for r in rows:
      if r.get(metric) is None:
        continue
      label = ", ".join(f"{o.rsplit('.', 1)[-1]}={r[o]}" for o in others) or metric
      groups.setdefault(label, []).append((position[repr(r[axis])], r[metric]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in groups.items():
      pts.sort()
      ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
    if not numeric:
      ax.set_xticks(range(len(values)), [str(v) for v in values])
    elif min(values) > 0 and max(values) / min(values) >= 10:
      ax.set_xscale("log")
    ax.set(xlabel=axis, ylabel=metric, title=f"{metric} vs {axis}")
    if len(groups) > 1:
      ax.legend(fontsize="small")
    fig.tight_layout()
    path = workdir / f"metric_vs_{_safe(axis)}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    out.append(path)
  return out


def write_all(sweep: Sweep, workdir: Path) -> list[dict]:
  rows = write_tables(sweep, workdir)
  write_plots(sweep, workdir, rows)
  return rows
