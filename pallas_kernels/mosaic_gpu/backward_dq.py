"""The dq/dr kernel of the Mosaic GPU backward (docs/design.md §5.4, first pass).

One CTA per (``wgs x 64`` query rows, query head, batch). ``wgs`` consumer warpgroups each own
64 rows: their Q, R and dO tiles sit in SMEM, their row statistics (``lse2``, ``bart``, ``dO.o``,
``dO.barv``) in registers, ``dq`` and ``dr`` in float32 wgmma accumulators. A producer
warpgroup (``plgpu.emit_pipeline_warp_specialized``) streams the K and V tiles of the CTA's key
blocks through a ring of ``stages`` SMEM slots. Per key tile, each consumer:

* issues ``S = Q K^T``, ``T = R K^T`` (same K tile) and ``A = dO V^T`` as three wgmmas;
* masks ``S`` (MASKED tiles only, ``MaskSpec.visible``; segment ids on every tile);
* computes ``GL``, ``GU`` with ``backward_common.tile_grads`` (the Triton kernel's algebra);
* accumulates ``dq += GL K``, ``dr += GU K`` (register operands, wgmma).

The CTA streams the union of its warpgroups' key ranges (``MaskSpec.key_blocks``); each
warpgroup runs its own FULL tiles unmasked and every other tile of the union masked (a tile it
does not see contributes exactly 0). ``dq`` is scaled once at the end.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu.tile_math_base2 import LOG2E
from pallas_kernels.mosaic_gpu import backward_common as bc
from parallax_jax.attention.masking import MaskSpec, same_segment

ROWS = bc.ROWS


def _kernel(
  *refs,
  mask: MaskSpec,
  scale: float,
  bk: int,
  wgs: int,
  stages: int,
  group: int,
  n_qb: int,
  has_seg: bool,
  ops: bc.BwdOps,
  producer_registers: int,
  pack_row_constants: bool,
):
  if has_seg:
    q_ref, r_ref, do_ref, stats_ref, k_ref, v_ref, segq_ref, segk_ref, *refs = refs
  else:
    q_ref, r_ref, do_ref, stats_ref, k_ref, v_ref, *refs = refs
    segq_ref = segk_ref = None
  dq_ref, dr_ref, q_smem, r_smem, do_smem, tiles_loaded = refs

  b = lax.axis_index("batch")
  h = lax.axis_index("heads")
  qi = lax.axis_index("q")
  if mask.causal:  # heaviest (latest) query blocks first: better tail balance
    qi = n_qb - 1 - qi
  cta_row0 = qi * (wgs * ROWS)
  lo, n_steps = bc.union_range(
    [mask.key_blocks(cta_row0 + w * ROWS, ROWS, bk, jnp) for w in range(wgs)]
  )
  kv_h = lax.div(h, jnp.int32(group))
  dtype = q_ref.dtype
  d = q_ref.shape[-1]
  c2 = scale * LOG2E
  tile = (ROWS, bk)
  wg_state = {}  # per-warpgroup values the compute context hands to the pipeline body

  def compute(pipeline):
    wg = lax.axis_index("wg")
    row0 = cta_row0 + wg * ROWS
    rows_sl = pl.ds(row0, ROWS)
    q_t, r_t, do_t = q_smem.at[wg], r_smem.at[wg], do_smem.at[wg]
    barrier = tiles_loaded.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, rows_sl, h], q_t, barrier)
    plgpu.copy_gmem_to_smem(r_ref.at[b, rows_sl, h], r_t, barrier)
    plgpu.copy_gmem_to_smem(do_ref.at[b, rows_sl, h], do_t, barrier)
    _, safe_lo, safe_hi, _ = mask.key_blocks(row0, ROWS, bk, jnp)
    wg_state.update(
      row0=row0,
      safe=(safe_lo, safe_hi),
      tiles=(q_t, r_t, do_t),
      # bc.STATS of the rows (backward.prepare packs them as stats[B, Hq, 4, T]).
      stats=tuple(ops.load(stats_ref.at[b, h, j, rows_sl], bc.ROW) for j in range(4)),
      seg_q=ops.load(segq_ref.at[b, rows_sl], bc.ROW) if has_seg else None,
    )
    plgpu.barrier_wait(barrier)
    zeros = ops.layout(jnp.zeros((ROWS, d), jnp.float32))
    dq, dr = pipeline((zeros, zeros))
    # Every wgmma reading Q and R has been waited for: stage dq and dr in their SMEM tiles.
    q_t[...] = (dq * scale).astype(dtype)
    r_t[...] = dr.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_t, dq_ref.at[b, rows_sl, h], commit_group=False)
    plgpu.copy_smem_to_gmem(r_t, dr_ref.at[b, rows_sl, h], commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    plgpu.wait_smem_to_gmem(0)

  def body(idx, k_t, v_t, *rest):
    *segk, (dq, dr) = rest
    kb = lo + idx[0]
    q_t, r_t, do_t = wg_state["tiles"]
    s, t, a = ops.matmuls_nt(((q_t, k_t), (r_t, k_t), (do_t, v_t)), tile)
    s2 = s * c2
    safe_lo, safe_hi = wg_state["safe"]
    row0 = wg_state["row0"]

    def visible():
      return mask.visible(row0 + ops.iota(tile, 0), kb * bk + ops.iota(tile, 1))

    s2 = bc.mask_scores(s2, masked=(kb < safe_lo) | (kb >= safe_hi), visible_fn=visible)

    def rows(x):
      return lax.broadcast_in_dim(x, tile, [0])

    if has_seg:
      seg_k = lax.broadcast_in_dim(ops.load(segk[0], bc.COL), tile, [1])
      s2 = jnp.where(same_segment(rows(wg_state["seg_q"]), seg_k), s2, bc.NEG_INF)
    gl, gu, _ = bc.tile_grads(s2, t, a, tuple(map(rows, wg_state["stats"])), pack_row_constants)
    return ops.matmuls_acc((dq, dr), ((0, gl.astype(dtype), k_t), (1, gu.astype(dtype), k_t)))

  transforms = bc.tma_transforms(dtype, bc.swizzle_for(bk))
  in_specs = [
    plgpu.BlockSpec((bk, d), lambda i: (lo + i, 0), transforms=transforms),  # K
    plgpu.BlockSpec((bk, d), lambda i: (lo + i, 0), transforms=transforms),  # V
  ]
  gmem = [k_ref.at[b, :, kv_h, :], v_ref.at[b, :, kv_h, :]]
  if has_seg:
    in_specs.append(plgpu.BlockSpec((bk,), lambda i: (lo + i,)))
    gmem.append(segk_ref.at[b])
  plgpu.emit_pipeline_warp_specialized(
    body,
    grid=(n_steps,),
    memory_registers=producer_registers,
    in_specs=in_specs,
    max_concurrent_steps=stages,
    wg_axis="wg",
    num_compute_wgs=wgs,
    compute_context=compute,
  )(*gmem)


def smem_bytes(head_dim: int, block_q: int, block_k: int, stages: int, has_seg: bool) -> int:
  """Shared memory of one CTA (half-precision tiles): Q, R, dO per consumer + the K/V ring."""
  fixed = 3 * (block_q // ROWS) * ROWS * head_dim * 2
  per_stage = 2 * block_k * head_dim * 2 + (4 * block_k if has_seg else 0)
  return fixed + stages * per_stage


def dq_dr(
  q,
  r,
  do,
  stats,
  k,
  v,
  segq,
  segk,
  *,
  scale,
  mask,
  block_q,
  block_k,
  stages,
  interpret,
  cta_order="heads_outer",
  producer_registers=bc.DEFAULT_PRODUCER_REGISTERS,
  pack_row_constants=True,
):
  """``(dq, dr)`` of padded inputs (``backward.parallax_bwd`` prepares them).

  Args:
    q, r, do: ``[B, Tq, Hq, D]`` input dtype, Tq a multiple of ``block_q``.
    stats: ``[B, Hq, 4, Tq]`` float32, the rows ``backward_common.STATS``: ``lse2`` (+inf on
      empty/padded rows), ``1 + bart``, ``dO.barv - dO.o``, ``dO.barv``; with
      ``pack_row_constants=False`` the earlier rows (``backward.prepare``).
    k, v: ``[B, Tk, Hkv, D]``, Tk a multiple of ``block_k``.
    segq, segk: ``[B, Tq]`` / ``[B, Tk]`` int32 or None.
    block_q: query rows per CTA (64 per consumer warpgroup); block_k: keys per tile.
    stages: K/V ring slots.
    cta_order: the order CTAs are issued in (``common.cta_grid``).
    producer_registers: registers per thread of the TMA producer warpgroup; the consumers
      share the rest (``common.consumer_registers``).
    pack_row_constants: ``stats`` holds ``backward_common.STATS`` (else the earlier rows).
  """
  batch, tq, hq, d = q.shape
  hkv = k.shape[2]
  wgs = block_q // ROWS
  n_qb = tq // block_q
  has_seg = segq is not None
  args = [q, r, do, stats, k, v] + ([segq, segk] if has_seg else [])
  kernel = functools.partial(
    _kernel,
    mask=mask,
    scale=scale,
    bk=block_k,
    wgs=wgs,
    stages=stages,
    group=hq // hkv,
    n_qb=n_qb,
    has_seg=has_seg,
    ops=bc.BwdOps(interpret),
    producer_registers=producer_registers,
    pack_row_constants=pack_row_constants,
  )
  kernel.__name__ = "parallax_bwd_dq_mgpu"  # the kernel's name in profiles (a partial has none)
  out = jax.ShapeDtypeStruct(q.shape, q.dtype)
  grid, grid_names = bc.cta_grid(n_qb, hq, batch, "q", cta_order)
  swizzle = bc.swizzle_for(block_k)  # one swizzle for every wgmma tile of the kernel
  return plgpu.kernel(
    kernel,
    out_type=[out, out],
    scratch_types=[
      bc.smem((wgs, ROWS, d), q.dtype, swizzle),  # Q rows, then dq
      bc.smem((wgs, ROWS, d), q.dtype, swizzle),  # R rows, then dr
      bc.smem((wgs, ROWS, d), q.dtype, swizzle),  # dO rows
      plgpu.Barrier(num_arrivals=3, num_barriers=wgs),  # Q, R, dO loaded
    ],
    grid=grid,
    grid_names=grid_names,
    num_threads=wgs + 1,
    thread_name="wg",
    compiler_params=bc.compiler_params(),
    interpret=bc.interpret_params(interpret),
  )(*args)
