"""Backward Pallas Triton kernels (docs/design.md §5).

The default: two launches, no atomics, deterministic.

1. dq/dr pass, one program per (query block, batch, query head): the prologue computes the row
   statistics ``T = dO.o`` and ``b = dO.barv`` (written out for pass 2), then the loop over key
   blocks (same three ranges as the forward) accumulates ``dq`` and ``dr``.
2. dk/dv pass, one program per (key block, batch, kv head): loops over the G query heads of the
   GQA group and over the query blocks that see the key block (``MaskSpec.query_blocks``:
   causal border, unmasked interior, window border), accumulating dk/dv for the whole group in
   float32. Tiles are computed transposed (``[Bk, Bq]``) so no tile transpose is needed.

``fused=True`` (the op's ``deterministic=False``, docs/design.md §5.5): a row-statistics
kernel, then the dk/dv pass
alone, which also adds each tile's ``GL K`` and ``GU K`` into float32 dq/dr buffers with
atomics: 8 matmuls per visible pair instead of 11 (the dq pass recomputes ``S``, ``T`` and
``dO V^T``). The atomics' order varies from run to run, so dq/dr are not bitwise reproducible.
They are relaxed-order (``relaxed_atomics``): Pallas' own are acquire-release, 5-10x slower here.

``lse2`` (base-2 log-sum-exp) is ``+inf`` on rows that see no key and on padded rows, so their
weights are exactly 0 without a mask.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.gpu import common, schedule
from pallas_kernels.gpu.relaxed_atomics import relaxed_atomic_add
from pallas_kernels.gpu.tile_math_base2 import LOG2E, bwd_tile2
from parallax_jax.attention import tile_math
from parallax_jax.attention.block_sizes import Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.residuals import Residuals


def _dq_kernel(
  *refs, mask: MaskSpec, scale: float, bq: int, bk: int, n_q: int, has_seg: bool, prec
):
  if has_seg:
    (
      q_ref,
      r_ref,
      do_ref,
      o_ref,
      barv_ref,
      lse_ref,
      bart_ref,
      k_ref,
      v_ref,
      segq_ref,
      segk_ref,
      dq_ref,
      dr_ref,
      t_ref,
      b_ref,
    ) = refs
  else:
    (
      q_ref,
      r_ref,
      do_ref,
      o_ref,
      barv_ref,
      lse_ref,
      bart_ref,
      k_ref,
      v_ref,
      dq_ref,
      dr_ref,
      t_ref,
      b_ref,
    ) = refs
    segq_ref = segk_ref = None
  qi = (n_q - 1 - pl.program_id(0)) if mask.causal else pl.program_id(0)
  row0 = qi * bq
  q = q_ref[...]
  r = r_ref[...]
  do = do_ref[...]
  dtype = q.dtype
  delta_o, b_row = tile_math.bwd_row_stats(do, o_ref[...], barv_ref[...])
  t_ref[...] = delta_o
  b_ref[...] = b_row
  lse2 = lse_ref[...][:, None]
  bart = bart_ref[...][:, None]
  b_col = b_row[:, None]
  t_col = delta_o[:, None]
  c2 = scale * LOG2E
  rows = row0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  seg_q = segq_ref[...][:, None] if has_seg else None

  def body(kb, carry, masked: bool):
    dq, dr = carry
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s2 = common.dot_nt(q, k, prec) * c2
    t = common.dot_nt(r, k, prec)
    a = common.dot_nt(do, v, prec)
    visible = None
    if has_seg:
      visible = seg_q == segk_ref[pl.ds(start, bk)][None, :]
    if masked:
      cols = start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
      vis_idx = mask.visible(rows, cols)
      visible = vis_idx if visible is None else visible & vis_idx
    gl, gu, _ = bwd_tile2(s2, t, visible, lse2, bart, a, t_col, b_col)
    dq = dq + common.dot(gl.astype(dtype), k, prec)
    dr = dr + common.dot(gu.astype(dtype), k, prec)
    return dq, dr

  zeros = jnp.zeros(q.shape, jnp.float32)
  ranges = mask.key_blocks(row0, bq, bk, jnp)
  dq, dr = schedule.three_range_loop(
    ranges, body, (zeros, zeros), left_border=mask.window_size is not None
  )
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)
  dr_ref[...] = dr.astype(dr_ref.dtype)


def _row_stats_kernel(do_ref, o_ref, barv_ref, t_ref, b_ref):
  """``T = dO.o`` and ``b = dO.barv`` of one query block (the fused backward's prologue)."""
  t_ref[...], b_ref[...] = tile_math.bwd_row_stats(do_ref[...], o_ref[...], barv_ref[...])


def _dkv_kernel(
  *refs,
  mask: MaskSpec,
  scale: float,
  bq: int,
  bk: int,
  group: int,
  has_seg: bool,
  prec,
  fused: bool = False,
):
  if has_seg:
    (
      q_ref,
      r_ref,
      do_ref,
      lse_ref,
      bart_ref,
      t_ref,
      b_ref,
      k_ref,
      v_ref,
      segq_ref,
      segk_ref,
      *refs,
    ) = refs
  else:
    (q_ref, r_ref, do_ref, lse_ref, bart_ref, t_ref, b_ref, k_ref, v_ref, *refs) = refs
    segq_ref = segk_ref = None
  if fused:  # the zeroed float32 dq/dr inputs are aliased to the last two outputs
    _, _, dk_ref, dv_ref, dq_ref, dr_ref = refs
  else:
    dk_ref, dv_ref = refs
  kb = pl.program_id(0)
  key0 = kb * bk
  k = k_ref[...]
  v = v_ref[...]
  dtype = k.dtype
  c2 = scale * LOG2E
  cols = key0 + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)  # key index of tile row
  seg_k = segk_ref[...][:, None] if has_seg else None

  def body(qb, carry, g, masked: bool):
    dk, dv = carry
    start = pl.multiple_of(qb * bq, bq)
    q = q_ref[pl.ds(start, bq), g, :]
    r = r_ref[pl.ds(start, bq), g, :]
    do = do_ref[pl.ds(start, bq), g, :]
    lse2 = lse_ref[g, pl.ds(start, bq)][None, :]
    bart = bart_ref[g, pl.ds(start, bq)][None, :]
    t_row = t_ref[g, pl.ds(start, bq)][None, :]
    b_row = b_ref[g, pl.ds(start, bq)][None, :]
    s2 = common.dot_nt(k, q, prec) * c2  # [Bk, Bq]
    t = common.dot_nt(k, r, prec)
    a = common.dot_nt(v, do, prec)
    visible = None
    if has_seg:
      visible = seg_k == segq_ref[pl.ds(start, bq)][None, :]
    if masked:
      rows = start + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
      vis_idx = mask.visible(rows, cols)
      visible = vis_idx if visible is None else visible & vis_idx
    gl, gu, pw = bwd_tile2(s2, t, visible, lse2, bart, a, t_row, b_row)
    gl_s, gu = (gl * scale).astype(dtype), gu.astype(dtype)
    dv = dv + common.dot(pw.astype(dtype), do, prec)
    dk = dk + common.dot(gl_s, q, prec)
    dk = dk + common.dot(gu, r, prec)
    if fused:  # this key block's share of dq, dr: [Bq, D] = tile^T K
      rows = (pl.ds(start, bq), jnp.asarray(g, jnp.int32), slice(None))  # g: int when G = 1
      relaxed_atomic_add(dq_ref, rows, common.dot_tn(gl_s, k, prec))
      relaxed_atomic_add(dr_ref, rows, common.dot_tn(gu, k, prec))
    return dk, dv

  ranges = mask.query_blocks(key0, bq, bk, jnp)

  def head(g, carry):  # the causal border comes first in a key block's query range
    return schedule.three_range_loop(ranges, functools.partial(body, g=g), carry, left_border=True)

  zeros = jnp.zeros(k.shape, jnp.float32)
  if group == 1:
    dk, dv = head(0, (zeros, zeros))
  else:
    dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


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
  cfg_dq: Tile,
  cfg_dkv: Tile,
  interpret: bool = False,
  fused: bool = False,
):
  """``(dq, dr, dk, dv)`` in the input dtypes; ``fused``: the atomic single pass."""
  q_len, d = q.shape[1], q.shape[3]
  kv_len = k.shape[1]
  dtype = q.dtype
  # One padding serves both passes (power-of-two blocks: the larger is a multiple of both).
  tq = pl.cdiv(q_len, max(cfg_dq.block_q, cfg_dkv.block_q)) * max(cfg_dq.block_q, cfg_dkv.block_q)
  tk = pl.cdiv(kv_len, max(cfg_dq.block_k, cfg_dkv.block_k)) * max(cfg_dq.block_k, cfg_dkv.block_k)
  dp = common.padded_head_dim(d)
  lse = residuals.lse.astype(jnp.float32)
  lse2 = jnp.where(jnp.isfinite(lse), lse * LOG2E, jnp.inf)
  segq = segk = None
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    segq, segk = common.pad_to(seg, 1, tq, -1), common.pad_to(seg, 1, tk, -2)
  x = _Padded(
    q=common.pad_seq_dim(q, tq, dp),
    r=common.pad_seq_dim(r, tq, dp),
    do=common.pad_seq_dim(do.astype(dtype), tq, dp),
    o=common.pad_seq_dim(residuals.o.astype(dtype), tq, dp),
    barv=common.pad_seq_dim(residuals.barv.astype(dtype), tq, dp),
    k=common.pad_seq_dim(k, tk, dp),
    v=common.pad_seq_dim(v, tk, dp),
    lse2=common.pad_to(lse2, 2, tq, jnp.inf),
    bart=common.pad_to(residuals.bart.astype(jnp.float32), 2, tq),
    segq=segq,
    segk=segk,
  )
  kw = dict(scale=scale, mask=mask, prec=common.precision(dtype), interpret=interpret)

  if fused:  # the row statistics alone; dq/dr come from the dk/dv pass
    t_rows, b_rows = _row_stats_pass(x, cfg_dq, interpret)
  else:
    dq, dr, t_rows, b_rows = _dq_pass(x, cfg_dq, **kw)
  dk, dv, *dqr = _dkv_pass(x, t_rows, b_rows, cfg_dkv, fused=fused, **kw)
  if fused:
    dq, dr = (x.astype(dtype) for x in dqr)
  return (
    dq[:, :q_len, :, :d],
    dr[:, :q_len, :, :d].astype(r.dtype),
    dk[:, :kv_len, :, :d],
    dv[:, :kv_len, :, :d],
  )


class _Padded(NamedTuple):
  """The backward's operands, sequence axes padded to the blocks and D to a power of two:
  ``[B, T, H, D]`` arrays, ``lse2``/``bart`` ``[B, Hq, Tq]`` float32, segment ids or None."""

  q: jax.Array
  r: jax.Array
  do: jax.Array
  o: jax.Array
  barv: jax.Array
  k: jax.Array
  v: jax.Array
  lse2: jax.Array
  bart: jax.Array
  segq: jax.Array | None
  segk: jax.Array | None


def _row_stats_pass(x: _Padded, cfg: Tile, interpret: bool):
  """``(T, b)`` ``[B, Hq, Tq]`` float32: the fused backward's prologue."""
  batch, tq, hq, dp = x.q.shape
  bq = cfg.block_q
  q_spec = pl.BlockSpec((None, bq, None, dp), lambda i, b, h: (b, i, h, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
  return pl.pallas_call(
    _row_stats_kernel,
    grid=(tq // bq, batch, hq),
    in_specs=[q_spec] * 3,
    out_specs=[row_spec] * 2,
    out_shape=[jax.ShapeDtypeStruct(x.lse2.shape, jnp.float32)] * 2,
    compiler_params=common.compiler_params(cfg),
    interpret=interpret,
    name="parallax_bwd_row_stats",
  )(x.do, x.o, x.barv)


def _dq_pass(x: _Padded, cfg_dq: Tile, *, scale, mask, prec, interpret):
  """Pass 1: ``(dq, dr, T, b)``."""
  qp, rp, dop, op, barvp, kp, vp, lse2, bart, segq, segk = x
  batch, tq, hq, dp = qp.shape
  tk, hkv = kp.shape[1], kp.shape[2]
  group = hq // hkv
  dtype = qp.dtype
  has_seg = segq is not None
  bq, bk = cfg_dq.block_q, cfg_dq.block_k
  n_q = tq // bq

  def qi(i):
    return (n_q - 1 - i) if mask.causal else i

  q_spec = pl.BlockSpec((None, bq, None, dp), lambda i, b, h: (b, qi(i), h, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, qi(i)))
  kv_spec = pl.BlockSpec((None, tk, None, dp), lambda i, b, h: (b, 0, h // group, 0))
  in_specs = [q_spec] * 5 + [row_spec] * 2 + [kv_spec] * 2
  args = [qp, rp, dop, op, barvp, lse2, bart, kp, vp]
  if has_seg:
    in_specs += [
      pl.BlockSpec((None, bq), lambda i, b, h: (b, qi(i))),
      pl.BlockSpec((None, tk), lambda i, b, h: (b, 0)),
    ]
    args += [segq, segk]
  dq, dr, t_rows, b_rows = pl.pallas_call(
    functools.partial(
      _dq_kernel, mask=mask, scale=scale, bq=bq, bk=bk, n_q=n_q, has_seg=has_seg, prec=prec
    ),
    grid=(n_q, batch, hq),
    in_specs=in_specs,
    out_specs=[q_spec, q_spec, row_spec, row_spec],
    out_shape=[
      jax.ShapeDtypeStruct(qp.shape, dtype),
      jax.ShapeDtypeStruct(qp.shape, dtype),
      jax.ShapeDtypeStruct(lse2.shape, jnp.float32),
      jax.ShapeDtypeStruct(lse2.shape, jnp.float32),
    ],
    compiler_params=common.compiler_params(cfg_dq),
    interpret=interpret,
    name="parallax_bwd_dq",
  )(*args)
  return dq, dr, t_rows, b_rows


def _dkv_pass(x: _Padded, t_rows, b_rows, cfg_dkv: Tile, *, fused, scale, mask, prec, interpret):
  """Pass 2: ``(dk, dv)``, the G query heads of each kv head accumulated in the kernel; fused,
  also ``(dq, dr)`` in float32 (atomic adds into zeroed buffers)."""
  qp, rp, dop, _, _, kp, vp, lse2, bart, segq, segk = x
  batch, tq, hq, dp = qp.shape
  tk, hkv = kp.shape[1], kp.shape[2]
  group = hq // hkv
  has_seg = segq is not None
  bq, bk = cfg_dkv.block_q, cfg_dkv.block_k
  n_k = tk // bk
  qg_spec = pl.BlockSpec((None, tq, group, dp), lambda j, b, h: (b, 0, h, 0))
  rowg_spec = pl.BlockSpec((None, group, tq), lambda j, b, h: (b, h, 0))
  k_spec = pl.BlockSpec((None, bk, None, dp), lambda j, b, h: (b, j, h, 0))
  in_specs = [qg_spec] * 3 + [rowg_spec] * 4 + [k_spec] * 2
  args = [qp, rp, dop, lse2, bart, t_rows, b_rows, kp, vp]
  if has_seg:
    in_specs += [
      pl.BlockSpec((None, tq), lambda j, b, h: (b, 0)),
      pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
    ]
    args += [segq, segk]
  out_specs = [k_spec, k_spec]
  out_shape = [jax.ShapeDtypeStruct(kp.shape, kp.dtype), jax.ShapeDtypeStruct(vp.shape, vp.dtype)]
  aliases = {}
  if fused:  # every program adds into its group's rows: the whole [Tq, G, D] block
    acc = jax.ShapeDtypeStruct(qp.shape, jnp.float32)
    in_specs += [qg_spec] * 2
    args += [jnp.zeros(acc.shape, acc.dtype), jnp.zeros(acc.shape, acc.dtype)]
    out_specs += [qg_spec] * 2
    out_shape += [acc, acc]
    aliases = {len(args) - 2: 2, len(args) - 1: 3}
  return pl.pallas_call(
    functools.partial(
      _dkv_kernel,
      mask=mask,
      scale=scale,
      bq=bq,
      bk=bk,
      group=group,
      has_seg=has_seg,
      prec=prec,
      fused=fused,
    ),
    grid=(n_k, batch, hkv),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    input_output_aliases=aliases,
    compiler_params=common.compiler_params(cfg_dkv),
    interpret=interpret,
    name="parallax_bwd_dkv",
  )(*args)
