"""Forward Pallas Triton kernel: one program per (query block, batch, query head).

Q and R tiles are loaded once; the loop streams K/V tiles over three ranges from
``MaskSpec.key_blocks``: left window border (masked), interior (no index mask) and right
border (causal diagonal / key padding, masked). Scores are kept in base 2 (``scale * log2 e`` folded
into the fp32 scores) and the state follows ``tile_math`` (with the re-centred ``W2``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.gpu import common, schedule
from pallas_kernels.gpu.tile_math_base2 import LOG2E, fwd_finalize2, fwd_tile2
from parallax_jax.attention import tile_math
from parallax_jax.attention.block_sizes import Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.residuals import Residuals


def _fwd_kernel(
  *refs, mask: MaskSpec, scale: float, bq: int, bk: int, n_q: int, has_seg: bool, prec
):
  if has_seg:
    q_ref, r_ref, k_ref, v_ref, segq_ref, segk_ref, o_ref, barv_ref, lse_ref, bart_ref = refs
  else:
    q_ref, r_ref, k_ref, v_ref, o_ref, barv_ref, lse_ref, bart_ref = refs
    segq_ref = segk_ref = None
  # Heaviest (latest) causal query blocks first: better tail balance.
  qi = (n_q - 1 - pl.program_id(0)) if mask.causal else pl.program_id(0)
  row0 = qi * bq
  q = q_ref[...]
  r = r_ref[...]
  dtype = q.dtype
  c2 = scale * LOG2E
  rows = row0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  seg_q = segq_ref[...][:, None] if has_seg else None

  def body(kb, state, masked: bool):
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s2 = common.dot_nt(q, k, prec) * c2
    t = common.dot_nt(r, k, prec)
    visible = None
    if has_seg:
      seg_k = segk_ref[pl.ds(start, bk)][None, :]
      visible = seg_q == seg_k
    if masked:
      cols = start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
      vis_idx = mask.visible(rows, cols)
      visible = vis_idx if visible is None else visible & vis_idx
    tile = fwd_tile2(s2, t, visible, state.m)
    pv1 = common.dot(tile.w.astype(dtype), v, prec)
    pv2c = common.dot(tile.w2c.astype(dtype), v, prec)
    return tile_math.fwd_update(state, tile, pv1, pv2c)

  state = tile_math.fwd_init((bq,), q.shape[-1])
  ranges = mask.key_blocks(row0, bq, bk, jnp)
  state = schedule.three_range_loop(ranges, body, state, left_border=mask.window_size is not None)
  res = fwd_finalize2(state)
  o_ref[...] = res.o.astype(o_ref.dtype)
  barv_ref[...] = res.barv.astype(barv_ref.dtype)
  lse_ref[...] = res.lse
  bart_ref[...] = res.bart


def parallax_fwd(
  q,
  r,
  k,
  v,
  segment_ids,
  *,
  scale: float,
  mask: MaskSpec,
  cfg: Tile,
  interpret: bool = False,
):
  """``(o, Residuals)`` for validated inputs (see ``parallax_jax.attention.residuals``)."""
  batch, q_len, hq, d = q.shape
  _, kv_len, hkv, _ = k.shape
  group = hq // hkv
  bq, bk = cfg.block_q, cfg.block_k
  n_q, n_k = pl.cdiv(q_len, bq), pl.cdiv(kv_len, bk)
  tq, tk, dp = n_q * bq, n_k * bk, common.padded_head_dim(d)
  qp, rp = common.pad_seq_dim(q, tq, dp), common.pad_seq_dim(r, tq, dp)
  kp, vp = common.pad_seq_dim(k, tk, dp), common.pad_seq_dim(v, tk, dp)

  def q_map(i, b, h):
    return (b, (n_q - 1 - i) if mask.causal else i, h, 0)

  def row_map(i, b, h):
    return (b, h, (n_q - 1 - i) if mask.causal else i)

  in_specs = [
    pl.BlockSpec((None, bq, None, dp), q_map),
    pl.BlockSpec((None, bq, None, dp), q_map),
    pl.BlockSpec((None, tk, None, dp), lambda i, b, h: (b, 0, h // group, 0)),
    pl.BlockSpec((None, tk, None, dp), lambda i, b, h: (b, 0, h // group, 0)),
  ]
  args = [qp, rp, kp, vp]
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    args += [common.pad_to(seg, 1, tq, -1), common.pad_to(seg, 1, tk, -2)]
    in_specs += [
      pl.BlockSpec((None, bq), lambda i, b, h: (b, (n_q - 1 - i) if mask.causal else i)),
      pl.BlockSpec((None, tk), lambda i, b, h: (b, 0)),
    ]
  out_shape = [
    jax.ShapeDtypeStruct((batch, tq, hq, dp), q.dtype),
    jax.ShapeDtypeStruct((batch, tq, hq, dp), q.dtype),
    jax.ShapeDtypeStruct((batch, hq, tq), jnp.float32),
    jax.ShapeDtypeStruct((batch, hq, tq), jnp.float32),
  ]
  out_specs = [
    pl.BlockSpec((None, bq, None, dp), q_map),
    pl.BlockSpec((None, bq, None, dp), q_map),
    pl.BlockSpec((None, None, bq), row_map),
    pl.BlockSpec((None, None, bq), row_map),
  ]
  kernel = functools.partial(
    _fwd_kernel,
    mask=mask,
    scale=scale,
    bq=bq,
    bk=bk,
    n_q=n_q,
    has_seg=segment_ids is not None,
    prec=common.precision(q.dtype),
  )
  o, barv, lse, bart = pl.pallas_call(
    kernel,
    grid=(n_q, batch, hq),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=common.compiler_params(cfg),
    interpret=interpret,
    name="parallax_fwd",
  )(*args)
  o = o[:, :q_len, :, :d]
  res = Residuals(o=o, barv=barv[:, :q_len, :, :d], lse=lse[..., :q_len], bart=bart[..., :q_len])
  return o, res
