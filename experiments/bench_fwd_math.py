"""The Mosaic GPU forward's tile math, its variants side by side in one run.

``pallas_kernels.mosaic_gpu.forward.parallax_fwd`` has two switches on its per-tile vector work,
which docs/design.md §5.6 finds the forward short of room for (tensor pipe 56% busy against
cuDNN's 73%): ``fma_scores`` (the row max in raw score units, so each score's exponent is one
FFMA, and ``w (t - c)`` as one FFMA on ``w t``) and ``centre="first"`` (the ``W2`` centre fixed by
the first tile a row sees: no per-tile ``accb`` correction over the accumulator); and the split of
the SM's registers between the producer and the consumers (``producer_registers``). For each
(B, L) this times every variant of ``VARIANTS``: the forward kernel's device time from a profiler
trace (GPU) and the median wall time per call. Accuracy is the GPU grid's
(``pytest -m gpu tests/test_mosaic_gpu_forward.py -k compiled_matches``, configs ``default``
(= ``fma_first``), ``v1``, ``fma_running``).

  python3 experiments/bench_fwd_math.py --shapes 4x4096,2x8192,8x2048,1x16384 --out-dir $OUT
  python experiments/bench_fwd_math.py --interpret --shapes 1x128 --heads 2 --head-dim 64
Writes ``<out-dir>/bench_fwd_math_<date>.json`` and ``.md``.
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
from experiments.bench_cta_order import add_timed_row  # noqa: E402
from pallas_kernels.mosaic_gpu import common, forward  # noqa: E402
from parallax_jax.attention.masking import MaskSpec  # noqa: E402
from parallax_jax.benchmarking import result_files, run_info  # noqa: E402

VARIANTS = {  # name -> parallax_fwd keywords; the first is the baseline of the table's ratios
  # The tile-math variants, at the register split they were measured with (producer 40).
  "v1": {"fma_scores": False, "centre": "running", "producer_registers": 40},
  "fma": {"fma_scores": True, "centre": "running", "producer_registers": 40},
  "fma_first": {"fma_scores": True, "centre": "first", "producer_registers": 40},
  # The same math with the TMA producer at 24 registers, the consumers at 240 (not 232): the
  # default since 2026-12-04 (session 19), at the default tile's ring depth (4 since session 25).
  "fma_first_producer24": {"fma_scores": True, "centre": "first", "producer_registers": 24},
  # The K/V ring's depth (session 22): a slot more gives the TMA producer a tile's more lead over
  # the consumers, who free each slot only when both are done with it (2 slots take 128 KiB of
  # shared memory at D = 128, 3 160 KiB, 4 192 KiB). 4 is the default since session 25; 2 was
  # before.
  "fma_first_producer24_s2": {
    "fma_scores": True,
    "centre": "first",
    "producer_registers": 24,
    "num_stages": 2,
  },
  "fma_first_producer24_s3": {
    "fma_scores": True,
    "centre": "first",
    "producer_registers": 24,
    "num_stages": 3,
  },
  "fma_first_producer24_s4": {
    "fma_scores": True,
    "centre": "first",
    "producer_registers": 24,
    "num_stages": 4,
  },
  # Without the schedule barrier that alternates the two consumers' tensor-core phases (FA3's
  # ping-pong, on since the kernel was written and never timed without it).
  "fma_first_producer24_nosched": {
    "fma_scores": True,
    "centre": "first",
    "producer_registers": 24,
    "schedule_barrier": False,
  },
}


def forward_call(head_dim, length, window, interpret, variant, inputs):
  """``(jitted forward at the default tile, causal, with VARIANTS[variant], its arguments)``."""
  tile = common.default_fwd_tile(head_dim)
  kw = {"num_stages": tile.num_stages, **VARIANTS[variant]}  # a variant may set the ring depth
  fn = jax.jit(
    functools.partial(
      forward.parallax_fwd,
      segment_ids=None,
      scale=head_dim**-0.5,
      mask=MaskSpec(length, length, True, window),
      block_q=tile.block_q,
      block_k=tile.block_k,
      interpret=interpret,
      **kw,
    )
  )
  q, r, k, v, _ = inputs
  return fn, (q, r, k, v)


def main(argv=None):
  return run_variants(
    argv, name="bench_fwd_math", doc=__doc__, variants=VARIANTS, build_call=forward_call
  )


def run_variants(argv, *, name: str, doc: str, variants: dict, build_call, shape_inputs=None):
  """A tile-math bench: for each (B, L) of ``--shapes`` and each variant of ``variants`` (name ->
  keywords), ``build_call(head_dim, length, window, interpret, variant, inputs)`` gives a jitted
  call and its arguments, timed by device time (the Parallax kernels' sum, from a profiler
  trace) and median wall time. ``shape_inputs(inputs, head_dim, length, window, interpret)``,
  if given, extends a shape's random ``(q, r, k, v, g)`` once for all its variants. Writes
  ``<out-dir>/<name>_<date>.{json,md}``."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--shapes", default=bench_kernels.DEFAULT_SHAPES, help="comma list of BxL")
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--window", type=int, default=None)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--variants", default=",".join(variants), help=f"comma list of {list(variants)}")
  p.add_argument("--interpret", action="store_true", help="Mosaic GPU interpreter (CPU smoke)")
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  shapes = bench_kernels.parse_shapes(p, args.shapes)
  chosen = args.variants.split(",")
  if unknown := [v for v in chosen if v not in variants]:
    p.error(f"--variants: unknown {unknown}; choose from {list(variants)}")
  bench_kernels.check_args(p, args, gpu_only="the Mosaic GPU kernels")
  now = datetime.datetime.now()
  keys = ("heads", "head_dim", "window", "dtype", "iters", "interpret")
  command = run_info.command(f"experiments.{name}", argv)
  result = bench_kernels.run_header(
    args, keys, now, command, variants={v: variants[v] for v in chosen}
  )
  result["what"] = name
  stem = result_files.new_stem(args.out_dir, f"{name}_{now.strftime('%Y-%m-%d_%H%M%S')}")
  for batch, length in shapes:
    inputs = bench_kernels.make_inputs(batch, length, args.heads, args.head_dim, args.dtype)
    if shape_inputs is not None:
      inputs = shape_inputs(inputs, args.head_dim, length, args.window, args.interpret)
    for variant in chosen:
      fn, call_args = build_call(
        args.head_dim, length, args.window, args.interpret, variant, inputs
      )
      row = {"B": batch, "L": length, "variant": variant}
      add_timed_row(stem, result, row, fn, call_args, args, to_markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return result


def to_markdown(result: dict) -> str:
  out = [f"# {result.get('what', 'bench_fwd_math')} {result['date']}", ""]
  out += [f"- {k}: {result[k]}" for k in ("device", "versions", "command", "config", "variants")]
  names = list(result["variants"])
  base = names[0]
  out += ["", "Parallax kernels' device time per call, us (ratio: variant / " + base + "):", ""]
  out += _ratio_table(result["rows"], names, "device_us")
  out += ["", "All kernels' device time per call, us (XLA fusions and copies included):", ""]
  out += _ratio_table(result["rows"], names, "device_all_us")
  return "\n".join(out) + "\n"


def _ratio_table(rows: list[dict], names: list[str], key: str) -> list[str]:
  """A markdown table, one line per (B, L): each variant's ``key`` and its ratio to the first
  variant's."""
  base = names[0]
  header = "| B | L | " + " | ".join(names) + " | "
  header += " | ".join(f"{n} / {base}" for n in names[1:]) + " |"
  cells, out = {}, [header, "|---|---|" + "---:|" * (2 * len(names) - 1)]
  for row in rows:
    cells.setdefault((row["B"], row["L"]), {})[row["variant"]] = row.get(key)
  for (b, length), us in cells.items():
    shown = [us.get(n) for n in names]
    ratios = [
      f"{x / shown[0]:.3f}" if x is not None and shown[0] is not None else "-" for x in shown[1:]
    ]
    cols = ["-" if x is None else f"{x:.1f}" for x in shown] + ratios
    out.append(f"| {b} | {length} | " + " | ".join(cols) + " |")
  return out


if __name__ == "__main__":
  main()
