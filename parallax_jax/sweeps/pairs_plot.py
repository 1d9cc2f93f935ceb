"""Seed-paired differences (``pairs.paired_differences``) as a dot plot, one row per arm.

Each seed's difference is a marker (the same marker for a seed in every row, so a seed that
moves every arm alike shows as a column), the mean over the seeds a vertical bar, and zero a
dashed line: a row whose markers all sit on one side of zero is a difference of one sign at
every seed run. Reads nothing; the caller gives the differences and the path.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from parallax_jax.errors import UserError

MARKERS = "osD^vP*X"  # seed i takes MARKERS[i % 8]


def select_arms(diffs: Mapping[str, Mapping[int, float]], arms: Sequence[str] | None):
  """``diffs`` restricted to ``arms`` in that order (all, sorted, for None); a ``UserError``
  naming the arms that have a pair when one of ``arms`` has none."""
  if arms is None:
    return {name: diffs[name] for name in sorted(diffs)}
  missing = [a for a in arms if a not in diffs]
  if missing:
    raise UserError(
      f"--arms {','.join(missing)}: no paired difference (not an arm, the base, or no run at a "
      f"seed the base has); arms with one: {', '.join(sorted(diffs))}"
    )
  return {a: diffs[a] for a in arms}


def paired_figure(diffs: Mapping[str, Mapping[int, float]], *, xlabel: str, title: str = ""):
  """The dot plot of ``diffs`` (``name -> {seed: difference}``), the first row on top."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(diffs)
  seeds = sorted({s for by_seed in diffs.values() for s in by_seed})
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
  ax.axvline(0.0, color="0.5", linestyle="--", linewidth=1)
  for i, seed in enumerate(seeds):
    rows = [(x, -r) for r, n in enumerate(names) if (x := diffs[n].get(seed)) is not None]
    if rows:  # (a seed that no selected arm has: no legend entry)
      xs, ys = zip(*rows, strict=True)
      ax.scatter(xs, ys, marker=MARKERS[i % len(MARKERS)], label=f"seed {seed}")
  for r, name in enumerate(names):
    ax.plot([statistics.mean(diffs[name].values())] * 2, [-r - 0.3, -r + 0.3], color="k")
  ax.set_yticks([-r for r in range(len(names))], names)
  ax.set(xlabel=xlabel, title=title)
  ax.legend(fontsize="small", loc="best")
  fig.tight_layout()
  return fig


def plot_paired(
  diffs: Mapping[str, Mapping[int, float]], out: str | Path, *, xlabel: str, title: str = ""
) -> Path:
  """``paired_figure(diffs)`` saved at ``out`` (its extension names the format)."""
  import matplotlib.pyplot as plt

  if not diffs:
    raise UserError("no paired difference to plot")
  fig = paired_figure(diffs, xlabel=xlabel, title=title)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out
