"""Training throughput of a config's model with Parallax vs softmax attention, same run.

Times the jitted train step (forward, backward, optimizer) on random tokens (no data
pipeline), for each attention kind, and reports tokens/s, model TFLOP/s and MFU (model FLOPs,
attention included: ``ModelConfig.flops_per_token``, defined in ``parallax_jax.flops``); the
step time is the median of ``--steps`` timed steps. Per kind it tries the ``--remat`` policies
in order, each at the ``--batches`` largest first, and times the first (policy, batch) whose
compiled memory fits the device: the least recomputation, then the largest batch.

  python -m experiments.bench_train --config configs/lm_0p6b.py --seq-len 4096 \
      --remat none,dots_attention,full --batches 16,12,8,4 --out-dir experiments/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

from pallas_kernels.mosaic_gpu import implementation as mosaic_implementation
from parallax_jax.benchmarking import cli_checks, result_files
from parallax_jax.benchmarking.kernel_categories import NAMES as KERNEL_CATEGORIES
from parallax_jax.benchmarking.kernel_categories import by_category
from parallax_jax.benchmarking.kernel_times import kernel_times
from parallax_jax.benchmarking.run_info import run_info
from parallax_jax.benchmarking.timing import time_call
from parallax_jax.benchmarking.train_step import benchmark_train_step
from parallax_jax.flops import MFU_HEADER, MODEL_TFLOPS_HEADER
from parallax_jax.model import ModelConfig
from parallax_jax.model.config import REMAT
from parallax_jax.train.compile_cache import use_compilation_cache
from parallax_jax.train.metrics import compiled_memory_bytes, mfu
from parallax_jax.train.optimizer import OptimizerConfig

log = logging.getLogger("parallax_jax")

TOP_KERNELS = 15  # kernels listed per row, largest device time first


def bench_one(
  model: ModelConfig,
  opt: OptimizerConfig,
  batch_size: int,
  seq_len: int,
  steps: int,
  warmup: int,
  kernel_repeats: int = 0,
  init_on: str = "host",
  microbatches: int = 1,
) -> dict:
  """One row: the step's median time, tokens/s, MFU, compile and init times, memory; with
  ``kernel_repeats`` > 0 also the device time per step by kernel category (a profiler trace
  of that many more steps). ``init_on``: where the state's random init runs ("host": the CPU
  backend, then copied to the device; "device"). ``microbatches``: gradient accumulation, the
  batch taken in that many pieces (``train.microbatches``)."""
  jitted, init, state_shapes, batch = benchmark_train_step(
    model, opt, batch_size, seq_len, microbatches
  )
  batch = jax.device_put(batch)
  # Lowering (Python: tracing, Pallas -> Mosaic/Triton) and XLA's compile are timed apart, and
  # each phase is announced, so a run cut by a time limit still says where its time went.
  _progress(f"{model.attention}: lowering (batch {batch_size})")
  t0 = time.perf_counter()
  lowered = jitted.lower(state_shapes, batch)
  lower_s = time.perf_counter() - t0
  _progress(f"{model.attention}: lowered in {lower_s:.1f} s; XLA compile")
  step = lowered.compile()
  compile_s = time.perf_counter() - t0
  _progress(f"{model.attention}: compiled in {compile_s - lower_s:.1f} s")
  need, have = compiled_memory_bytes(step), _device_bytes()
  if need and have and need > 0.97 * have:
    raise MemoryError(f"needs {need / 2**30:.1f} GiB of {have / 2**30:.1f} GiB (compiled)")
  # The state's init is a jitted program of its own (every parameter's random init). On the
  # H200 each row spent ~2 min between the step's compile and its timing (session 13); by
  # elimination (not measured) this program's compile: hundreds of RNG fusions.
  # ``init_on="host"`` compiles and runs it on the host's CPU backend and copies the state over;
  # the step is the same.
  host = _cpu_device() if init_on == "host" else None
  if init_on == "host" and host is None:
    log.warning("--init-on host: no CPU backend in this process; initialising on the device")
    init_on = "device"  # the row records where it ran
  _progress(f"{model.attention}: initialising the state on the {init_on}")
  t1 = time.perf_counter()
  if host is not None:
    with jax.default_device(host):
      state = jax.device_put(init(jnp.int32(0)), jax.devices()[0])
  else:
    state = init(jnp.int32(0))
  carry = {"state": jax.block_until_ready(state)}
  init_s = time.perf_counter() - t1
  _progress(
    f"{model.attention}: state ready in {init_s:.1f} s; timing {1 + warmup} warm-up + {steps} steps"
  )

  def train_step():  # threads the (donated) state from one timed call to the next
    carry["state"], carry["metrics"] = step(carry["state"], batch)
    return carry["state"], carry["metrics"]

  dt = time_call(train_step, iters=steps, warmup=1 + warmup).median_s
  loss = float(carry["metrics"]["loss"])
  kernels = {}
  if kernel_repeats:
    _progress(f"{model.attention}: {kernel_repeats} steps under the profiler")
    try:  # a profiler failure must not lose the row timed above
      times = kernel_times(train_step, repeats=kernel_repeats)  # us per step, by kernel name
    except Exception as e:
      log.warning("--kernel-times failed: %r", e)
      kernels = {"kernel_times_error": repr(e)[:300]}
    else:
      if times:  # {} where the trace has no device plane (CPU)
        kernels = {
          "kernel_ms_by_category": {k: us / 1e3 for k, us in by_category(times).items()},
          "top_kernels_us": dict(list(times.items())[:TOP_KERNELS]),
        }
  tokens = batch_size * seq_len
  flops = model.flops_per_token(seq_len) * tokens
  return {
    "batch_size": batch_size,
    "microbatches": microbatches,
    "step_time_s": dt,
    "tokens_per_s": tokens / dt,
    "tflops_per_s": flops / dt / 1e12,  # model FLOPs
    "mfu": mfu(flops, dt),
    "loss": loss,
    "compile_s": compile_s,  # lowering + XLA compile
    "lower_s": lower_s,
    "init_s": init_s,  # the state's init: its compile and run (and copy)
    "init_on": init_on,
    "compiled_bytes": need,
    "peak_bytes": _peak_bytes(),
    **kernels,
  }


def _progress(msg: str) -> None:
  print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _cpu_device():
  """The CPU backend's first device, or None where this process has none (e.g.
  ``JAX_PLATFORMS=cuda``)."""
  try:
    return jax.devices("cpu")[0]
  except (RuntimeError, ValueError):
    return None


def _device_bytes():
  return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _out_of_memory(e: Exception) -> bool:
  text = repr(e)
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/lm_0p6b.py")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--batches", default="16,12,8,4", help="tried largest first until one fits")
  p.add_argument(
    "--attention",
    default="softmax,parallax",
    help="comma list of model.attention kinds; 'kind@impl' also sets model.attention_impl "
    "(e.g. parallax@pallas_mosaic_gpu)",
  )
  p.add_argument(
    "--remat", default=None, help="model.remat policies tried in order (default: the config's)"
  )
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
  p.add_argument(
    "--microbatches",
    type=int,
    default=1,
    help="gradient accumulation: each batch taken in this many pieces (train.microbatches)",
  )
  p.add_argument(
    "--mosaic-backward",
    choices=mosaic_implementation.BACKWARDS,
    default=None,
    help="the backward of implementation pallas_mosaic_gpu (default: the module's BACKWARD)",
  )
  p.add_argument(
    "--fused-backward",
    action="store_true",
    help="model.attention_deterministic=False: the fused backward (the Triton one adds dq/dr "
    "with atomics; with --mosaic-backward mosaic, the Mosaic one with TMA reductions); not "
    "bitwise reproducible",
  )
  p.add_argument(
    "--kernel-times",
    type=int,
    default=0,
    metavar="STEPS",
    help="also run STEPS steps under the profiler: device time per step by kernel category "
    "(attention, matmul, collectives, other XLA fusions, ...) and the largest kernels (GPU; "
    "CPU has none)",
  )
  p.add_argument(
    "--init-on",
    choices=("host", "device"),
    default="host",
    help="where the state's random init is compiled and run (host: the CPU backend, then "
    "copied; its GPU compile took ~2 min per row on the H200); the timed step is the same",
  )
  p.add_argument("--out-dir", default=None)
  p.add_argument(
    "--compilation-cache",
    default=None,
    metavar="DIR",
    help="JAX's persistent compilation cache: a second run with the same DIR skips XLA's compile "
    "of an unchanged step (lowering still runs)",
  )
  args, overrides = p.parse_known_args(argv)
  batches = cli_checks.positive_ints(p, "--batches", args.batches)
  cli_checks.at_least(p, args, 1, "seq_len", "steps", "layers")
  cli_checks.at_least(p, args, 0, "warmup", "kernel_times")
  uneven = [b for b in batches if args.microbatches < 1 or b % args.microbatches]
  if uneven:
    p.error(f"--microbatches {args.microbatches} must be >= 1 and divide every batch in --batches")
  for label in args.attention.split(","):  # before any compile: not a traceback mid-run
    kind, _, impl = label.partition("@")
    cli_checks.attention_impl(p, "--attention", kind, impl or None, "give the kind alone")
  for remat in args.remat.split(",") if args.remat else []:
    cli_checks.choice(p, "--remat", remat, REMAT)
  use_compilation_cache(args.compilation_cache)
  args.stem = None
  if args.mosaic_backward:
    mosaic_implementation.BACKWARD = args.mosaic_backward
  cfg = cli_checks.config(p, args.config, overrides)
  base = ModelConfig.from_dict(cfg.model.to_dict())
  if args.layers:
    base = dataclasses.replace(base, num_layers=args.layers)
  if args.fused_backward:
    base = dataclasses.replace(base, attention_deterministic=False)
  opt = OptimizerConfig.from_dict(cfg.optimizer.to_dict())
  rows = []
  remats = args.remat.split(",") if args.remat else [base.remat]
  tries = [(r, b) for r in remats for b in batches]
  for label in args.attention.split(","):
    kind, _, impl = label.partition("@")
    for remat, b in tries:
      model = dataclasses.replace(base.with_attention(kind), remat=remat)
      if impl:
        model = dataclasses.replace(model, attention_impl=impl)
      try:
        row = bench_one(
          model,
          opt,
          b,
          args.seq_len,
          args.steps,
          args.warmup,
          kernel_repeats=args.kernel_times,
          init_on=args.init_on,
          microbatches=args.microbatches,
        )
      except Exception as e:  # does not fit (or fails): record it, try the next setting
        rows.append({"attention": label, "remat": remat, "batch_size": b, "error": repr(e)[:500]})
        print(f"{label} remat={remat} B={b}: failed: {repr(e)[:200]}", flush=True)
        if not _out_of_memory(e):
          traceback.print_exc()
        _report(args, argv, base, rows)
        continue
      row.update(attention=label, remat=remat, params=model.num_params())
      rows.append(row)
      print(json.dumps(row), flush=True)
      _report(args, argv, base, rows)
      break
  return _report(args, argv, base, rows)


def _report(args, argv, base: ModelConfig, rows: list[dict]) -> dict:
  """Prints the ratio and writes ``<out-dir>/bench_train_*.{json,md}`` (after every row, so a
  run cut short keeps what it measured)."""
  ok = {r["attention"]: r for r in rows if "error" not in r}
  ratios = {
    label: r["tokens_per_s"] / ok["softmax"]["tokens_per_s"]
    for label, r in ok.items()
    if label != "softmax" and "softmax" in ok
  }
  ratio = ratios.get("parallax")
  record = {
    "what": f"train step tokens/s and MFU, {args.config}, seq_len {args.seq_len}",
    **run_info("experiments.bench_train", argv),
    "model": dataclasses.asdict(base),
    "parallax_over_softmax_tokens_per_s": ratio,
    "over_softmax_tokens_per_s": ratios,
    "rows": rows,
  }
  print(json.dumps({"over_softmax_tokens_per_s": ratios}), flush=True)
  if not args.out_dir:
    return record
  if args.stem is None:  # the run's own files, chosen once: never an earlier run's
    layers = f"_{args.layers}layers" if args.layers else ""
    name = f"bench_train_{Path(args.config).stem}{layers}_{datetime.date.today().isoformat()}"
    args.stem = result_files.new_stem(args.out_dir, name)
  m = base
  lines = [
    f"# {record['what']}",
    "",
    f"- date: {record['date']}; device: {record['device']}; jax {record['jax']}",
    f"- command: `{record['command']}`",
    f"- model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads}/{m.num_kv_heads} heads "
    f"of {m.head_dim}, MLP {m.mlp_dim}, vocab {m.vocab_size}, logits_chunk {m.logits_chunk}; "
    "random tokens, no packing; memory = the compiled step's (arguments + outputs + "
    "temporaries, donated outputs counted once)",
    "",
    f"| attention | remat | batch | step (s) | tokens/s | {MODEL_TFLOPS_HEADER} | {MFU_HEADER} "
    "| memory (GiB) | lower + XLA compile + state init (s) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['attention']} | {r['remat']} | {r['batch_size']} | "
        f"not run: {r['error'][:70]} | | | | | |"
      )
      continue
    mem = f"{r['compiled_bytes'] / 2**30:.1f}" if r.get("compiled_bytes") else "-"
    mfu_text = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    lower_s = r.get("lower_s")
    comp = f"{lower_s:.0f} + {r['compile_s'] - lower_s:.0f}" if lower_s is not None else "-"
    comp += f" + {r['init_s']:.0f}" if r.get("init_s") is not None else ""
    pieces = r.get("microbatches", 1)
    batch = f"{r['batch_size']}" + (f" in {pieces}" if pieces > 1 else "")
    lines.append(
      f"| {r['attention']} | {r['remat']} | {batch} | {r['step_time_s']:.3f} | "
      f"{r['tokens_per_s']:.0f} | {r['tflops_per_s']:.0f} | {mfu_text} | {mem} | {comp} |"
    )
  for label, value in ratios.items():
    lines += ["", f"{label} / softmax tokens/s: {value:.3f}"]
  lines += _kernel_lines([r for r in rows if r.get("kernel_ms_by_category")])
  result_files.write(args.stem, record, "\n".join(lines))
  return record


def _kernel_lines(rows: list[dict]) -> list[str]:
  """The markdown of ``--kernel-times``: device ms per step by category, then each row's
  largest kernels."""
  if not rows:
    return []
  lines = [
    "",
    "Device time per step by kernel category, ms (a profiler trace; kernels on every stream "
    "summed, so overlapping streams can add up to more than the step):",
    "",
    "| attention | " + " | ".join(KERNEL_CATEGORIES) + " | sum | step |",
    "|---|" + "---:|" * (len(KERNEL_CATEGORIES) + 2),
  ]
  for r in rows:
    cats = r["kernel_ms_by_category"]
    cells = [f"{cats[c]:.1f}" for c in KERNEL_CATEGORIES]
    lines.append(
      f"| {r['attention']} | {' | '.join(cells)} | {sum(cats.values()):.1f} | "
      f"{1e3 * r['step_time_s']:.1f} |"
    )
  for r in rows:
    lines += ["", f"Largest kernels, {r['attention']} (us per step):", ""]
    lines += [f"- `{name[:90]}`: {us:.0f}" for name, us in r["top_kernels_us"].items()]
  return lines


if __name__ == "__main__":
  main()
