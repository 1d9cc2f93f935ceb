"""Backward of the Mosaic GPU (Hopper) kernels (docs/design.md §5): two warp-specialised
kernels, no atomics.

1. ``backward_dq``: dq/dr, one CTA per (query rows, query head, batch), K/V streamed over the
   key blocks of ``MaskSpec.key_blocks``.
2. ``backward_dkv``: dk/dv, one CTA per (keys, kv head, batch), Q, R, dO and the row
   statistics streamed over the query blocks of ``MaskSpec.query_blocks`` and the GQA group's
   query heads (summed in the kernel).

Both keep their two float32 accumulators in registers (wgmma), stream the other operand through
a TMA ring (``plgpu.emit_pipeline_warp_specialized``: one producer warpgroup, ``wgs`` consumer
warpgroups of 64 rows each) and share the tile algebra of the Triton kernels
(``tile_math_base2.bwd_tile2_rows``). The row statistics ``dO.o`` and ``dO.barv``
(``tile_math.bwd_row_stats``) are computed once here, in XLA, and packed with ``bart`` and
``lse2 = lse log2(e)`` (``+inf`` on empty and padded rows, so their weights are exactly 0) into
one ``[B, Hq, 4, T]`` float32 array, as the four rows the tile math reads
(``backward_common.STATS``: ``lse2``, ``1 + bart``, ``dO.barv - dO.o``, ``dO.barv``): one TMA
per streamed step.

Scope (``check``): bfloat16/float16, head_dim 64 or 128, any GQA ratio, causal, window and
segment-id masks. Sequence lengths are zero-padded to the blocks (no copy when they are
multiples); padded rows and keys are invisible under ``MaskSpec`` and sliced off.

Tiles (``BlockSizes.dq`` / ``.dkv``, ``Tile(block_q, block_k, num_warps=None, num_stages)``):
the dq pass's ``block_q`` and the dk/dv pass's ``block_k`` are a CTA's rows, 64 per consumer
warpgroup (64: one consumer, 128: two); the other block is the streamed tile (32, 64 or 128;
32 halves a consumer's score-tile registers, with a 64-byte swizzle, docs/design.md §5.6);
``num_stages`` is the ring depth (2 to 4). ``default_tiles`` gives two consumers, 32-wide
streamed tiles and two ring slots: the H200 tile sweep (session 10, bf16, D 128, causal) timed
them fastest for both kernels at (4, 4K) and (2, 8K), 1.2-1.3x the 64-wide tiles (tokamax's sm90
heuristic, which spilled at D = 128 with 232 registers per consumer: two float32 accumulators
and three 64-wide score tiles), docs/design.md §5.6.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.gpu.tile_math_base2 import LOG2E
from pallas_kernels.mosaic_gpu import backward_dkv, backward_dq
from pallas_kernels.mosaic_gpu.common import (
  DEFAULT_PRODUCER_REGISTERS,
  DTYPES,
  HEAD_DIMS,
  NAME,
  SMEM_BYTES,
  check_producer_registers,
  check_scope,
  pad_to,
)
from parallax_jax.attention import tile_math
from parallax_jax.attention.block_sizes import Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.residuals import Residuals

STREAM_BLOCKS = (32, 64, 128)
CTA_BLOCKS = (64, 128)  # 64 rows per consumer warpgroup: one or two consumers
STAGES = (2, 3, 4)
DEFAULT_STAGES = 2


def default_tiles(head_dim: int) -> tuple[Tile, Tile]:
  """``(dq, dkv)`` tiles: two consumer warpgroups, 32-wide streamed tiles, two ring slots."""
  del head_dim  # swept at D = 128; at D = 64 they beat the Triton backward by 7-9% unswept
  # (bench_kernels_2026-12-03_181304_d64)
  return Tile(128, 32, None, DEFAULT_STAGES), Tile(32, 128, None, DEFAULT_STAGES)


def check_tiles(
  dq: Tile, dkv: Tile, head_dim: int, has_segment_ids: bool, fused: bool = False
) -> None:
  """Raises NotImplementedError unless ``dq`` and ``dkv`` are tiles these kernels can run at
  this head dim (block rules and the 227 KiB of shared memory of one CTA; ``fused``: the dk/dv
  kernel also stages the dq/dr tiles, and ``dq`` is unused)."""
  dkv_bytes = functools.partial(backward_dkv.smem_bytes, fused=fused)
  for name, tile, cta, stream, smem_bytes in (
    ("dq", dq, "block_q", "block_k", backward_dq.smem_bytes),
    ("dkv", dkv, "block_k", "block_q", dkv_bytes),
  ):
    where = f"implementation={NAME!r} BlockSizes(...).{name}"
    if getattr(tile, cta) not in CTA_BLOCKS:
      raise NotImplementedError(
        f"{where}.{cta} must be 64 or 128 (the CTA's rows, 64 per consumer warpgroup), got "
        f"{getattr(tile, cta)}."
      )
    if getattr(tile, stream) not in STREAM_BLOCKS:
      raise NotImplementedError(
        f"{where}.{stream} (the streamed tile) must be one of {STREAM_BLOCKS}, got "
        f"{getattr(tile, stream)}."
      )
    if tile.num_warps is not None:
      raise NotImplementedError(
        f"{where}.num_warps must be None (the warpgroups follow from {cta}), got {tile.num_warps}."
      )
    if tile.num_stages is not None and tile.num_stages not in STAGES:
      raise NotImplementedError(
        f"{where}.num_stages (ring depth) must be 2, 3, 4 or None, got {tile.num_stages}."
      )
    stages = tile.num_stages or DEFAULT_STAGES
    need = smem_bytes(head_dim, tile.block_q, tile.block_k, stages, has_segment_ids)
    if need > SMEM_BYTES:
      raise NotImplementedError(
        f"{where}={tile} needs {need} bytes of shared memory at head_dim {head_dim}, more than "
        f"the {SMEM_BYTES} a CTA may use: use fewer stages or smaller blocks."
      )


def check(spec) -> None:
  """Raises NotImplementedError (saying why and what to use) for calls out of scope."""
  check_scope(spec)
  if spec.block_sizes is not None:
    bs = spec.block_sizes
    check_tiles(bs.dq, bs.dkv, spec.head_dim, spec.has_segment_ids, not spec.deterministic)


def prepare(
  q,
  r,
  k,
  v,
  segment_ids,
  residuals: Residuals,
  do,
  *,
  multiple_q: int,
  multiple_k: int,
  pack_row_constants: bool = True,
):
  """The kernels' operands ``(q, r, do, stats, k, v, segq, segk)``: sequence axes zero-padded to
  ``multiple_q`` / ``multiple_k``, ``do`` and ``r`` in q's dtype, ``stats [B, Hq, 4, Tq]``
  float32 = ``backward_common.STATS`` (``lse2``, ``1 + bart``, ``dO.barv - dO.o``, ``dO.barv``) with
  ``lse2 = +inf`` on empty and padded rows, segment ids int32 padded with -1 (rows) / -2
  (keys), or None. ``pack_row_constants=False``: (``lse2``, ``bart``, ``dO.o``, ``dO.barv``),
  the earlier packing, whose combinations the kernels then form per element."""
  dtype = q.dtype
  do = do.astype(dtype)
  # The barrier keeps the reductions (over D, the minor axis) out of the stack's fusion below.
  # Without it XLA on the H200 spent ~280 us on a concatenate fusion of this 4 x [B, Hq, Tq]
  # float32 result at B * Tq = 16K, H = 16 (bench_kernels_2026-12-03_122018), the cost of
  # re-reading dO, o and barv with strided loads, against ~40 us for one reduction pass.
  delta_o, b_row = jax.lax.optimization_barrier(
    tile_math.bwd_row_stats(do, residuals.o.astype(dtype), residuals.barv)
  )
  lse = residuals.lse.astype(jnp.float32)
  lse2 = jnp.where(jnp.isfinite(lse), lse * LOG2E, jnp.inf)
  # The tile math's two row combinations (tile_math_base2.bwd_tile2_rows) are formed here, once
  # per row: in the kernels the statistics are broadcast to the tile first, where each would
  # cost an operation per element of every tile.
  bart = residuals.bart.astype(jnp.float32)
  delta_o, b_row = (jnp.swapaxes(x, 1, 2) for x in (delta_o, b_row))
  rows = (1.0 + bart, b_row - delta_o) if pack_row_constants else (bart, delta_o)
  stats = jnp.stack(
    [pad_to(lse2, 2, multiple_q, jnp.inf)] + [pad_to(x, 2, multiple_q) for x in (*rows, b_row)],
    axis=2,
  )
  qp, rp, dop = (pad_to(x, 1, multiple_q) for x in (q, r.astype(dtype), do))
  kp, vp = pad_to(k, 1, multiple_k), pad_to(v, 1, multiple_k)
  segq = segk = None
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    segq, segk = pad_to(seg, 1, multiple_q, -1), pad_to(seg, 1, multiple_k, -2)
  return qp, rp, dop, stats, kp, vp, segq, segk


def parallax_bwd(
  q,
  r,
  k,
  v,
  segment_ids,
  residuals: Residuals,
  do,
  *,
  scale: float,
  mask: MaskSpec,
  cfg_dq: Tile | None = None,
  cfg_dkv: Tile | None = None,
  interpret: bool = False,
  cta_order: str = "heads_outer",
  fused: bool = False,
  pack_row_constants: bool = True,
  producer_registers: int = DEFAULT_PRODUCER_REGISTERS,
  fused_chunks: int | None = None,
  stack_qr: bool | None = None,
):
  """``(dq, dr, dk, dv)`` in the input dtypes.

  Args:
    q, r: ``[B, Tq, Hq, D]``; k, v: ``[B, Tk, Hkv, D]``; bfloat16 or float16, D 64 or 128.
    segment_ids: ``[B, T]`` ints or None.
    residuals: the forward's ``Residuals`` (any path's: the contract is shared).
    do: ``[B, Tq, Hq, D]`` upstream gradient (cast to q's dtype).
    scale, mask: the call's score scale and ``MaskSpec``.
    cfg_dq, cfg_dkv: the passes' tiles (``check_tiles``); None: ``default_tiles``.
    interpret: run in the Mosaic GPU interpreter (CPU tests).
    cta_order: the order both kernels issue their CTAs in (``common.cta_grid``).
    fused: one dk/dv kernel that also adds dq/dr by TMA reductions (docs/design.md §5.5):
      8 matmuls per visible pair instead of 11, the sums' order varying between runs.
    pack_row_constants: form the tile math's row combinations ``1 + bart`` and
      ``dO.barv - dO.o`` once per row in XLA (``prepare``), not per element of every tile in
      the kernels; the same float32 operations, so the same bits (tested). False: the earlier
      kernels, kept to time the two side by side (``experiments/bench_bwd_math.py``).
    producer_registers: registers per thread of both kernels' TMA producer warpgroups
      (``common.PRODUCER_REGISTERS``); their consumers share the rest.
    fused_chunks: the fused kernel forms its ``[D, block_q]`` dq/dr parts in this many row
      chunks (``backward_dkv.dk_dv``); None: ``backward_dkv.default_fused_chunks``.
    stack_qr: the dk/dv kernel streams Q and R as one stacked tile (``backward_dkv.dk_dv``);
      None: ``backward_dkv.default_stack_qr`` (stacked, measured faster at D = 64 and 128).
  """
  q_len, d = q.shape[1], q.shape[3]
  kv_len = k.shape[1]
  check_producer_registers(producer_registers)
  if str(q.dtype) not in DTYPES or d not in HEAD_DIMS:
    raise NotImplementedError(
      f"implementation={NAME!r} takes bfloat16/float16 with head_dim 64 or 128, got "
      f"{q.dtype} with head_dim {d}."
    )
  default_dq, default_dkv = default_tiles(d)
  cfg_dq, cfg_dkv = cfg_dq or default_dq, cfg_dkv or default_dkv
  check_tiles(cfg_dq, cfg_dkv, d, segment_ids is not None, fused)
  # Blocks are 64 or 128: the larger one is a multiple of both.
  args = prepare(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    do,
    multiple_q=max(cfg_dq.block_q, cfg_dkv.block_q),
    multiple_k=max(cfg_dq.block_k, cfg_dkv.block_k),
    pack_row_constants=pack_row_constants,
  )
  common = dict(
    scale=scale,
    mask=mask,
    interpret=interpret,
    cta_order=cta_order,
    pack_row_constants=pack_row_constants,
    producer_registers=producer_registers,
  )
  dkv = dict(
    block_q=cfg_dkv.block_q,
    block_k=cfg_dkv.block_k,
    stages=cfg_dkv.num_stages or DEFAULT_STAGES,
    stack_qr=stack_qr,
  )
  if fused:
    dk, dv, dq, dr = backward_dkv.dk_dv(
      *args, fused=True, fused_chunks=fused_chunks, **dkv, **common
    )
    dq, dr = dq.astype(q.dtype), dr.astype(r.dtype)
    return dq[:, :q_len], dr[:, :q_len], dk[:, :kv_len], dv[:, :kv_len]
  dq, dr = backward_dq.dq_dr(
    *args,
    block_q=cfg_dq.block_q,
    block_k=cfg_dq.block_k,
    stages=cfg_dq.num_stages or DEFAULT_STAGES,
    **common,
  )
  dk, dv = backward_dkv.dk_dv(*args, **dkv, **common)
  return dq[:, :q_len], dr[:, :q_len].astype(r.dtype), dk[:, :kv_len], dv[:, :kv_len]
