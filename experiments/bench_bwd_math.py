"""The Mosaic GPU backward's tile math, its variants side by side in one run.

``pallas_kernels.mosaic_gpu.backward.parallax_bwd(pack_row_constants=...)``: the tile math
combines two row statistics with the tiles, ``1 + bart`` and ``dO.barv - dO.o``. Both kernels
receive the statistics already broadcast to the tile, so forming the combinations in the kernel
costs a float32 operation per element of every tile; ``backward.prepare`` now forms them once
per row in XLA instead (the default; the same operations, so the same bits: tested). The forward
gained 8-9% from a similar trim of its per-tile vector work (``bench_fwd_math``, docs/design.md
§5.6). For each (B, L) this times both: the backward's Parallax kernels (dq/dr and dk/dv; the
XLA ``prepare`` fusions are in each row's ``kernels_us``) and the median wall time per call, on
residuals of the Mosaic forward and a random cotangent. The other variants time the register
split between producer and consumers and the fused backward's shapes
(``experiments/kernel_registers.py`` gives their registers and spills).

  python3 experiments/bench_bwd_math.py --shapes 4x4096,2x8192,8x2048,1x16384 --out-dir $OUT
  python experiments/bench_bwd_math.py --interpret --shapes 1x128 --heads 2 --head-dim 64
Writes ``<out-dir>/bench_bwd_math_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments.bench_fwd_math import run_variants  # noqa: E402
from pallas_kernels.mosaic_gpu import backward, forward  # noqa: E402
from parallax_jax.attention.masking import MaskSpec  # noqa: E402

VARIANTS = {  # name -> parallax_bwd keywords; the first is the baseline of the table's ratios
  # The row packing, at the register split it was measured with (producer 40). Every variant
  # named before session 21 pins stack_qr=False: that was its dk/dv kernel when timed.
  "in_kernel": {"pack_row_constants": False, "producer_registers": 40, "stack_qr": False},
  "packed": {"pack_row_constants": True, "producer_registers": 40, "stack_qr": False},
  # The register split: the TMA producers at 24 registers, the consumers at 240 (not 232); the
  # default since 2026-12-04 (session 19).
  "packed_producer24": {"pack_row_constants": True, "producer_registers": 24, "stack_qr": False},
  # The fused backward (one dk/dv kernel adding dq/dr by TMA reductions; docs/design.md §5.5),
  # with its [D, block_q] dq/dr parts whole or in two row chunks, at either register split.
  "fused": {"fused": True, "producer_registers": 40, "fused_chunks": 1, "stack_qr": False},
  "fused_producer24": {
    "fused": True,
    "producer_registers": 24,
    "fused_chunks": 1,
    "stack_qr": False,
  },
  "fused_chunks2": {"fused": True, "producer_registers": 40, "fused_chunks": 2, "stack_qr": False},
  "fused_producer24_chunks2": {
    "fused": True,
    "producer_registers": 24,
    "fused_chunks": 2,
    "stack_qr": False,
  },
  # The dk/dv kernel streaming Q and R as one stacked tile: [S^T | T^T] as one wgmma of
  # N = 2 block_q. Session 19's form stacked them by an XLA copy (bench_bwd_math_2026-12-04_161319);
  # since session 20, two TMA copies into one SMEM slot, timed in _181432; the default at
  # D = 128 since session 21 and at D = 64 since session 22 (backward_dkv.default_stack_qr).
  "packed_producer24_stack_qr": {"producer_registers": 24, "stack_qr": True},
  # The ring depth of both kernels at the stacked default (session 22; "stages", read by
  # backward_call): session 10's tile sweep chose 2 slots for kernels that have since changed
  # (producer 24, the packed row constants, the stacked Q/R tile).
  "packed_producer24_stack_qr_s3": {"producer_registers": 24, "stack_qr": True, "stages": 3},
  "packed_producer24_stack_qr_s4": {"producer_registers": 24, "stack_qr": True, "stages": 4},
  "fused_producer24_chunks2_stack_qr": {
    "fused": True,
    "producer_registers": 24,
    "fused_chunks": 2,
    "stack_qr": True,
  },
}


def _call_kwargs(head_dim, length, window, interpret):
  return dict(
    scale=head_dim**-0.5, mask=MaskSpec(length, length, True, window), interpret=interpret
  )


def with_residuals(inputs, head_dim, length, window, interpret):
  """``(q, r, k, v, g, residuals)``: residuals of the Mosaic forward, once per shape for every
  variant (the "xla" forward would materialise [B, H, L, L] scores at long L)."""
  q, r, k, v, g = inputs
  fwd = functools.partial(forward.parallax_fwd, **_call_kwargs(head_dim, length, window, interpret))
  _, res = jax.jit(fwd)(q, r, k, v, None)
  return q, r, k, v, g, res


def backward_call(head_dim, length, window, interpret, variant, inputs):
  """``(jitted two-pass backward at the default tiles, causal, with VARIANTS[variant], its
  arguments)`` for ``with_residuals``' inputs (a random cotangent ``g``)."""
  q, r, k, v, g, res = inputs
  kw = {**_call_kwargs(head_dim, length, window, interpret), **VARIANTS[variant]}
  if stages := kw.pop("stages", None):  # both kernels' default tiles with this ring depth
    kw["cfg_dq"], kw["cfg_dkv"] = (
      dataclasses.replace(t, num_stages=stages) for t in backward.default_tiles(head_dim)
    )
  fn = jax.jit(functools.partial(backward.parallax_bwd, **kw))
  return fn, (q, r, k, v, None, res, g)


def main(argv=None):
  return run_variants(
    argv,
    name="bench_bwd_math",
    doc=__doc__,
    variants=VARIANTS,
    build_call=backward_call,
    shape_inputs=with_residuals,
  )


if __name__ == "__main__":
  main()
