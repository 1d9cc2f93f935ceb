"""Loss and eval curves of one or more runs (their ``metrics.jsonl``), overlaid in one PNG.

Reads the runs only; the caller picks where the PNG goes (``parallax-jax plot --out``, or the
run's own ``plots/curves.png`` at the end of training).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from parallax_jax.train.metrics import read_metrics

# The held-out curve of a run: the first of these its records have.
EVAL_KEYS = ("eval_loss", "eval_mse")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
  return [s for s, _ in pts], [v for _, v in pts]


def run_labels(workdirs: list[Path]) -> dict[str, Path]:
  """Each run's folder name; the full path where two names are the same."""
  names = [w.name or str(w) for w in workdirs]
  return {(n if names.count(n) == 1 else str(w)): w for n, w in zip(names, workdirs, strict=True)}


def curves_figure(runs: Mapping[str, str | Path]):
  """A matplotlib figure: train loss (left) and the held-out curve (right) of each
  ``label: workdir``. Raises ``FileNotFoundError`` for a workdir without ``metrics.jsonl``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = {label: read_metrics(w) for label, w in runs.items()}
  fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  eval_names = set()
  for label, recs in records.items():
    (line,) = train_ax.plot(*_series(recs, "loss"), label=label)
    key = next((k for k in EVAL_KEYS if any(r.get(k) is not None for r in recs)), None)
    if key is not None:
      eval_ax.plot(*_series(recs, key), marker="o", color=line.get_color(), label=label)
      eval_names.add(key)
  train_ax.set(xlabel="step", ylabel="train loss", title="Training loss")
  eval_ax.set(
    xlabel="step",
    ylabel=" / ".join(sorted(eval_names)) or "eval",
    title="Held-out" if eval_names else "Held-out (no eval records)",
  )
  for ax in (train_ax, eval_ax):
    if ax.lines:
      ax.legend(fontsize="small")
  fig.tight_layout()
  return fig


def check_image_path(out: str | Path, flag: str = "--out", *, overwrite: bool = False) -> Path:
  """``out`` as a path matplotlib writes as named: a ``UserError`` for a directory or an
  extension it has no format for (none: it would write ``out.png`` instead of ``out``), and for
  an existing file unless ``overwrite`` (a figure kept as a result is not replaced unasked)."""
  from matplotlib.backend_bases import FigureCanvasBase

  from parallax_jax.errors import UserError

  out = Path(out)
  if out.is_dir():
    raise UserError(
      f"{flag} {str(out)!r} is a directory; give a file, e.g. {str(out / 'plot.png')!r}"
    )
  if out.exists() and not overwrite:
    raise UserError(f"{flag} {str(out)!r} exists; give a new name, or --overwrite to replace it")
  formats = sorted(FigureCanvasBase.get_supported_filetypes())
  ext = out.suffix[1:].lower()
  if ext not in formats:
    what = f"extension .{ext} is not an image format" if ext else "no extension"
    example = f"{out.parent / out.stem}.png" if ext else f"{out}.png"
    raise UserError(
      f"{flag} {str(out)!r}: {what}; the format comes from the extension: give one of "
      f"{', '.join(formats)} (e.g. {example!r})"
    )
  return out


def plot_runs(runs: Mapping[str, str | Path], out: str | Path) -> Path:
  """``curves_figure(runs)`` saved as a PNG at ``out``."""
  import matplotlib.pyplot as plt

  fig = curves_figure(runs)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


__all__ = ["curves_figure", "plot_runs", "run_labels"]
