"""Seed-paired comparisons of a sweep's arms, from its ``results.csv``.

For sweeps whose variants are named ``<group>+<arm>_s<seed>`` (e.g. ``muon+parallax_r0_s1``,
``configs/sweeps/gpu_study_lm.py``): runs of one seed share their data order and
initialisation, so an arm is compared with the base arm of the same group *at the same seed*
(a paired difference), which removes the part of the seed spread that moves every arm alike.
Unfinished points and non-finite values are left out; a difference needs both runs of its
pair. With two or more pairs the difference table also gives the paired t statistic and its
two-sided p value (Student's t with n - 1 degrees of freedom: a paired t-test of "no
difference"; with three seeds it can only flag a difference much larger than the pairs'
scatter).

``paired_curves`` makes the same comparison at every step both runs of a pair logged the value
(the evals), from the points' own ``metrics.jsonl``: where a difference opens and closes.

``paired_differences`` gives the same differences as numbers (``sweeps/pairs_plot.py`` draws
them).

CLI: ``python -m experiments.seed_pairs W/results.csv --value eval_loss --base softmax
[--curves] [--plot P.png --arms A,B]``.
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.pivot import check_format, finite, mean_spread
from parallax_jax.sweeps.point_files import point_records, read_status_file

VARIANT = re.compile(r"^(?:(?P<group>.+)\+)?(?P<arm>.+)_s(?P<seed>\d+)$")


def _finished_key(variant: str, status: str | None) -> tuple[str, str, int] | None:
  """``(group, arm, seed)`` of a finished point named ``<group>+<arm>_s<seed>``; else None."""
  m = VARIANT.match(variant)
  if status != "finished" or m is None:
    return None
  return m["group"] or "", m["arm"], int(m["seed"])


def _runs(csv_path: str | Path, value: str) -> dict[tuple[str, str, int], float]:
  """``(group, arm, seed) -> value`` of the finished points with a parseable variant name."""
  with open(csv_path, newline="") as f:
    records = list(csv.DictReader(f))
  if records and value not in records[0]:
    raise UserError(f"{csv_path} has no column {value!r}; columns: {list(records[0])}")
  out, seen = {}, set()
  for r in records:
    key = _finished_key(r.get("variant", ""), r.get("status"))
    if key is None:
      continue
    if key in seen:
      raise UserError(_twice(csv_path, r["variant"]))
    seen.add(key)
    if (x := finite(r[value], f"{csv_path}: column {value!r}")) is not None:
      out[key] = x
  if not out:
    raise UserError(f"{csv_path}: no finished point named <group>+<arm>_s<seed>")
  return out


def _twice(where, variant: str) -> str:
  return (
    f"{where}: variant {variant!r} is finished more than once (the sweep has another axis); "
    "a pair needs one point per arm and seed"
  )


def _check_base(csv_path, arms: list[tuple[str, str]], base: str) -> None:
  if base not in {a for _, a in arms}:
    names = ", ".join(sorted({a for _, a in arms}))
    raise UserError(f"--base {base!r} is no arm of {csv_path}; its arms: {names}")


def _name(group: str, arm: str) -> str:
  return f"{group}+{arm}" if group else arm


def paired_differences(
  csv_path: str | Path, value: str = "eval_loss", base: str = "softmax"
) -> dict[str, dict[int, float]]:
  """``'<group>+<arm>' -> {seed: value minus the group's base arm at that seed}``, for each arm
  but the base with at least one pair (the numbers of ``paired_tables``' second table)."""
  runs = _runs(csv_path, value)
  _check_base(csv_path, sorted({(g, a) for g, a, _ in runs}), base)
  return _differences(runs, base)


def _differences(runs: dict[tuple[str, str, int], float], base: str) -> dict[str, dict[int, float]]:
  out: dict[str, dict[int, float]] = {}
  for (g, a, seed), x in sorted(runs.items()):
    if a != base and (g, base, seed) in runs:
      out.setdefault(_name(g, a), {})[seed] = x - runs[(g, base, seed)]
  return out


def paired_tables(
  csv_path: str | Path, value: str = "eval_loss", base: str = "softmax", fmt: str = "{:.3f}"
) -> str:
  """Two markdown tables: ``value`` per arm and seed (with the mean ± half the range), and
  each arm minus its group's ``base`` arm at the same seed (with the mean ± half the range)."""
  check_format(fmt)
  runs = _runs(csv_path, value)
  seeds = sorted({s for _, _, s in runs})
  arms = sorted({(g, a) for g, a, _ in runs})
  _check_base(csv_path, arms, base)
  head = "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
  rule = "|---|" + "---:|" * (len(seeds) + 1)

  def row(group, arm, xs):
    cells = ["-" if x is None else fmt.format(x) for x in xs]
    got = [x for x in xs if x is not None]
    return f"| {_name(group, arm)} | " + " | ".join(cells) + f" | {mean_spread(got, fmt)} |"

  lines = [f"{value} per seed:", "", head, rule]
  lines += [row(g, a, [runs.get((g, a, s)) for s in seeds]) for g, a in arms]
  lines += ["", f"{value} minus the same group's {base!r} at the same seed:", ""]
  lines += [head + " paired t, p |", rule + "---:|"]
  differences = _differences(runs, base)
  for g, a in arms:
    if (by_seed := differences.get(_name(g, a))) is not None:
      diffs = [by_seed.get(s) for s in seeds]
      lines.append(row(g, a, diffs) + f" {paired_t(list(by_seed.values()))} |")
  return "\n".join(lines) + "\n"


def _curves(points_dir: str | Path, value: str) -> dict[tuple[str, str, int], dict[int, float]]:
  """``(group, arm, seed) -> {step: value}`` of the finished points under ``points_dir`` (a
  sweep workdir's ``points/``) whose variant is named ``<group>+<arm>_s<seed>``."""
  out, seen = {}, set()
  for d in sorted(Path(points_dir).iterdir()):
    status = read_status_file(d)  # a damaged one: a UserError naming it
    if status is None:
      continue
    key = _finished_key(str(status.get("values", {}).get("variant", "")), status.get("status"))
    if key is None:
      continue
    if key in seen:
      raise UserError(_twice(points_dir, status["values"]["variant"]))
    seen.add(key)
    column = f"{d / 'metrics.jsonl'}: {value!r}"
    records, damaged = point_records(d)
    if damaged is not None or not (d / "metrics.jsonl").is_file():
      raise UserError(damaged or f"{d / 'metrics.jsonl'} does not exist")
    steps = {r["step"]: x for r in records if (x := finite(r.get(value), column)) is not None}
    if steps:
      out[key] = steps
  if not out:
    raise UserError(f"{points_dir}: no finished point named <group>+<arm>_s<seed> logs {value!r}")
  return out


def paired_curves(
  points_dir: str | Path, value: str = "eval_loss", base: str = "softmax", fmt: str = "{:.3f}"
) -> str:
  """A markdown table: each arm minus its group's ``base`` arm at the same seed, at every step
  at which both runs of a pair logged ``value``; a cell is the mean ± half the range over the
  seeds that have the pair."""
  check_format(fmt)
  curves = _curves(points_dir, value)
  diffs: dict[str, dict[int, list[float]]] = {}  # arm -> step -> one difference per seed
  for (g, a, seed), steps in sorted(curves.items()):
    other = curves.get((g, base, seed))
    if a == base or other is None:
      continue
    for step in sorted(steps.keys() & other.keys()):
      diffs.setdefault(_name(g, a), {}).setdefault(step, []).append(steps[step] - other[step])
  rows = sorted(diffs.items())
  if not rows:
    return f"no arm has a {base!r} pair with {value!r} at a common step\n"
  steps = sorted({s for _, by_step in rows for s in by_step})
  lines = [
    f"{value} minus the same group's {base!r} at the same seed, at each step:",
    "",
    "| arm | " + " | ".join(f"step {s}" for s in steps) + " |",
    "|---|" + "---:|" * len(steps),
  ]
  for name, by_step in rows:
    cells = [mean_spread(by_step.get(s, []), fmt) for s in steps]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def paired_t(diffs: list[float]) -> str:
  """``t = ..., p = ...`` of a paired t-test on the differences (``-`` with fewer than two, or
  when they are all equal)."""
  if len(diffs) < 2:
    return "-"
  from scipy import stats  # jax's own dependency; only this test needs it

  mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
  if sd <= 1e-12 * max(abs(mean), max(map(abs, diffs))):  # equal up to rounding: no spread
    return "-"
  t, p = stats.ttest_1samp(diffs, 0.0)
  return f"t = {t:.2f}, p = {p:.2f}"
