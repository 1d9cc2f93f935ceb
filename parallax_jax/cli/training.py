"""``train`` (and ``--dry-run``), ``config``, ``eval``, ``plot`` and ``convert-softmax``: a run's
life from a config file."""

from __future__ import annotations

import argparse
import sys

from parallax_jax.cli.common import (
  CONFIG_HELP,
  initialize,
  load_and_initialize,
  local_dir,
  local_path,
)
from parallax_jax.errors import UserError


def _train(args) -> int:
  from parallax_jax.train.loop import NonFiniteLossError, train
  from parallax_jax.train.preemption import EXIT_PREEMPTED, Preempted, SetupSignal

  if args.no_compile and not args.dry_run:  # it would train, compiling, as if not given
    raise UserError("train: --no-compile applies only with --dry-run; add --dry-run or drop it")
  if args.dry_run:
    return _dry_run(args)
  if args.workdir is None:
    raise UserError("train: --workdir is required (only --dry-run runs without one)")
  try:
    # From the start: a signal during setup stops the run as one in training does (exit 75).
    with SetupSignal():
      summary = train(load_and_initialize(args.config, args.overrides), args.workdir)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except Preempted as e:
    print(f"parallax-jax: {e}", file=sys.stderr)
    return EXIT_PREEMPTED
  if summary.get("already_finished"):
    print(
      f"parallax-jax: {args.workdir} is already finished at step {summary['final_step']} "
      "(train.steps); nothing to do. Raise --config.train.steps to train further."
    )
    return 0
  keys = (
    "final_step",
    "loss",
    "eval_loss",
    "eval_perplexity",
    "eval_accuracy",
    "eval_mse",
    "eval_mse_baseline_zero",
    "eval_mse_baseline_ols",
    "eval_mse_baseline_bayes",
    "tokens_per_s",
    "mfu",
  )
  print(
    " ".join(
      f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
      for k in keys
      if k in summary
    )
  )
  return 0


def _print_validated(args, *, dry_run_checks: bool = False, compiles: bool = False, workdir=None):
  """Loads and validates the config (data opened; ``dry_run_checks``: the train program built
  and ``checkpoint.init_from`` checked against it, as ``train`` does before starting a run;
  ``compiles``: its attention paths run on this backend; ``workdir``: what ``train`` would do
  there, a refusal included), then prints every key: ``(cfg, exp, data, program)``, the
  program None without ``dry_run_checks``. A refused config prints one line and nothing
  before it."""
  import jax

  from parallax_jax.train import dry_run

  cfg = load_and_initialize(args.config, args.overrides)
  exp, data = dry_run.validate(cfg)
  if compiles:
    exp.model.check_paths(jax.default_backend())
  where = None if workdir is None else dry_run.workdir_line(workdir, cfg)
  program = None
  if dry_run_checks:
    from parallax_jax.train.checkpoint import check_init_from_at_start
    from parallax_jax.train.program import Program

    program = Program(exp)  # one, for the init_from check and the dry run's lines
    check_init_from_at_start(exp.checkpoint.init_from, workdir, program.abstract_state.params)
  print("\n".join(dry_run.config_lines(cfg)))
  print(f"data: {data.describe()}")
  if where is not None:
    print(where)
  return cfg, exp, data, program


def _dry_run(args) -> int:
  from parallax_jax.train import dry_run

  _, exp, data, program = _print_validated(
    args, dry_run_checks=True, compiles=not args.no_compile, workdir=args.workdir
  )
  lines = dry_run.dry_run_lines(exp, data, compile=not args.no_compile, program=program)
  print("\n".join(lines))
  print("valid: nothing was trained or written")
  return 0


def _config(args) -> int:
  import jax

  _, exp, _, _ = _print_validated(args)
  sizes = exp.mesh.shape(jax.device_count())
  print(f"valid for {jax.device_count()} device(s): mesh {sizes} (nothing compiled or written)")
  return 0


def _eval(args) -> int:
  import json

  from parallax_jax.train.config import apply_overrides, load_config
  from parallax_jax.train.loop import evaluate
  from parallax_jax.train.run_record import load_run_config

  if args.config:
    cfg = load_config(args.config, args.overrides)
  else:  # the run's own config, with any overrides (e.g. --config.train.eval_batches=8)
    cfg = apply_overrides(load_run_config(args.workdir), args.overrides)
  initialize(cfg)  # a run trained by several processes is evaluated by as many, or by one
  print(json.dumps(evaluate(args.workdir, cfg, args.step)))
  return 0


def _plot(args) -> int:
  from pathlib import Path

  from parallax_jax.errors import UserFileNotFoundError
  from parallax_jax.train.plots import check_image_path, plot_runs, run_labels
  from parallax_jax.train.run_record import check_holds_no_other_kind

  # before any run is read: the file written is the one named, and no figure is replaced unasked
  check_image_path(args.out, overwrite=args.overwrite)
  workdirs = [Path(w) for w in args.workdir]
  for w in workdirs:
    if not w.is_dir():
      raise UserFileNotFoundError(f"--workdir {str(w)!r} does not exist")
    check_holds_no_other_kind(w, "run")  # a sweep: names its runs, points/<name>
    if not (w / "metrics.jsonl").is_file():
      raise UserFileNotFoundError(
        f"--workdir {str(w)!r} has no metrics.jsonl: not a training run (or one that has not "
        "logged a step yet)"
      )
  print(f"wrote {plot_runs(run_labels(workdirs), args.out)}")
  return 0


def _convert(args) -> int:
  from parallax_jax.train.convert import convert_softmax_to_parallax

  out = convert_softmax_to_parallax(args.workdir, args.out, step=args.step)
  print(
    f"wrote {out}; train from it with --config.model.attention=parallax "
    f"--config.checkpoint.init_from={out}"
  )
  return 0


def add_train(sub, common):
  tr = sub.add_parser(
    "train",
    parents=[common],
    help="train from a config file (resumes from --workdir)",
    description="Trains in --workdir, resuming the run there. A config change the run cannot\n"
    "take (its checkpoint or data stream) is refused before anything is written; safe ones\n"
    "are recorded in W/config_history.jsonl (W/config.json keeps the first start's).",
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  tr.add_argument("--config", type=local_path, required=True, help="config file with get_config()")
  tr.add_argument(
    "--workdir", type=local_dir, help="run directory: checkpoints, metrics, config record"
  )
  tr.add_argument(
    "--dry-run",
    action="store_true",
    help="print the resolved config, parameters, FLOPs per token, mesh and memory per device "
    "(compiles the train step once), check --workdir if given; train nothing, write nothing",
  )
  tr.add_argument(
    "--no-compile", action="store_true", help="with --dry-run: skip the compiled memory analysis"
  )
  tr.set_defaults(fn=_train, takes_overrides=True)


def add_config(sub, common):
  cf = sub.add_parser(
    "config",
    parents=[common],
    help="print every config key (value, resume rule, meaning) and validate; compiles nothing",
    description="Resolves --config with the overrides for this host's devices and opens the "
    "data, as a training start does; prints every key's value, resume rule and meaning.",
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cf.add_argument("--config", type=local_path, required=True, help="config file with get_config()")
  cf.set_defaults(fn=_config, takes_overrides=True)


def add_eval(sub, common):
  ev = sub.add_parser(
    "eval",
    parents=[common],
    help="held-out loss/perplexity of a workdir's latest checkpoint (writes nothing there)",
    description="Evaluates a run's checkpoint on its held-out split (the run's own config and "
    "tokenizer; overrides such as --config.train.eval_batches=8 apply) and prints the metrics "
    "as one JSON line; reads the run, never writes to it.",
  )
  ev.add_argument("--workdir", type=local_dir, required=True, help="the run's workdir")
  ev.add_argument("--config", type=local_path, default=None, help="default: the run's own config")
  ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ev.set_defaults(fn=_eval, takes_overrides=True)


def add_plot(sub, common):
  pl = sub.add_parser(
    "plot",
    parents=[common],
    help="loss / eval curves of one or more runs, overlaid, as a PNG",
    description="Reads each workdir's metrics.jsonl and writes nothing into the runs.",
  )
  pl.add_argument(
    "--workdir", type=local_dir, required=True, nargs="+", help="one or more run workdirs"
  )
  pl.add_argument(
    "--out",
    type=local_path,
    default="plot.png",
    help="image file to write, its format from its extension (default: ./plot.png)",
  )
  pl.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  pl.set_defaults(fn=_plot)


def add_convert(sub, common):
  cv = sub.add_parser(
    "convert-softmax",
    parents=[common],
    help="softmax checkpoint -> Parallax params (r_proj zero-initialised)",
  )
  cv.add_argument("--workdir", type=local_dir, required=True, help="workdir of a softmax run")
  cv.add_argument(
    "--out",
    type=local_dir,
    required=True,
    help="new path for the params checkpoint (must not exist)",
  )
  cv.add_argument("--step", type=int, default=None, help="default: latest")
  cv.set_defaults(fn=_convert)
