"""``compare-sharding``: the same steps under each sharding strategy."""

from __future__ import annotations

from parallax_jax.cli.common import load_and_initialize, local_dir, local_path
from parallax_jax.errors import UserError


def _compare(args) -> int:
  from parallax_jax.benchmarking.compare_sharding import compare_sharding
  from parallax_jax.sharding import STRATEGIES

  strategies = args.strategies.split(",")
  unknown = [s for s in strategies if s not in STRATEGIES]
  if unknown:  # checked before the config loads and anything compiles: a typo costs nothing
    raise UserError(f"--strategies: unknown {unknown}; known: {', '.join(STRATEGIES)}")
  counts = None
  if args.devices is not None:  # checked before the config loads: a typo costs nothing
    try:
      counts = [int(n) for n in args.devices.split(",")]
    except ValueError:
      raise UserError(f"--devices must be a comma list of integers, got {args.devices!r}") from None
  cfg = load_and_initialize(args.config, args.overrides)
  rows = compare_sharding(
    cfg,
    strategies,
    args.workdir,
    steps=args.steps,
    synthetic=args.synthetic,
    device_counts=counts,
  )
  return 1 if any(r.get("error") for r in rows) else 0


def add_compare(sub, common):
  cs = sub.add_parser(
    "compare-sharding",
    parents=[common],
    help="run the same steps under each sharding strategy; CSV + chart",
    description="Trains the config's first steps under each sharding strategy (a fresh model, "
    "nothing saved) and writes step time, tokens/s, MFU and memory per strategy to "
    "WORKDIR/sharding.csv and sharding.png. Overrides (--config.a.b=value) apply to every "
    "strategy.",
  )
  cs.add_argument("--config", type=local_path, required=True, help="config file with get_config()")
  cs.add_argument(
    "--workdir",
    type=local_dir,
    required=True,
    help="a new folder for the results (not a run's workdir; never overwritten)",
  )
  cs.add_argument(
    "--strategies",
    default="dp,fsdp,tp,fsdp_tp,cp",
    help="comma list of sharding strategies (default: all five)",
  )
  cs.add_argument("--steps", type=int, default=3, help="timed steps after the first")
  cs.add_argument("--synthetic", action="store_true", help="random tokens instead of data")
  cs.add_argument(
    "--devices",
    default=None,
    help="comma list of device counts, e.g. 1,2,4,8: each strategy on the first n devices, "
    "same global batch; adds scaling.png (default: all devices once)",
  )
  cs.set_defaults(fn=_compare, takes_overrides=True)
