"""Forward kernel (docs/design.md §3.1): online Parallax over key blocks, a query tile per program.

Grid ``(B, Hq, nQ, steps)``; the key-block axis is innermost and "arbitrary", the state
``m, d1, d2`` (lane-broadcast ``[bq, 128]``) and ``acc1, acc2`` (``[bq, Dp]``) lives in VMEM
scratch, initialised at step 0 and finalised at the last step. Query head ``h`` reads kv head
``h // G`` through the K/V index map (GQA without repeating K/V). Tiles are visited per the
static schedule (``schedule.kv_schedule``); only border tiles (and, with segment ids, every
tile) compute a mask. All per-tile math is ``tile_math`` (exact W2 re-centering included).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import kernel_utils as ku
from pallas_kernels.tpu import layout, schedule
from parallax_jax.attention import tile_math
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.residuals import Residuals


@dataclasses.dataclass(frozen=True)
class _Config:
  mask: MaskSpec
  scale: float
  bq: int
  bk: int
  has_segments: bool


def _kernel(first_ref, count_ref, q_ref, r_ref, k_ref, v_ref, *refs, cfg: _Config):
  if cfg.has_segments:
    q_seg_ref, k_seg_ref, *refs = refs
  o_ref, barv_ref, stats_ref, m_sc, d1_sc, d2_sc, acc1_sc, acc2_sc = refs
  q_block, step = pl.program_id(2), pl.program_id(3)
  k_block = schedule.inner_block(first_ref, count_ref, q_block, step)
  run = step < count_ref[q_block]

  @pl.when(step == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, tile_math.NEG_INF, jnp.float32)
    d1_sc[...] = jnp.zeros(d1_sc.shape, jnp.float32)
    d2_sc[...] = jnp.zeros(d2_sc.shape, jnp.float32)
    acc1_sc[...] = jnp.zeros(acc1_sc.shape, jnp.float32)
    acc2_sc[...] = jnp.zeros(acc2_sc.shape, jnp.float32)

  def state():
    return tile_math.FwdState(
      ku.load_rows(m_sc), ku.load_rows(d1_sc), ku.load_rows(d2_sc), acc1_sc[...], acc2_sc[...]
    )

  def update(masked: bool):
    prec = ku.precision(q_ref.dtype)
    k, v = k_ref[...], v_ref[...]
    s = cfg.scale * ku.dot_nt(q_ref[...], k, prec)
    t = ku.dot_nt(r_ref[...], k, prec)
    visible = True
    if masked:
      q_seg = k_seg = None
      if cfg.has_segments:
        q_seg, k_seg = q_seg_ref[0][:, None], k_seg_ref[...]
      visible = schedule.tile_visible(cfg.mask, q_block, k_block, cfg.bq, cfg.bk, q_seg, k_seg)
    old = state()
    tile = tile_math.fwd_tile(s, t, visible, old.m)
    pv1 = ku.dot_nn(tile.w.astype(v.dtype), v, prec)
    pv2c = ku.dot_nn(tile.w2c.astype(v.dtype), v, prec)
    new = tile_math.fwd_update(old, tile, pv1, pv2c)
    ku.store_rows(m_sc, new.m)
    ku.store_rows(d1_sc, new.d1)
    ku.store_rows(d2_sc, new.d2)
    acc1_sc[...] = new.acc1
    acc2_sc[...] = new.acc2

  schedule.run_tile(update, run, cfg.mask, q_block, k_block, cfg.bq, cfg.bk, cfg.has_segments)

  @pl.when(step == pl.num_programs(3) - 1)
  def _finalize():
    res = tile_math.fwd_finalize(state())
    o_ref[...] = res.o.astype(o_ref.dtype)
    barv_ref[...] = res.barv.astype(barv_ref.dtype)
    lane = jax.lax.broadcasted_iota(jnp.int32, stats_ref.shape, 1)
    stats_ref[...] = jnp.where(
      lane == 0, res.lse[:, None], jnp.where(lane == 1, res.bart[:, None], 0.0)
    )


def forward(
  q, r, k, v, segment_ids, *, scale: float, mask: MaskSpec, bq: int, bk: int, interpret: bool
) -> tuple[jax.Array, Residuals]:
  """``(o, Residuals)`` of Parallax attention; inputs ``[B, T, H, D]`` as validated by the API."""
  batch, q_len, hq, d = q.shape
  hkv = k.shape[2]
  group = hq // hkv
  dp = layout.head_dim_pad(d)
  q_pad, kv_pad = pl.cdiv(q_len, bq) * bq, pl.cdiv(mask.kv_len, bk) * bk
  sched = schedule.kv_schedule(mask, bq, bk)
  n_q = q_pad // bq

  operands = [layout.to_heads_major(x, q_pad, dp) for x in (q, r)]
  operands += [layout.to_heads_major(x, kv_pad, dp) for x in (k, v)]
  q_spec = pl.BlockSpec((None, None, bq, dp), lambda b, h, i, j, *_: (b, h, i, 0))

  def kv_index(b, h, i, j, first, count):
    return b, schedule.kv_head(h, group), schedule.inner_block(first, count, i, j), 0

  kv_spec = pl.BlockSpec((None, None, bk, dp), kv_index)
  in_specs = [q_spec, q_spec, kv_spec, kv_spec]
  if segment_ids is not None:
    operands += [layout.segments(segment_ids, q_pad), layout.segments(segment_ids, kv_pad)]
    in_specs += [
      pl.BlockSpec((None, 1, bq), lambda b, h, i, j, *_: (b, 0, i)),
      pl.BlockSpec(
        (None, 1, bk),
        lambda b, h, i, j, first, count: (b, 0, schedule.inner_block(first, count, i, j)),
      ),
    ]

  out_shape = [
    jax.ShapeDtypeStruct((batch, hq, q_pad, dp), q.dtype),  # o
    jax.ShapeDtypeStruct((batch, hq, q_pad, dp), q.dtype),  # barv
    jax.ShapeDtypeStruct((batch, hq, q_pad, layout.STAT_LANES), jnp.float32),  # lse, bart
  ]
  out_specs = [
    q_spec,
    q_spec,
    pl.BlockSpec((None, None, bq, layout.STAT_LANES), lambda b, h, i, j, *_: (b, h, i, 0)),
  ]
  scratch = [pltpu.VMEM((bq, ku.LANES), jnp.float32) for _ in range(3)]
  scratch += [pltpu.VMEM((bq, dp), jnp.float32) for _ in range(2)]

  cfg = _Config(mask=mask, scale=scale, bq=bq, bk=bk, has_segments=segment_ids is not None)
  o, barv, stats = pl.pallas_call(
    functools.partial(_kernel, cfg=cfg),
    out_shape=out_shape,
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, hq, n_q, sched.steps),
      in_specs=in_specs,
      out_specs=out_specs,
      scratch_shapes=scratch,
    ),
    compiler_params=ku.compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
    cost_estimate=ku.cost_estimate(4, batch * hq * int(sched.count.sum()), bq, bk, dp, 1, operands),
    interpret=interpret,
    name="parallax_fwd_tpu",
  )(*sched.tables(), *operands)

  o = layout.from_heads_major(o, q_len, d)
  residuals = Residuals(
    o=o,
    barv=layout.from_heads_major(barv, q_len, d),
    lse=stats[:, :, :q_len, 0],
    bart=stats[:, :, :q_len, 1],
  )
  return o, residuals
