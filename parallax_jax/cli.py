"""``parallax-jax``: train, eval, generate, config, plot, sweep, import-hf, export-hf, demo, ...

Errors in what the user gave (``parallax_jax.errors.UserError``: config, data, paths, workdir)
print one line ``parallax-jax: error: ...`` and exit 2; ``--debug`` (or PARALLAX_JAX_DEBUG=1)
shows their traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from parallax_jax.errors import UserError

CONFIG_HELP = """\
config keys: --config.SECTION.KEY=VALUE (or --config.SECTION.KEY VALUE) overrides a key of the
config file, typed like its current value (None, true/false, numbers, Python literals).
  parallax-jax config --config C [overrides]     every key: value, resume rule, meaning; validates
  parallax-jax train --dry-run --config C ...    + parameters, FLOPs/token, mesh, memory/device
The table of keys is parallax_jax/train/config_keys.py.
"""


def _demo(args) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from parallax_jax import parallax_attention
  from parallax_jax.model.config import attention_paths, path_platforms

  b, t, hq, hkv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
  sizes = {"batch": b, "length": t, "heads": hq, "kv-heads": hkv, "head-dim": d}
  for flag, value in sizes.items():
    if value < 1:
      raise UserError(f"--{flag} must be >= 1, got {value}")
  if hq % hkv:
    raise UserError(f"--heads {hq} must be a multiple of --kv-heads {hkv} (GQA groups)")
  impl, backend = args.implementation, jax.default_backend()
  if impl is not None:
    if impl not in (paths := attention_paths("parallax")):
      raise UserError(f"--implementation must be one of {', '.join(paths)}, got {impl!r}")
    if backend not in (where := path_platforms("parallax", impl)):
      raise UserError(
        f"--implementation {impl} runs on {', '.join(where) or 'no backend here'}, not on "
        f"this machine's {backend!r}; omit it for the best available path"
      )
  keys = jax.random.split(jax.random.key(args.seed), 4)
  q = jax.random.normal(keys[0], (b, t, hq, d))
  r = jax.random.normal(keys[1], (b, t, hq, d))
  k = jax.random.normal(keys[2], (b, t, hkv, d))
  v = jax.random.normal(keys[3], (b, t, hkv, d))

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
  """``--config.a.b=value`` / ``--config.a.b value`` arguments (for the config loader), and the
  rest. A space-form value is the next argument unless that starts with ``--``."""
  overrides, rest, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        arg, i = f"{arg}={argv[i + 1]}", i + 1
      overrides.append(arg)
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def _load_and_initialize(path, overrides):
  """Loads the config, then starts jax.distributed (before any backend is touched)."""
  from parallax_jax import distributed
  from parallax_jax.train.config import load_config

  cfg = load_config(path, overrides)
  distributed.initialize(distributed.DistributedConfig.from_dict(cfg.distributed.to_dict()))
  return cfg


def _train(args) -> int:
  from parallax_jax.train.loop import NonFiniteLossError, train
  from parallax_jax.train.preemption import EXIT_PREEMPTED, Preempted

  if args.dry_run:
    return _dry_run(args)
  if args.workdir is None:
    raise UserError("train: --workdir is required (only --dry-run runs without one)")
  cfg = _load_and_initialize(args.config, args.overrides)
  try:
    summary = train(cfg, args.workdir)
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


def _print_validated(args, *, compiles: bool = False):
  """Loads and validates the config (data opened; ``compiles``: its attention paths run on this
  backend), then prints every key: ``(cfg, exp, data)``. A refused config prints one line."""
  import jax

  from parallax_jax.train import dry_run

  cfg = _load_and_initialize(args.config, args.overrides)
  exp, data = dry_run.validate(cfg)
  if compiles:
    exp.model.check_paths(jax.default_backend())
  print("\n".join(dry_run.config_lines(cfg)))
  print(f"data: {data.describe()}")
  return cfg, exp, data


def _dry_run(args) -> int:
  from parallax_jax.train import dry_run

  cfg, exp, data = _print_validated(args, compiles=not args.no_compile)
  if args.workdir is not None:
    print(dry_run.workdir_line(args.workdir, cfg))
  print("\n".join(dry_run.dry_run_lines(exp, data, compile=not args.no_compile)))
  print("valid: nothing was trained or written")
  return 0


def _config(args) -> int:
  import jax

  _, exp, _ = _print_validated(args)
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
  print(json.dumps(evaluate(args.workdir, cfg)))
  return 0


def _plot(args) -> int:
  from pathlib import Path

  from parallax_jax.errors import UserFileNotFoundError
  from parallax_jax.train.plots import plot_runs, run_labels

  workdirs = [Path(w) for w in args.workdir]
  for w in workdirs:
    if not (w / "metrics.jsonl").is_file():
      raise UserFileNotFoundError(f"--workdir {w} has no metrics.jsonl: not a training run")
  print(f"wrote {plot_runs(run_labels(workdirs), args.out)}")
  return 0


def _sweep(args) -> int:
  from parallax_jax.sweeps.config import load_sweep, select_points
  from parallax_jax.sweeps.runner import SweepStopped, run_sweep
  from parallax_jax.train.preemption import EXIT_PREEMPTED

  if args.parallel < 1:  # checked before the sweep loads: a typo costs nothing
    raise UserError(f"--parallel must be >= 1, got {args.parallel}")
  if args.collect:
    return _sweep_collect(args)
  sweep = select_points(load_sweep(args.config, args.workdir), args.points)
  if args.dry_run:
    invalid = 0
    for p in sweep.points:
      print(f"{p.name}: {' '.join(p.overrides) or '(base)'}")
      if (problem := p.problem()) is not None:
        invalid += 1
        print(f"  invalid: {problem}")
    if invalid:
      raise UserError(f"{invalid} of {len(sweep.points)} sweep points are invalid (above)")
    return 0
  try:
    rows = run_sweep(sweep, args.workdir, parallel=args.parallel)
  except SweepStopped as e:
    print(f"parallax-jax: {e} (report: {args.workdir}/results.md)", file=sys.stderr)
    return EXIT_PREEMPTED
  print(f"wrote {args.workdir}/results.md:")
  print(open(f"{args.workdir}/results.md").read())
  return 0 if all(r["status"] == "finished" for r in rows) else 1


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
  write_description(sweep, workdir)
  rows = report.write_all(sweep, workdir)
  finished = sum(r["status"] == "finished" for r in rows)
  print(
    f"collected {len(collected)} point(s); {args.workdir} holds {finished} finished of {len(rows)}"
  )
  for line in refused:
    print(f"not collected: {line}")
  return 1 if refused else 0


def _convert(args) -> int:
  from parallax_jax.train import run_record
  from parallax_jax.train.convert import convert_softmax_to_parallax

  run_record.load_run_config(args.workdir)  # one-line errors for a workdir that holds no run
  run_record.require_checkpoints(args.workdir)
  out = convert_softmax_to_parallax(args.workdir, args.out, step=args.step)
  print(
    f"wrote {out}; train from it with --config.model.attention=parallax "
    f"--config.checkpoint.init_from={out}"
  )
  return 0


def _compare(args) -> int:
  from parallax_jax.benchmarking.compare_sharding import compare_sharding
  from parallax_jax.sharding import STRATEGIES

  strategies = args.strategies.split(",")
  unknown = [s for s in strategies if s not in STRATEGIES]
  if unknown:  # checked before the config loads and anything compiles: a typo costs nothing
    raise UserError(f"--strategies: unknown {unknown}; known: {', '.join(STRATEGIES)}")
  counts = None
  if args.devices:  # checked before the config loads: a typo costs nothing
    try:
      counts = [int(n) for n in args.devices.split(",")]
    except ValueError:
      raise UserError(f"--devices must be a comma list of integers, got {args.devices!r}") from None
  cfg = _load_and_initialize(args.config, args.overrides)
  rows = compare_sharding(
    cfg,
    strategies,
    args.workdir,
    steps=args.steps,
    synthetic=args.synthetic,
    device_counts=counts,
  )
  return 1 if any(r.get("error") for r in rows) else 0


def _generate(args) -> int:
  from parallax_jax.inference.loading import load_run
  from parallax_jax.inference.sampling import SamplingConfig
  from parallax_jax.inference.text import generate_text, read_prompts

  # Everything checkable without the run first: a typo costs no checkpoint read.
  if args.max_new_tokens < 1:
    raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if args.chunk_tokens < 1:
    raise UserError(f"--chunk-tokens must be >= 1, got {args.chunk_tokens}")
  sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
  if sampling.greedy and (args.top_k is not None or args.top_p is not None):
    raise UserError(
      "--top-k/--top-p filter what is sampled, and --temperature 0 (the default) is greedy: "
      "they would change nothing; pass --temperature > 0 (e.g. 0.8) to sample"
    )
  texts = read_prompts(args.prompt, args.prompts_file)
  run = load_run(args.workdir, args.step, args.overrides)
  result = generate_text(
    run,
    texts,
    max_new_tokens=args.max_new_tokens,
    sampling=sampling,
    seed=args.seed,
    chunk_tokens=args.chunk_tokens,
    out=sys.stdout,
  )
  print(result.timing_line(), file=sys.stderr)
  return 0


def _import_hf(args) -> int:
  from parallax_jax.interop.import_hf import import_hf
  from parallax_jax.train.config import load_config

  base = load_config(args.config) if args.config else None
  result = import_hf(
    args.src,
    args.workdir,
    attention=args.attention,
    r_init=args.r_init,
    base=base,
    overrides=args.overrides,
    byte_tokenizer=args.byte_tokenizer,
  )
  w = result.workdir
  print(f"imported {args.src} into {w}: {result.model.attention} model, step 0")
  print(
    f"next: `parallax-jax generate --workdir {w} --prompt TEXT`, `parallax-jax train --config "
    f"{result.config_path} --workdir {w}`, or another run with "
    f"--config.checkpoint.init_from={result.params_path}"
  )
  return 0


def _export_hf(args) -> int:
  from parallax_jax.interop.export_hf import export_hf

  result = export_hf(
    args.workdir,
    args.out,
    fmt=args.format,
    step=args.step,
    dtype=args.dtype,
    allow_qk_norm_eps_change=args.allow_qk_norm_eps_change,
  )
  names = ", ".join(f.name for f in result.files)
  print(
    f"wrote {result.out} ({result.fmt}, step {result.step}, tensors in {result.dtype}): {names}"
  )
  for note in result.notes:
    print(f"note: {note}")
  return 0


def _add_train(sub, common):
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
  tr.add_argument("--config", required=True, help="config file with get_config()")
  tr.add_argument("--workdir", help="run directory: checkpoints, metrics, config record")
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


def _add_config(sub, common):
  cf = sub.add_parser(
    "config",
    parents=[common],
    help="print every config key (value, resume rule, meaning) and validate; compiles nothing",
    description="Resolves --config with the overrides for this host's devices and opens the "
    "data, as a training start does; prints every key's value, resume rule and meaning.",
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cf.add_argument("--config", required=True, help="config file with get_config()")
  cf.set_defaults(fn=_config, takes_overrides=True)


def _add_eval(sub, common):
  ev = sub.add_parser(
    "eval",
    parents=[common],
    help="held-out loss/perplexity of a workdir's latest checkpoint (writes nothing there)",
  )
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--config", default=None, help="default: the run's own config")
  ev.set_defaults(fn=_eval, takes_overrides=True)


def _add_generate(sub, common):
  ge = sub.add_parser(
    "generate",
    parents=[common],
    help="continue prompts with a run's latest checkpoint (KV cache; writes nothing there)",
    description="Loads the run's config, tokenizer and checkpoint params (read-only) and "
    "continues each prompt. One prompt streams as it decodes; several print when done. Then "
    "one line on stderr: prefill and decode tokens/s (compilation excluded). Safe --config.* "
    "overrides apply to this read only, e.g. --config.model.attention_impl=None to let a run "
    "trained with an explicit GPU kernel generate on another backend.",
  )
  ge.add_argument("--workdir", required=True, help="run directory (parallax-jax train)")
  ge.add_argument("--prompt", action="append", default=[], help="prompt text (repeat for a batch)")
  ge.add_argument("--prompts-file", default=None, help="one prompt per non-empty line")
  ge.add_argument("--max-new-tokens", type=int, default=200, help="per prompt (default 200)")
  ge.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
  ge.add_argument("--top-k", type=int, default=None, help="sample from the k most likely")
  ge.add_argument(
    "--top-p", type=float, default=None, help="nucleus: smallest set with probability >= p"
  )
  ge.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
  ge.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ge.add_argument(
    "--chunk-tokens", type=int, default=16, help="decode steps per jitted call (default 16)"
  )
  ge.set_defaults(fn=_generate, takes_overrides=True)


def _add_plot(sub, common):
  pl = sub.add_parser(
    "plot",
    parents=[common],
    help="loss / eval curves of one or more runs, overlaid, as a PNG",
    description="Reads each workdir's metrics.jsonl and writes nothing into the runs.",
  )
  pl.add_argument("--workdir", required=True, nargs="+", help="one or more run workdirs")
  pl.add_argument("--out", default="plot.png", help="PNG to write (default: ./plot.png)")
  pl.set_defaults(fn=_plot)


def _add_sweep(sub, common):
  sw = sub.add_parser(
    "sweep",
    parents=[common],
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
  sw.add_argument(
    "--points",
    default=None,
    help="comma list of fnmatch patterns: run only the points whose name or variant matches "
    "(e.g. 'muon+parallax_s0' or 'L2_pairs64_*'); default: every point",
  )
  sw.add_argument("--dry-run", action="store_true", help="list the points and exit")
  sw.add_argument(
    "--collect",
    nargs="+",
    metavar="SRC",
    default=None,
    help="train nothing: copy the finished points of this sweep found in the SRC workdirs "
    "(e.g. a device run's returned files; their status, config and metrics) into --workdir, "
    "refusing points trained with another config or that --workdir holds otherwise, then "
    "rebuild --workdir's tables and plots",
  )
  sw.set_defaults(fn=_sweep)


def _add_convert(sub, common):
  cv = sub.add_parser(
    "convert-softmax",
    parents=[common],
    help="softmax checkpoint -> Parallax params (r_proj zero-initialised)",
  )
  cv.add_argument("--workdir", required=True, help="workdir of a softmax run")
  cv.add_argument("--out", required=True, help="where to write the params checkpoint")
  cv.add_argument("--step", type=int, default=None, help="default: latest")
  cv.set_defaults(fn=_convert)


def _add_import_hf(sub, common):
  ih = sub.add_parser(
    "import-hf",
    parents=[common],
    help="Hugging Face Qwen3 checkpoint -> a run workdir (step-0 checkpoint, config, tokenizer)",
    description="Reads config.json, the safetensors (one file or a sharded set with its index) "
    "and tokenizer.json of a Qwen3 directory, tensor by tensor, and writes a new run in "
    "--workdir: a step-0 checkpoint (train / eval / generate run on it), W/params (for "
    "--config.checkpoint.init_from) and W/hf_import_config.py (train --config). The model "
    "section comes from config.json; the other sections from --config (default: the "
    "defaults) and --config.* overrides.",
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ih.add_argument("--from", dest="src", required=True, help="Hugging Face model directory")
  ih.add_argument("--workdir", required=True, help="new (or empty) run directory")
  ih.add_argument(
    "--attention",
    choices=("parallax", "softmax"),
    default="parallax",
    help="parallax (default; adds r_proj, r_norm) or softmax (Qwen3 as is)",
  )
  ih.add_argument(
    "--r-init",
    choices=("zeros", "like_q"),
    default="zeros",
    help="parallax: zeros (default; W_R = 0, exactly the softmax function) or like_q (copies "
    "q_proj and q_norm)",
  )
  ih.add_argument(
    "--byte-tokenizer",
    action="store_true",
    help="the directory has no tokenizer.json and its ids are UTF-8 bytes (export-hf of a "
    "byte-tokenizer run, e.g. configs/tiny.py's, writes none)",
  )
  ih.add_argument("--config", default=None, help="config file for the non-model sections")
  ih.set_defaults(fn=_import_hf, takes_overrides=True)


def _add_export_hf(sub, common):
  eh = sub.add_parser(
    "export-hf",
    parents=[common],
    help="a run's params -> a Hugging Face directory (Qwen3, or fla's parallax model type)",
    description="Reads the run's params (read-only; latest readable checkpoint or --step) and "
    "writes config.json, model.safetensors and the run's tokenizer file (none for the byte "
    "tokenizer) into --out, a new or empty directory. qwen3: softmax models (a Parallax model "
    "only when W_R = 0 exactly). fla-parallax: fla's ParallaxForCausalLM (needs num_heads * "
    "head_dim = d_model; its q/r/k norms use eps 1e-5).",
  )
  eh.add_argument("--workdir", required=True, help="run directory (train or import-hf)")
  eh.add_argument("--out", required=True, help="new or empty directory to write")
  eh.add_argument(
    "--format", choices=("qwen3", "fla-parallax"), default="qwen3", help="default: qwen3"
  )
  eh.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  eh.add_argument(
    "--dtype",
    choices=("param", "float32", "bfloat16", "float16"),
    default="param",
    help="tensor dtype (default: the run's model.param_dtype)",
  )
  eh.add_argument(
    "--allow-qk-norm-eps-change",
    action="store_true",
    help="fla-parallax: export although fla's q/r/k norm eps (1e-5) differs from model.norm_eps",
  )
  eh.set_defaults(fn=_export_hf)


def _add_compare(sub, common):
  cs = sub.add_parser(
    "compare-sharding",
    parents=[common],
    help="run the same steps under each sharding strategy; CSV + chart",
  )
  cs.add_argument("--config", required=True)
  cs.add_argument("--workdir", required=True)
  cs.add_argument("--strategies", default="dp,fsdp,tp,fsdp_tp,cp")
  cs.add_argument("--steps", type=int, default=3, help="timed steps after the first")
  cs.add_argument("--synthetic", action="store_true", help="random tokens instead of data")
  cs.add_argument(
    "--devices",
    default=None,
    help="comma list of device counts, e.g. 1,2,4,8: each strategy on the first n devices, "
    "same global batch; adds scaling.png (default: all devices once)",
  )
  cs.set_defaults(fn=_compare, takes_overrides=True)


def _add_demo(sub, common):
  demo = sub.add_parser(
    "demo", parents=[common], help="run the op; check r = 0 against softmax attention"
  )
  demo.add_argument("--batch", type=int, default=2)
  demo.add_argument("--length", type=int, default=256)
  demo.add_argument("--heads", type=int, default=8)
  demo.add_argument("--kv-heads", type=int, default=2)
  demo.add_argument("--head-dim", type=int, default=64)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument(
    "--implementation",
    default=None,
    help="parallax_attention's implementation= (default: the best available, logged)",
  )
  demo.set_defaults(fn=_demo)


# The subcommands, in --help order: each adds its parser to ``sub`` (with ``parents=[common]``
# for --debug) and sets ``fn`` (and ``takes_overrides=True`` if it reads --config.* overrides).
COMMANDS = [
  _add_train,
  _add_eval,
  _add_generate,
  _add_config,
  _add_plot,
  _add_sweep,
  _add_convert,
  _add_import_hf,
  _add_export_hf,
  _add_compare,
  _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="parallax-jax",
    description=__doc__,
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  debug_help = "show the traceback of user errors too (also: PARALLAX_JAX_DEBUG=1)"
  parser.add_argument("--debug", action="store_true", help=debug_help)
  common = argparse.ArgumentParser(add_help=False)  # --debug after the subcommand too
  common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
  sub = parser.add_subparsers(dest="command", required=True)
  for add in COMMANDS:
    add(sub, common)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides, argv = _split_overrides(argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  args.overrides = overrides
  if overrides and not getattr(args, "takes_overrides", False):
    parser.error(f"--config.* overrides do not apply to {args.command}, got {overrides}")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "absl"):  # backend probing and Orbax's per-save chatter
    logging.getLogger(noisy).setLevel(logging.WARNING)
  debug = args.debug or os.environ.get("PARALLAX_JAX_DEBUG", "") not in ("", "0")
  try:
    return args.fn(args)
  except UserError as e:
    if debug:
      raise
    print(f"parallax-jax: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
