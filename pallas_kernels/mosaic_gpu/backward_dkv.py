"""The dk/dv kernel of the Mosaic GPU backward (docs/design.md §5.4, second pass).

One CTA per (``wgs x 64`` keys, kv head, batch). ``wgs`` consumer warpgroups each own 64 keys:
their K and V tiles sit in SMEM, ``dk`` and ``dv`` in float32 wgmma accumulators. A producer
warpgroup (``plgpu.emit_pipeline_warp_specialized``) streams, for every query block of the CTA's
range and every query head ``g`` of the GQA group, the Q, R, dO tiles and the packed row
statistics ``[4, block_q]`` through a ring of ``stages`` SMEM slots, so the group's heads are
summed in the accumulators (no per-query-head dk/dv). Tiles are computed transposed
(``[keys, queries]``), so no register transpose is needed. Per step, each consumer:

* issues ``S^T = K Q^T``, ``T^T = K R^T`` and ``A^T = V dO^T`` as three wgmmas;
* masks ``S^T`` (MASKED tiles only, ``MaskSpec.visible``; segment ids on every tile);
* computes ``GL``, ``GU``, ``PW`` with ``tile_math_base2.bwd_tile2``;
* accumulates ``dk += (c GL^T) Q + GU^T R`` and ``dv += PW^T dO`` (register operands).

The CTA streams the union of its warpgroups' query ranges (``MaskSpec.query_blocks``); each
warpgroup runs its own FULL tiles unmasked and every other tile of the union masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu.tile_math_base2 import LOG2E, bwd_tile2
from pallas_kernels.mosaic_gpu import backward_common as bc
from parallax_jax.attention.masking import MaskSpec, same_segment

ROWS = bc.ROWS


def _kernel(
  *refs,
  mask: MaskSpec,
  scale: float,
  bq: int,
  wgs: int,
  stages: int,
  group: int,
  has_seg: bool,
  ops: bc.BwdOps,
):
  if has_seg:
    q_ref, r_ref, do_ref, stats_ref, k_ref, v_ref, segq_ref, segk_ref, *refs = refs
  else:
    q_ref, r_ref, do_ref, stats_ref, k_ref, v_ref, *refs = refs
    segq_ref = segk_ref = None
  dk_ref, dv_ref, k_smem, v_smem, tiles_loaded = refs

  b = lax.axis_index("batch")
  hk = lax.axis_index("heads")
  cta_key0 = lax.axis_index("k") * (wgs * ROWS)
  lo, n_qb = bc.union_range(
    [mask.query_blocks(cta_key0 + w * ROWS, bq, ROWS, jnp) for w in range(wgs)]
  )
  dtype = k_ref.dtype
  d = k_ref.shape[-1]
  c2 = scale * LOG2E
  tile = (ROWS, bq)
  wg_state = {}  # per-warpgroup values the compute context hands to the pipeline body

  def compute(pipeline):
    wg = lax.axis_index("wg")
    key0 = cta_key0 + wg * ROWS
    keys_sl = pl.ds(key0, ROWS)
    k_t, v_t = k_smem.at[wg], v_smem.at[wg]
    barrier = tiles_loaded.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[b, keys_sl, hk], k_t, barrier)
    plgpu.copy_gmem_to_smem(v_ref.at[b, keys_sl, hk], v_t, barrier)
    _, safe_lo, safe_hi, _ = mask.query_blocks(key0, bq, ROWS, jnp)
    wg_state.update(
      key0=key0,
      safe=(safe_lo, safe_hi),
      tiles=(k_t, v_t),
      seg_k=ops.load(segk_ref.at[b, keys_sl], bc.ROW) if has_seg else None,
    )
    plgpu.barrier_wait(barrier)
    zeros = ops.layout(jnp.zeros((ROWS, d), jnp.float32))
    dk, dv = pipeline((zeros, zeros))
    # Every wgmma reading K and V has been waited for: stage dk and dv in their SMEM tiles.
    k_t[...] = dk.astype(dtype)
    v_t[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_t, dk_ref.at[b, keys_sl, hk], commit_group=False)
    plgpu.copy_smem_to_gmem(v_t, dv_ref.at[b, keys_sl, hk], commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    plgpu.wait_smem_to_gmem(0)

  def body(idx, q_t, r_t, do_t, stats_t, *rest):
    *segq, (dk, dv) = rest
    qb = lo + idx[0]
    k_t, v_t = wg_state["tiles"]
    s, t, a = ops.matmuls_nt(((k_t, q_t), (k_t, r_t), (v_t, do_t)), tile)  # [keys, queries]
    s2 = s * c2
    safe_lo, safe_hi = wg_state["safe"]
    key0 = wg_state["key0"]

    def visible():
      return mask.visible(qb * bq + ops.iota(tile, 1), key0 + ops.iota(tile, 0))

    s2 = bc.mask_scores(s2, masked=(qb < safe_lo) | (qb >= safe_hi), visible_fn=visible)

    def cols(x):
      return lax.broadcast_in_dim(x, tile, [1])

    if has_seg:
      seg_k = lax.broadcast_in_dim(wg_state["seg_k"], tile, [0])
      s2 = jnp.where(same_segment(cols(ops.load(segq[0], bc.COL)), seg_k), s2, bc.NEG_INF)
    lse2, bart, delta_o, b_row = (cols(ops.load(stats_t.at[j], bc.COL)) for j in range(4))
    gl, gu, pw = bwd_tile2(s2, t, None, lse2, bart, a, delta_o, b_row)
    terms = (
      (0, (gl * scale).astype(dtype), q_t),
      (0, gu.astype(dtype), r_t),
      (1, pw.astype(dtype), do_t),
    )
    return ops.matmuls_acc((dk, dv), terms)

  def q_map(i, g):
    return (lo + i, hk * group + g, 0)

  transforms = bc.tma_transforms(dtype, bc.swizzle_for(bq))
  in_specs = [
    plgpu.BlockSpec((bq, None, d), q_map, transforms=transforms),  # Q
    plgpu.BlockSpec((bq, None, d), q_map, transforms=transforms),  # R
    plgpu.BlockSpec((bq, None, d), q_map, transforms=transforms),  # dO
    plgpu.BlockSpec((None, 4, bq), lambda i, g: (hk * group + g, 0, lo + i)),  # row stats
  ]
  gmem = [q_ref.at[b], r_ref.at[b], do_ref.at[b], stats_ref.at[b]]
  if has_seg:
    in_specs.append(plgpu.BlockSpec((bq,), lambda i, g: (lo + i,)))
    gmem.append(segq_ref.at[b])
  plgpu.emit_pipeline_warp_specialized(
    body,
    grid=(n_qb, group),
    memory_registers=40,
    in_specs=in_specs,
    max_concurrent_steps=stages,
    wg_axis="wg",
    num_compute_wgs=wgs,
    compute_context=compute,
  )(*gmem)


def smem_bytes(head_dim: int, block_q: int, block_k: int, stages: int, has_seg: bool) -> int:
  """Shared memory of one CTA (half-precision tiles): K, V per consumer + the ring of Q, R, dO
  and the four float32 row statistics (+ the query segment ids)."""
  fixed = 2 * (block_k // ROWS) * ROWS * head_dim * 2
  per_stage = 3 * block_q * head_dim * 2 + 4 * block_q * 4 + (4 * block_q if has_seg else 0)
  return fixed + stages * per_stage


def dk_dv(
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
):
  """``(dk, dv)`` of padded inputs (``backward.parallax_bwd`` prepares them), the query heads
  of each GQA group summed in the kernel.

  Args:
    q, r, do: ``[B, Tq, Hq, D]`` input dtype, Tq a multiple of ``block_q``.
    stats: ``[B, Hq, 4, Tq]`` float32 (see ``backward_dq.dq_dr``).
    k, v: ``[B, Tk, Hkv, D]``, Tk a multiple of ``block_k``.
    segq, segk: ``[B, Tq]`` / ``[B, Tk]`` int32 or None.
    block_q: query rows per streamed tile; block_k: keys per CTA (64 per consumer warpgroup).
    stages: ring slots of the streamed tiles.
    cta_order: the order CTAs are issued in (``common.cta_grid``).
  """
  batch, tq, hq, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  wgs = block_k // ROWS
  has_seg = segq is not None
  args = [q, r, do, stats, k, v] + ([segq, segk] if has_seg else [])
  kernel = functools.partial(
    _kernel,
    mask=mask,
    scale=scale,
    bq=block_q,
    wgs=wgs,
    stages=stages,
    group=hq // hkv,
    has_seg=has_seg,
    ops=bc.BwdOps(interpret),
  )
  kernel.__name__ = "parallax_bwd_dkv_mgpu"  # the kernel's name in profiles (a partial has none)
  grid, grid_names = bc.cta_grid(tk // block_k, hkv, batch, "k", cta_order)
  swizzle = bc.swizzle_for(block_q)  # one swizzle for every wgmma tile of the kernel
  return plgpu.kernel(
    kernel,
    out_type=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    scratch_types=[
      bc.smem((wgs, ROWS, d), k.dtype, swizzle),  # K rows, then dk
      bc.smem((wgs, ROWS, d), v.dtype, swizzle),  # V rows, then dv
      plgpu.Barrier(num_arrivals=2, num_barriers=wgs),  # K, V loaded
    ],
    grid=grid,
    grid_names=grid_names,
    num_threads=wgs + 1,
    thread_name="wg",
    compiler_params=bc.compiler_params(),
    interpret=bc.interpret_params(interpret),
  )(*args)
