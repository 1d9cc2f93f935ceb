"""Sweep results: ``results.csv``, ``results.md``, ``loss_curves.png``, ``metric_vs_<axis>.png``.

One row per point: its axis values, status, final step, final train loss, eval loss,
perplexity and accuracy (argmax accuracy on loss_mask positions: the answer accuracy of a
synthetic task), eval MSE (regression tasks; their sweeps also get the baselines' MSE), median
tokens/s, the hardware it ran on (every start's, when a resume moved it), wall time and error.
Rows come from each point's ``status.json``, ``metrics.jsonl`` and run record.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

from parallax_jax import environment
from parallax_jax.data.config import REGRESSION_TASKS, TASKS
from parallax_jax.data.sources import pin_mismatch
from parallax_jax.errors import UserError
from parallax_jax.sweeps.config import BASELINE_COLUMNS, REPO_ROOT, Point, Sweep
from parallax_jax.sweeps.pairs import VARIANT
from parallax_jax.sweeps.point_files import point_records, read_status_file
from parallax_jax.train import run_record

# Larger is better for these; smaller for the rest.
HIGHER_IS_BETTER = ("eval_accuracy", "tokens_per_s")


def _last(records: list[dict], key: str):
  """``key``'s value in the last record that logged it: None where that value was not finite
  (``MetricsWriter`` writes it as null), never an earlier record's value."""
  for r in reversed(records):
    if key in r:
      return r[key]
  return None


def config_changed(status: dict | None, point: Point) -> str | None:
  """Why the run a point's ``status.json`` records is not this point's (it was trained with
  another config), or None. Derived where it is read, never written into the point: the
  record stays as the run left it, so restoring the config finds it finished again."""
  old = (status or {}).get("fingerprint")
  if old is None or old == point.fingerprint():
    return None
  return (
    f"points/{point.name} was trained with a different config (fingerprint {old} != "
    f"{point.fingerprint()}); delete that folder to rerun it"
  )


def corpus_mismatch(directory: Path, point: Point) -> str | None:
  """Why the run in ``directory`` (a point's folder) read another corpus than the one the
  sweep pins now (``data.source_sha256``, not in the fingerprint; its ``config.json`` records
  what the run read), or None; a sweep that pins none checks nothing."""
  pin = point.config.data.get("source_sha256", "")
  if not pin:
    return None
  try:
    described = json.loads((directory / "config.json").read_text()).get("data", {}).get("source")
  except (OSError, ValueError, AttributeError):
    return "config.json is not a readable run record: the corpus it read is not known"
  why = pin_mismatch(pin, described if isinstance(described, dict) else {})
  return None if why is None else f"read another corpus: {why}"


def stale_reason(status: dict | None, point: Point, directory: Path) -> str | None:
  """Why the run a point's folder holds is not a result of the point as configured now, or
  None: trained with another config, or finished on a corpus other than the pinned one.
  Derived where it is read, never written into the point (restoring the config finds it
  finished again)."""
  changed = config_changed(status, point)
  if changed is None and (status or {}).get("status") == "finished":
    changed = corpus_mismatch(Path(directory), point)
  return changed


def point_row(sweep: Sweep, point: Point, workdir: Path) -> dict:
  directory = Path(workdir) / "points" / point.name
  try:
    status, changed = read_status_file(directory) or {}, None
  except UserError as e:  # a damaged record: its row says so, the others are written
    status, changed = {}, str(e)
  changed = changed or stale_reason(status, point, directory)  # not this sweep's config's result
  records, damaged = point_records(directory)
  speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
  row = {"name": point.name, **{k: point.values.get(k) for k in sweep.axes}}
  row.update(
    status="failed" if changed else status.get("status", "pending"),
    final_step=_last(records, "step"),
    train_loss=_last(records, "loss"),
    eval_loss=_last(records, "eval_loss"),
    eval_perplexity=_last(records, "eval_perplexity"),
    eval_accuracy=_last(records, "eval_accuracy"),
    eval_mse=_last(records, "eval_mse"),
    tokens_per_s=statistics.median(speeds) if speeds else None,
    hardware=_hardware(directory),
  )
  if _sources(sweep) & set(REGRESSION_TASKS):
    row.update({k: _last(records, k) for k in BASELINE_COLUMNS})
  row.update(wall_s=status.get("wall_s"), error=damaged or changed or status.get("error"))
  return row


def _hardware(directory: Path) -> str | None:
  """Each start's hardware, in order, without repeats ("1x NVIDIA H200"); None where no start
  recorded it."""
  seen = [environment.hardware(e) for e in run_record.environments(directory)]
  shown = list(dict.fromkeys(h for h in seen if h))
  return "; ".join(shown) or None


def _sources(sweep: Sweep) -> set[str]:
  return {p.config.data.source for p in sweep.points}


def metric_name(sweep: Sweep, rows: list[dict]) -> str:
  """The sweep's ``metric``, else eval MSE (regression tasks) / task accuracy (MQAR) / eval
  perplexity, whichever applies and is present, else train loss."""
  if sweep.metric:
    return sweep.metric

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


def _shown_path(path: Path) -> Path:
  """``path`` relative to the repository or else the working directory when it lies under one
  (a committed report must not name the machine it was written on), else as given."""
  for root in (REPO_ROOT, Path.cwd()):
    try:
      return Path(path).resolve().relative_to(root.resolve())
    except ValueError:
      continue
  return Path(path)


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
    f"- base: `{_shown_path(sweep.base_path)}`",
    f"- mode: {sweep.mode}"
    + (f" (seed {sweep.seed}, count {sweep.count})" if sweep.mode == "random" else ""),
    f"- axes: {', '.join(f'`{k}` {v}' for k, v in sweep.axes.items()) or 'none'}",
    f"- fixed overrides: {', '.join(f'`{k}={v}`' for k, v in sweep.overrides.items()) or 'none'}",
    f"- metric: `{metric}`"
    + (" (higher is better)" if metric in HIGHER_IS_BETTER else " (lower is better)"),
    f"- points: {len(rows)}, finished {sum(r['status'] == 'finished' for r in rows)}, "
    f"failed {sum(r['status'] == 'failed' for r in rows)}, "
    f"preempted {sum(r['status'] == 'preempted' for r in rows)}",
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


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _linestyle(k: int):
  """The k-th line style: the four named ones, then ever longer dashes."""
  return _LINESTYLES[k] if k < len(_LINESTYLES) else (0, (k, 2))


def split_seed(name: str) -> tuple[str, str]:
  """(the point name without its seed, the seed): an axis ending in ``seed``
  (``seed=1``) or a value ending in ``_s<digits>`` (``variant=muon+parallax_s1``);
  (name, "") when neither is there."""
  kept, seeds = [], []
  for part in name.split(","):
    key, sep, _ = part.partition("=")
    match = VARIANT.fullmatch(part)  # the seed suffix of pairs.py's variant names
    if sep and key.rsplit(".", 1)[-1].endswith("seed"):
      seeds.append(part)
    elif match:
      kept.append(part[: match.end("arm")])
      seeds.append(f"s{match['seed']}")
    else:
      kept.append(part)
  return ",".join(kept), ",".join(seeds)


def curve_styles(names: list[str]) -> dict[str, tuple[tuple, int]]:
  """{name: (colour, k)}, no two names alike; k picks a line style (``_linestyle``) or a
  marker. Names that differ only in their seed (``split_seed``) share a colour and each seed
  has its own k, with tab10's colours up to 10 such groups and tab20's up to 20. Otherwise
  (more groups, more seeds than line styles): tab20's colours in turn, k the round."""
  import matplotlib

  names = list(dict.fromkeys(names))
  parts = [split_seed(n) for n in names]
  groups = list(dict.fromkeys(g for g, _ in parts))
  seeds = sorted({s for _, s in parts}, key=lambda s: (len(s), s))
  if len(groups) <= 20 and len(seeds) <= len(_LINESTYLES) and len(set(parts)) == len(parts):
    colors = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    return {
      n: (colors[groups.index(g)], seeds.index(s)) for n, (g, s) in zip(names, parts, strict=True)
    }
  colors = matplotlib.colormaps["tab20"].colors
  return {n: (colors[i % len(colors)], i // len(colors)) for i, n in enumerate(names)}


def _legend(fig, handles: list, title: str | None = None) -> None:
  """One legend for the figure, right of its axes, smaller and in columns when long."""
  fig.legend(
    handles=handles,
    loc="outside right upper",
    title=title,
    fontsize="small" if len(handles) <= 12 else "x-small",
    ncols=math.ceil(len(handles) / 30),
  )


def loss_curves_figure(sweep: Sweep, workdir: Path, metric: str):
  """Train loss at every logged step (left) and ``metric`` at every eval (right), a curve per
  point; the points' seeds (``split_seed``) by line style, the rest by colour."""
  from matplotlib.figure import Figure

  curves = {}  # point name -> {"loss": [(step, value)], metric: [...]}, points with any
  for p in sweep.points:
    recs, _ = point_records(Path(workdir) / "points" / p.name)  # a damaged one: its row says so
    pts = {k: [(r["step"], r[k]) for r in recs if r.get(k) is not None] for k in ("loss", metric)}
    if any(pts.values()):
      curves[p.name] = pts
  styles = curve_styles(list(curves))  # the points drawn only: as few colours as can be
  # One axis: its name once, as the legend's title, not in every label.
  (axis, *more) = list(sweep.axes) or [""]
  prefix = f"{axis.rsplit('.', 1)[-1]}=" if axis and not more else ""
  fig = Figure(figsize=(14, 5), layout="constrained")
  ax, ax_eval = fig.subplots(1, 2)
  handles = {}
  for name, pts in curves.items():
    color, k = styles[name]
    label = name.removeprefix(prefix)
    for axis_, key, marker in ((ax, "loss", None), (ax_eval, metric, "o")):
      if pts[key]:
        (line,) = axis_.plot(
          *zip(*pts[key], strict=True),
          label=label,
          color=color,
          linestyle=_linestyle(k),
          marker=marker,
        )
        handles.setdefault(label, line)
  ax.set(xlabel="step", ylabel="train loss", title="Training loss per sweep point")
  ax_eval.set(xlabel="step", ylabel=metric, title=f"{metric} at each eval")
  if metric == "eval_perplexity":
    ax_eval.set_yscale("log")
  if handles:  # in groups: a colour's seeds together
    groups = list(dict.fromkeys(split_seed(n)[0] for n in curves))
    order = sorted(curves, key=lambda n: (groups.index(split_seed(n)[0]), styles[n][1]))
    _legend(fig, [handles[n.removeprefix(prefix)] for n in order], prefix.rstrip("=") or None)
  return fig


def metric_figure(sweep: Sweep, rows: list[dict], metric: str, axis: str):
  """``metric`` against one axis, a series per combination of the other axes' values.
  A numeric axis is the x axis (log when it spans 10x); the values of any other (names: a
  variant) go down the y axis, those without a result left out, so that long names stay
  readable. The metric's axis is log when its values span 10x, so that one diverged point does
  not flatten the rest into a line."""
  from matplotlib.figure import Figure

  others = [a for a in sweep.axes if a != axis]
  values = sweep.axes[axis]
  numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
  groups: dict[str, list[tuple]] = {}
  for r in rows:
    if r.get(metric) is not None:
      label = ", ".join(f"{o.rsplit('.', 1)[-1]}={r[o]}" for o in others) or metric
      groups.setdefault(label, []).append((r[axis], r[metric]))
  styles = curve_styles(list(groups))
  if numeric:
    fig = Figure(figsize=(7 + 3 * (len(groups) > 1), 4.5), layout="constrained")
    ax = fig.subplots()
    for label, pts in groups.items():
      pts.sort()
      color, k = styles[label]
      ax.plot(*zip(*pts, strict=True), marker="o", label=label, color=color, ls=_linestyle(k))
    if min(values) > 0 and max(values) / min(values) >= 10:
      ax.set_xscale("log")
    ax.set(xlabel=axis, ylabel=metric)
  else:
    measured = {repr(x) for pts in groups.values() for x, _ in pts}
    shown = [v for v in values if repr(v) in measured] or list(values)
    position = {repr(v): i for i, v in enumerate(shown)}
    fig = Figure(
      figsize=(7 + 3 * (len(groups) > 1), max(3, 1.5 + 0.3 * len(shown))), layout="constrained"
    )
    ax = fig.subplots()
    step = min(0.15, 0.6 / max(len(groups), 1))  # the series side by side at each name
    for i, (label, pts) in enumerate(groups.items()):
      color, k = styles[label]
      offset = (i - (len(groups) - 1) / 2) * step
      ax.plot(
        [y for _, y in pts],
        [position[repr(x)] + offset for x, _ in pts],
        linestyle="none",
        marker=_MARKERS[k % len(_MARKERS)],
        color=color,
        label=label,
      )
    ax.set_yticks(range(len(shown)), [str(v) for v in shown])
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the sweep's first value on top
    ax.grid(axis="both", alpha=0.3)
    ax.set(xlabel=metric, ylabel=axis)
  measured_values = [y for pts in groups.values() for _, y in pts]
  if (
    measured_values
    and min(measured_values) > 0
    and max(measured_values) >= 10 * min(measured_values)
  ):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if numeric else ax.set_xscale)("log")
    metric_axis = ax.yaxis if numeric else ax.xaxis
    # Plain numbers at 1, 2, 5 x 10^k: the default labels every minor tick in a short range.
    metric_axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    metric_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    metric_axis.set_minor_formatter(NullFormatter())
  ax.set_title(f"{metric} vs {axis}")
  if len(groups) > 1:
    _legend(fig, ax.get_lines())
  return fig


def write_plots(sweep: Sweep, workdir: Path, rows: list[dict]) -> list[Path]:
  """loss_curves.png (``loss_curves_figure``) and metric_vs_<axis>.png (``metric_figure``;
  axis dots become underscores)."""
  workdir = Path(workdir)
  metric = metric_name(sweep, rows)
  figures = {"loss_curves.png": loss_curves_figure(sweep, workdir, metric)}
  for axis in sweep.axes:
    figures[f"metric_vs_{_safe(axis)}.png"] = metric_figure(sweep, rows, metric, axis)
  for name, fig in figures.items():
    fig.savefig(workdir / name, dpi=120)
  return [workdir / name for name in figures]


def write_all(sweep: Sweep, workdir: Path) -> list[dict]:
  rows = write_tables(sweep, workdir)
  write_plots(sweep, workdir, rows)
  return rows
