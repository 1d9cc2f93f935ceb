"""The order the Mosaic GPU kernels issue their CTAs in, both orders side by side in one run.

``pallas_kernels.mosaic_gpu.common.cta_grid`` runs heads outermost ("heads_outer"), so the CTAs
resident at one time share one head's streamed K/V and it stays in L2; the earlier order
("seq_outer") spread them over every head (ncu: 60% L2 hit rate in the forward, docs/design.md
§5.6). For each (B, L) and each kernel (forward, dq/dr pass, dk/dv pass) at its default tile,
this times both orders: the kernel's device time from a profiler trace (GPU) and the median
wall time per call.

  python3 experiments/bench_cta_order.py --shapes 4x4096,2x8192,8x2048,1x16384 --out-dir $OUT
  python experiments/bench_cta_order.py --interpret --shapes 1x128 --heads 2 --head-dim 64
Writes ``<out-dir>/bench_cta_order_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments import bench_kernels  # noqa: E402
from pallas_kernels.mosaic_gpu import backward, backward_dkv, backward_dq, common, forward  # noqa: E402
from parallax_jax.attention.masking import MaskSpec  # noqa: E402
from parallax_jax.benchmarking import result_files, run_info  # noqa: E402
from parallax_jax.benchmarking.kernel_times import kernel_times  # noqa: E402
from parallax_jax.benchmarking.timing import time_call  # noqa: E402


def kernel_calls(batch, length, heads, head_dim, dtype, interpret):
  """``{kernel: (fn(cta_order) -> jitted call, args)}`` at the default tiles, causal."""
  q, r, k, v, g = bench_kernels.make_inputs(batch, length, heads, head_dim, dtype)
  mask, scale = MaskSpec(length, length, True, None), head_dim**-0.5
  fwd_tile = common.default_fwd_tile(head_dim)
  dq_tile, dkv_tile = backward.default_tiles(head_dim)
  # Residuals from the Mosaic forward itself (the contract is path-independent): the "xla"
  # forward would materialise [B, H, L, L] scores, ~70 GB at (1, 16K).
  fwd_default = functools.partial(forward.parallax_fwd, scale=scale, mask=mask, interpret=interpret)
  _, res = jax.jit(fwd_default)(q, r, k, v, None)
  bwd_args = jax.jit(
    functools.partial(
      backward.prepare,
      multiple_q=max(dq_tile.block_q, dkv_tile.block_q),
      multiple_k=max(dq_tile.block_k, dkv_tile.block_k),
    )
  )(q, r, k, v, None, res, g)
  kw = dict(scale=scale, mask=mask, interpret=interpret)

  def fwd(order):
    return jax.jit(
      lambda q, r, k, v: forward.parallax_fwd(
        q,
        r,
        k,
        v,
        None,
        block_q=fwd_tile.block_q,
        block_k=fwd_tile.block_k,
        num_stages=fwd_tile.num_stages,
        cta_order=order,
        **kw,
      )
    )

  def bwd(kernel, tile):
    def build(order):
      return jax.jit(
        functools.partial(
          kernel,
          block_q=tile.block_q,
          block_k=tile.block_k,
          stages=tile.num_stages or backward.DEFAULT_STAGES,
          cta_order=order,
          **kw,
        )
      )

    return build

  return {
    "fwd": (fwd, (q, r, k, v)),
    "dq_dr": (bwd(backward_dq.dq_dr, dq_tile), bwd_args),
    "dk_dv": (bwd(backward_dkv.dk_dv, dkv_tile), bwd_args),
  }


def measure(fn, args, iters: int, interpret: bool) -> dict:
  jax.block_until_ready(fn(*args))  # compile
  # The interpreter has no device plane to trace, and its calls are slow: wall time only.
  device = {} if interpret else kernel_times(fn, args, repeats=iters)
  ours = {name: us for name, us in device.items() if "parallax" in name}
  return {
    "device_us": sum(ours.values()) if ours else None,
    "device_all_us": sum(device.values()) if device else None,  # XLA fusions and copies too
    "kernels_us": device,
    "wall_ms": 1e3 * time_call(fn, args, iters=iters, warmup=0 if interpret else 3).median_s,
  }


def add_timed_row(stem, result: dict, row: dict, fn, call_args, args, markdown_of) -> None:
  """``row`` with ``measure(fn, call_args)`` at ``args.iters`` / ``args.interpret`` (a failure
  is recorded as the row's error), added to ``result`` and its files."""
  row = result_files.measure_row(row, measure, fn, call_args, args.iters, args.interpret)
  result_files.add_row(stem, result, row, markdown_of, hide=("kernels_us",))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default=bench_kernels.DEFAULT_SHAPES, help="comma list of BxL")
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--interpret", action="store_true", help="Mosaic GPU interpreter (CPU smoke)")
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  shapes = bench_kernels.parse_shapes(p, args.shapes)
  bench_kernels.check_args(p, args, gpu_only="the Mosaic GPU kernels")
  now = datetime.datetime.now()
  keys = ("heads", "head_dim", "dtype", "iters", "interpret")
  command = run_info.command("experiments.bench_cta_order", argv)
  result = bench_kernels.run_header(args, keys, now, command)
  stem = result_files.new_stem(args.out_dir, f"bench_cta_order_{now.strftime('%Y-%m-%d_%H%M%S')}")
  for batch, length in shapes:
    calls = kernel_calls(batch, length, args.heads, args.head_dim, args.dtype, args.interpret)
    for kernel, (build, call_args) in calls.items():
      for order in common.CTA_ORDERS:
        row = {"B": batch, "L": length, "kernel": kernel, "cta_order": order}
        add_timed_row(stem, result, row, build(order), call_args, args, to_markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return result


def to_markdown(result: dict) -> str:
  out = [f"# bench_cta_order {result['date']}", ""]
  out += [f"- {k}: {result[k]}" for k in ("device", "versions", "command", "config")]
  out += ["", "| B | L | kernel | " + " | ".join(f"{o} us" for o in common.CTA_ORDERS)]
  out[-1] += " | heads_outer / seq_outer |"
  out.append("|---|---|---|" + "---:|" * (len(common.CTA_ORDERS) + 1))
  cells = {}
  for row in result["rows"]:
    cells.setdefault((row["B"], row["L"], row["kernel"]), {})[row["cta_order"]] = row
  for (b, length, kernel), by_order in cells.items():
    us = [by_order.get(o, {}).get("device_us") for o in common.CTA_ORDERS]
    ratio = f"{us[0] / us[1]:.3f}" if None not in us else "-"
    shown = " | ".join("-" if x is None else f"{x:.1f}" for x in us)
    out.append(f"| {b} | {length} | {kernel} | {shown} | {ratio} |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
