"""What it costs to lower a config's train step: tracing and lowering time, module size, and the
attention kernels' copies in the module (custom calls, distinct kernels), for a target platform.

Lowering only: nothing is compiled by XLA or run, so it runs on a CPU host for a CUDA target
(``--platform cuda``). Hopper-only implementations refuse a CPU host before lowering; with
``--lower-anywhere`` their device and platform checks are skipped (the kernels' own shape checks
still run), which is safe because nothing executes.

  python -m experiments.lowering_cost --config configs/lm_0p6b.py --seq-len 4096 \\
      --attention parallax --implementation pallas_mosaic_gpu --platform cuda --lower-anywhere \\
      --out-dir experiments/results
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import subprocess
import time

from parallax_jax.benchmarking import cli_checks, result_files
from parallax_jax.benchmarking.run_info import run_info
from parallax_jax.benchmarking.train_step import benchmark_train_step
from parallax_jax.model import ModelConfig
from parallax_jax.train.optimizer import OptimizerConfig

# custom-call targets of the attention kernels, by kernel family
KERNEL_TARGETS = {
  "mosaic_gpu": r"mosaic_gpu(?:_v2)?",
  "triton": r"__gpu\$xla\.gpu\.triton",
  "tpu_custom_call": r"tpu_custom_call",
}


def _lower_anywhere() -> None:
  """Skips the platform and Hopper checks (lowering only; the kernels' shape checks stay)."""
  from pallas_kernels.mosaic_gpu import common
  from parallax_jax.attention.implementations import Implementation

  Implementation.ensure_supported = lambda self, spec, platform: self.check(spec)
  common.check_device = lambda spec: None


PLATFORMS = ("cuda", "rocm", "tpu", "cpu")  # the lowering platforms jax names


def measure(model: ModelConfig, opt: OptimizerConfig, batch: int, seq_len: int, platform: str):
  step, _, state_shapes, data = benchmark_train_step(model, opt, batch, seq_len)
  t0 = time.perf_counter()
  traced = step.trace(state_shapes, data)
  t1 = time.perf_counter()
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  t2 = time.perf_counter()
  calls, hashes = {}, {}
  for family, target in KERNEL_TARGETS.items():
    found = re.findall(rf"custom_call @({target})\(.*", text)
    if found:
      calls[family] = len(found)
    kernel_hashes = re.findall(rf"custom_call @{target}\(.*?kernel_hash = \"([^\"]*)\"", text)
    if kernel_hashes:
      hashes[family] = len(set(kernel_hashes))
  funcs = collections.Counter(re.findall(r"func\.func private @([A-Za-z_]+?)(?:_\d+)?\(", text))
  return {
    "trace_s": t1 - t0,
    "lower_s": t2 - t1,
    "module_mb": len(text) / 1e6,
    "kernel_custom_calls": calls,
    "distinct_kernels": hashes,
    "attention_functions": {k: v for k, v in funcs.items() if k.startswith("_impl")},
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/lm_0p6b.py")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--layers", default=None, help="comma list of num_layers (default: the config's)")
  p.add_argument("--attention", default="parallax")
  p.add_argument("--implementation", default=None, help="model.attention_impl")
  p.add_argument("--platform", default="cuda", help=f"lowering platform: {', '.join(PLATFORMS)}")
  p.add_argument("--lower-anywhere", action="store_true", help="see the module docstring")
  p.add_argument("--note", default=None)
  p.add_argument("--out-dir", default=None)
  args, overrides = p.parse_known_args(argv)
  cli_checks.attention_impl(p, "--implementation", args.attention, args.implementation)
  cli_checks.at_least(p, args, 1, "seq_len", "batch")
  cli_checks.choice(p, "--platform", args.platform, PLATFORMS)
  layers = cli_checks.positive_ints(p, "--layers", args.layers) if args.layers else None
  if args.lower_anywhere:
    _lower_anywhere()
  cfg = cli_checks.config(p, args.config, overrides)
  base = ModelConfig.from_dict(cfg.model.to_dict())
  base = base.with_attention(args.attention)
  if args.implementation:
    base = dataclasses.replace(base, attention_impl=args.implementation)
  opt = OptimizerConfig.from_dict(cfg.optimizer.to_dict())
  layers = layers or [base.num_layers]
  rows = []
  for n in layers:
    row = {
      "num_layers": n,
      **measure(
        dataclasses.replace(base, num_layers=n), opt, args.batch, args.seq_len, args.platform
      ),
    }
    print(row, flush=True)
    rows.append(row)
  commit = subprocess.run(
    ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
  ).stdout.strip()
  record = {
    **run_info("experiments.lowering_cost", argv),
    "commit": commit,
    "note": args.note,
    "config": args.config,
    "attention": args.attention,
    "implementation": base.attention_impl,
    "platform": args.platform,
    "seq_len": args.seq_len,
    "batch": args.batch,
    "rows": rows,
  }
  if args.out_dir:
    name = f"lowering_cost_{args.attention}_{base.attention_impl}_{args.platform}"
    stem = result_files.new_stem(args.out_dir, f"{name}_{record['date'][:10]}")
    lines = [
      f"# lowering cost: {args.config}, {args.attention} ({base.attention_impl}), target "
      f"{args.platform}",
      "",
      *([f"- note: {args.note}"] if args.note else []),
      f"- date: {record['date']}; host: {record['device']}; jax {record['jax']}; commit {commit}",
      f"- command: `{record['command']}`",
      f"- seq_len {args.seq_len}, batch {args.batch}; lowering only (no XLA compile, nothing runs)",
      "",
      "| layers | trace (s) | lower (s) | module (MB) | kernel custom calls | distinct kernels |",
      "|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
      lines.append(
        f"| {r['num_layers']} | {r['trace_s']:.1f} | {r['lower_s']:.1f} | {r['module_mb']:.1f} | "
        f"{r['kernel_custom_calls']} | {r['distinct_kernels']} |"
      )
    result_files.write(stem, record, "\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md")
  return record


if __name__ == "__main__":
  main()
