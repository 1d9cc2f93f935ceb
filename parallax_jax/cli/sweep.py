"""``sweep``: train every point of a sweep config, or ``--collect`` finished points into it."""

from __future__ import annotations

import sys

from parallax_jax.cli.common import local_dir, local_path
from parallax_jax.errors import UserError


def _sweep(args) -> int:
  from parallax_jax.sweeps.config import load_sweep, select_points
  from parallax_jax.sweeps.runner import SweepStopped, run_sweep
  from parallax_jax.train.preemption import EXIT_PREEMPTED
  from parallax_jax.train.run_record import check_holds_no_other_kind

  if args.parallel is not None and args.parallel < 1:  # checked before the sweep loads
    raise UserError(f"--parallel must be >= 1, got {args.parallel}")
  if args.collect and args.dry_run:  # collecting writes: a dry run must not
    raise UserError("--dry-run does not apply to --collect (which copies points); drop one")
  if args.collect and args.parallel is not None:  # it would be ignored: collecting trains nothing
    raise UserError("--parallel does not apply to --collect (which trains nothing); drop one")
  check_holds_no_other_kind(args.workdir, "sweep")
  if args.collect:
    return _sweep_collect(args)
  sweep = load_sweep(args.config, args.workdir)
  # --points: only these train; the workdir's tables stay the whole sweep's (a shared workdir)
  chosen = select_points(sweep, args.points).points
  if args.dry_run:
    return _dry_run(chosen, args.workdir)
  only = {p.name for p in chosen}
  try:
    rows = run_sweep(sweep, args.workdir, parallel=args.parallel or 1, only=only)
  except SweepStopped as e:
    print(f"parallax-jax: {e} (report: {args.workdir}/results.md)", file=sys.stderr)
    return EXIT_PREEMPTED
  print(f"wrote {args.workdir}/results.md:")
  print(open(f"{args.workdir}/results.md").read())
  return 0 if all(r["status"] == "finished" for r in rows if r["name"] in only) else 1


def _dry_run(chosen, workdir) -> int:
  """``sweep --dry-run``: each chosen point's overrides, what a run would do with it given what
  ``workdir`` holds (nothing said for a new point), and any config a run would refuse. Reads
  the workdir only."""
  from collections import Counter
  from pathlib import Path

  from parallax_jax.sweeps.runner import triage

  invalid, actions = 0, Counter()
  held = Path(workdir).is_dir()
  for p in chosen:
    print(f"{p.name}: {' '.join(p.overrides) or '(base)'}")
    action, why = triage(workdir, p) if held else ("new", "new point")
    actions[action] += 1
    if action != "new":  # a new point: nothing to say
      print(f"  {'would train: ' if action == 'train' else ''}{why}")
    if (problem := p.problem()) is not None:
      invalid += 1
      print(f"  invalid: {problem}")
  if held:
    print(
      f"{workdir}: of {len(chosen)} point(s), {actions['skip']} skipped, {actions['train']} to "
      f"resume or retry, {actions['new']} new"
    )
  if invalid:
    raise UserError(f"{invalid} of {len(chosen)} sweep points are invalid (above)")
  return 0


def _sweep_collect(args) -> int:
  """``sweep --collect``: finished points from other workdirs into this one, then its report."""
  from pathlib import Path

  from parallax_jax.sweeps import report
  from parallax_jax.sweeps.collect import collect_points
  from parallax_jax.sweeps.config import load_sweep, select_points
  from parallax_jax.sweeps.runner import write_description

  sweep = load_sweep(args.config, args.workdir)
  only = [p.name for p in select_points(sweep, args.points).points] if args.points else None
  collected, refused = collect_points(sweep, args.workdir, args.collect, only=only)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)  # a new one: the sources were checked above
  write_description(sweep, workdir)
  rows = report.write_all(sweep, workdir)
  finished = sum(r["status"] == "finished" for r in rows)
  print(
    f"collected {len(collected)} point(s); {args.workdir} holds {finished} finished of {len(rows)}"
  )
  for line in refused:
    print(f"not collected: {line}")
  return 1 if refused else 0


def _patterns(text: str) -> str:
  """argparse ``type`` of ``--points``: at least one pattern (an empty value, e.g. an unset
  shell variable, is not read as "every point")."""
  import argparse

  from parallax_jax.sweeps.config import point_patterns

  if not point_patterns(text):
    raise argparse.ArgumentTypeError(
      f"{text!r} names no point; give fnmatch patterns, or leave --points out for every point"
    )
  return text


def add_sweep(sub, common):
  sw = sub.add_parser(
    "sweep",
    parents=[common],
    help="train every point of a sweep config (resumable); results table and plots",
    description="Each point trains in W/points/<name>/ via `parallax-jax train` in a "
    "subprocess; a rerun skips finished points and retries failed ones. Writes "
    "W/results.csv, W/results.md, W/loss_curves.png and W/metric_vs_<axis>.png.",
  )
  sw.add_argument(
    "--config", type=local_path, required=True, help="sweep file (configs/sweeps/<name>.py)"
  )
  sw.add_argument(
    "--workdir",
    type=local_dir,
    required=True,
    help="the sweep's directory: points/<name>/ runs, results tables and plots",
  )
  sw.add_argument(
    "--parallel",
    type=int,
    default=None,
    help="points trained at once (default 1; one accelerator each if several)",
  )
  sw.add_argument(
    "--points",
    type=_patterns,
    nargs="+",
    default=None,
    help="fnmatch patterns: run only the points whose name or variant matches (e.g. "
    "'muon+parallax_s0' or 'L2_pairs64_*'); a comma list of variants ('a,b') works too, but "
    "a point's full name ('variant=a,seed=0', commas inside) is one pattern; default: every point",
  )
  sw.add_argument(
    "--dry-run",
    action="store_true",
    help="list the points, say what a run would do with each one --workdir holds (skip, "
    "resume, retry), flag each one whose config a run would refuse (exit 2), and exit",
  )
  sw.add_argument(
    "--collect",
    type=local_dir,
    nargs="+",
    metavar="SRC",
    default=None,
    help="train nothing: copy the finished points of this sweep found in the SRC workdirs "
    "(e.g. a device run's returned files; their status, config and metrics) into --workdir, "
    "refusing points trained with another config or that --workdir holds otherwise, then "
    "rebuild --workdir's tables and plots",
  )
  sw.set_defaults(fn=_sweep)
