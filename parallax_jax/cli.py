"""``parallax-jax`` command line: train, eval, sweep, convert-softmax, demo."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from parallax_jax import parallax_attention

  b, t, hq, hkv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
  keys = jax.random.split(jax.random.key(args.seed), 4)
  q = jax.random.normal(keys[0], (b, t, hq, d))
  r = jax.random.normal(keys[1], (b, t, hq, d))
  k = jax.random.normal(keys[2], (b, t, hkv, d))
  v = jax.random.normal(keys[3], (b, t, hkv, d))
  impl = args.implementation

  softmax = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  at_zero = parallax_attention(q, jnp.zeros_like(r), k, v, implementation=impl)
  err = float(jnp.max(jnp.abs(at_zero - softmax)) / jnp.max(jnp.abs(softmax)))
  print(f"backend={jax.default_backend()}  B={b} T={t} Hq={hq} Hkv={hkv} D={d}")
  print(f"r = 0  vs softmax attention (jax.nn.dot_product_attention): max rel err {err:.2e}")

  o = parallax_attention(q, r, k, v, implementation=impl)
  cov = float(jnp.sqrt(jnp.mean((o - softmax) ** 2)))
  print(f"r != 0: RMS of the covariance correction o - softmax = {cov:.3f}")

  loss = lambda *x: jnp.sum(parallax_attention(*x, implementation=impl) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, r, k, v)
  norms = ", ".join(
    f"|d{n}|={float(jnp.linalg.norm(g)):.3g}" for n, g in zip("qrkv", grads, strict=True)
  )
  print(f"gradients: {norms}")
  ok = err < 1e-5 and all(bool(np.isfinite(np.asarray(g)).all()) for g in grads)
  print("OK" if ok else "MISMATCH")
  return 0 if ok else 1


def _split_overrides(argv):
  """``--config.a.b=value`` arguments (handled by the config loader) and the rest."""
  overrides = [a for a in argv if a.startswith("--config.")]
  return overrides, [a for a in argv if not a.startswith("--config.")]


def _load_and_initialize(path, overrides):
  """Loads the config, then starts jax.distributed (before any backend is touched)."""
  from parallax_jax import distributed
  from parallax_jax.train.config import load_config

  cfg = load_config(path, overrides)
  distributed.initialize(distributed.DistributedConfig.from_dict(cfg.distributed.to_dict()))
  return cfg


def _train(args) -> int:
  from parallax_jax.train.loop import NonFiniteLossError, train

  cfg = _load_and_initialize(args.config, args.overrides)
  try:
    summary = train(cfg, args.workdir)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
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


def _eval(args) -> int:
  import json

  from parallax_jax.train.config import load_config
  from parallax_jax.train.loop import evaluate

  cfg = load_config(args.config, args.overrides) if args.config else None
  print(json.dumps(evaluate(args.workdir, cfg)))
  return 0


def _sweep(args) -> int:
  from parallax_jax.sweeps.config import load_sweep
  from parallax_jax.sweeps.runner import run_sweep

  sweep = load_sweep(args.config, args.workdir)
  if args.dry_run:
    for p in sweep.points:
      print(f"{p.name}: {' '.join(p.overrides) or '(base)'}")
    return 0
  rows = run_sweep(sweep, args.workdir, parallel=args.parallel)
  print(f"wrote {args.workdir}/results.md:")
  print(open(f"{args.workdir}/results.md").read())
  return 0 if all(r["status"] == "finished" for r in rows) else 1


def _convert(args) -> int:
  from parallax_jax.train.convert import convert_softmax_to_parallax

  out = convert_softmax_to_parallax(args.workdir, args.out, step=args.step)
  print(
    f"wrote {out}; train from it with --config.model.attention=parallax "
    f"--config.checkpoint.init_from={out}"
  )
  return 0


def _compare(args) -> int:
  from parallax_jax.benchmarking.compare_sharding import compare_sharding

  cfg = _load_and_initialize(args.config, args.overrides)
  rows = compare_sharding(
    cfg, args.strategies.split(","), args.workdir, steps=args.steps, synthetic=args.synthetic
  )
  return 1 if any(r.get("error") for r in rows) else 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides, argv = _split_overrides(argv)
  parser = argparse.ArgumentParser(prog="parallax-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  tr = sub.add_parser(
    "train",
    help="train from a config file (resumes from --workdir)",
    description="Extra --config.section.key=value arguments override the config file.",
  )
  tr.add_argument("--config", required=True, help="config file with get_config()")
  tr.add_argument("--workdir", required=True)
  tr.set_defaults(fn=_train)
  ev = sub.add_parser("eval", help="held-out loss/perplexity of a workdir's latest checkpoint")
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--config", default=None, help="default: the workdir's config.json")
  ev.set_defaults(fn=_eval)
  sw = sub.add_parser(
    "sweep",
    help="train every point of a sweep config (resumable); results table and plots",
    description="Each point trains in W/points/<name>/ via `parallax-jax train` in a "
    "subprocess; a rerun skips finished points and retries failed ones. Writes "
    "W/results.csv, W/results.md, W/loss_curves.png and W/metric_vs_<axis>.png.",
  )
  sw.add_argument("--config", required=True, help="sweep file (configs/sweeps/<name>.py)")
  sw.add_argument("--workdir", required=True)
  sw.add_argument(
    "--parallel", type=int, default=1, help="points at once (one accelerator each if several)"
  )
  sw.add_argument("--dry-run", action="store_true", help="list the points and exit")
  sw.set_defaults(fn=_sweep)
  cv = sub.add_parser(
    "convert-softmax", help="softmax checkpoint -> Parallax params (r_proj zero-initialised)"
  )
  cv.add_argument("--workdir", required=True, help="workdir of a softmax run")
  cv.add_argument("--out", required=True, help="where to write the params checkpoint")
  cv.add_argument("--step", type=int, default=None, help="default: latest")
  cv.set_defaults(fn=_convert)
  cs = sub.add_parser(
    "compare-sharding", help="run the same steps under each sharding strategy; CSV + chart"
  )
  cs.add_argument("--config", required=True)
  cs.add_argument("--workdir", required=True)
  cs.add_argument("--strategies", default="dp,fsdp,tp,fsdp_tp,cp")
  cs.add_argument("--steps", type=int, default=3, help="timed steps after the first")
  cs.add_argument("--synthetic", action="store_true", help="random tokens instead of data")
  cs.set_defaults(fn=_compare)
  demo = sub.add_parser("demo", help="run the op; check r = 0 against softmax attention")
  demo.add_argument("--batch", type=int, default=2)
  demo.add_argument("--length", type=int, default=256)
  demo.add_argument("--heads", type=int, default=8)
  demo.add_argument("--kv-heads", type=int, default=2)
  demo.add_argument("--head-dim", type=int, default=64)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--implementation", default=None)
  demo.set_defaults(fn=_demo)
  args = parser.parse_args(argv)
  args.overrides = overrides
  if overrides and args.command not in ("train", "eval", "compare-sharding"):
    parser.error(f"--config.* overrides only apply to train and eval, got {overrides}")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "absl"):  # backend probing and Orbax's per-save chatter
    logging.getLogger(noisy).setLevel(logging.WARNING)
  return args.fn(args)


if __name__ == "__main__":
  sys.exit(main())
