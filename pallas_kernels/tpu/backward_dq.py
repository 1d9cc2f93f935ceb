"""dq/dr kernel: grid over query tiles, key blocks innermost (docs/design.md §5.2, §5.4).

Grid ``(B, Hq, nQ, steps)`` with the forward's schedule; ``dq`` and ``dr`` accumulate in f32
VMEM scratch and are written at the last key step. Each tile recomputes ``s = c q.k``,
``t = r.k`` and ``a = dO.v`` and applies ``tile_math.bwd_tile`` with the row statistics
``(lse, bart, T = dO.o, b = dO.barv)`` read lane-dense from one ``[4, bq]`` block.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import kernel_utils as ku
from pallas_kernels.tpu import schedule
from parallax_jax.attention import tile_math
from parallax_jax.attention.masking import MaskSpec


@dataclasses.dataclass(frozen=True)
class _Config:
  mask: MaskSpec
  scale: float
  bq: int
  bk: int
  has_segments: bool


def _kernel(
  first_ref, count_ref, q_ref, r_ref, do_ref, stats_ref, k_ref, v_ref, *refs, cfg: _Config
):
  if cfg.has_segments:
    q_seg_ref, k_seg_ref, *refs = refs
  dq_ref, dr_ref, dq_sc, dr_sc = refs
  q_block, step = pl.program_id(2), pl.program_id(3)
  k_block = schedule.inner_block(first_ref, count_ref, q_block, step)
  run = step < count_ref[q_block]

  @pl.when(step == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
    dr_sc[...] = jnp.zeros(dr_sc.shape, jnp.float32)

  def update(masked: bool):
    prec = ku.precision(q_ref.dtype)
    k, v = k_ref[...], v_ref[...]
    s = cfg.scale * ku.dot_nt(q_ref[...], k, prec)
    t = ku.dot_nt(r_ref[...], k, prec)
    a = ku.dot_nt(do_ref[...], v, prec)
    visible = True
    if masked:
      q_seg = k_seg = None
      if cfg.has_segments:
        q_seg, k_seg = q_seg_ref[0][:, None], k_seg_ref[...]
      visible = schedule.tile_visible(cfg.mask, q_block, k_block, cfg.bq, cfg.bk, q_seg, k_seg)
    lse, bart, delta_o, b = (stats_ref[i] for i in range(4))
    tile = tile_math.bwd_tile(s, t, visible, lse, bart, a, delta_o, b)
    dq_sc[...] += ku.dot_nn((cfg.scale * tile.gl).astype(k.dtype), k, prec)
    dr_sc[...] += ku.dot_nn(tile.gu.astype(k.dtype), k, prec)

  schedule.run_tile(update, run, cfg.mask, q_block, k_block, cfg.bq, cfg.bk, cfg.has_segments)

  @pl.when(step == pl.num_programs(3) - 1)
  def _finalize():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)
    dr_ref[...] = dr_sc[...].astype(dr_ref.dtype)


def dq_dr(
  q,
  r,
  do,
  stats,
  k,
  v,
  q_seg,
  k_seg,
  *,
  scale: float,
  mask: MaskSpec,
  bq: int,
  bk: int,
  interpret: bool,
):
  """Heads-major ``q, r, do [B, Hq, Tp, Dp]``, ``stats [B, Hq, 4, Tp]``, ``k, v [B, Hkv, Tkp,
  Dp]`` (T padded to multiples of bq, bk) -> ``dq, dr [B, Hq, Tp, Dp]`` in q's dtype."""
  batch, hq, q_pad, dp = q.shape
  group = hq // k.shape[1]
  sched = schedule.kv_schedule(mask, bq, bk)
  n_q = pl.cdiv(mask.q_len, bq)

  q_spec = pl.BlockSpec((None, None, bq, dp), lambda b, h, i, j, *_: (b, h, i, 0))
  stats_spec = pl.BlockSpec((None, None, stats.shape[2], bq), lambda b, h, i, j, *_: (b, h, 0, i))

  def kv_index(b, h, i, j, first, count):
    return b, schedule.kv_head(h, group), schedule.inner_block(first, count, i, j), 0

  kv_spec = pl.BlockSpec((None, None, bk, dp), kv_index)
  operands = [q, r, do, stats, k, v]
  in_specs = [q_spec, q_spec, q_spec, stats_spec, kv_spec, kv_spec]
  if q_seg is not None:
    operands += [q_seg, k_seg]
    in_specs += [
      pl.BlockSpec((None, 1, bq), lambda b, h, i, j, *_: (b, 0, i)),
      pl.BlockSpec(
        (None, 1, bk),
        lambda b, h, i, j, first, count: (b, 0, schedule.inner_block(first, count, i, j)),
      ),
    ]
  cfg = _Config(mask=mask, scale=scale, bq=bq, bk=bk, has_segments=q_seg is not None)
  return pl.pallas_call(
    functools.partial(_kernel, cfg=cfg),
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(r.shape, r.dtype)],
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, hq, n_q, sched.steps),
      in_specs=in_specs,
      out_specs=[q_spec, q_spec],
      scratch_shapes=[pltpu.VMEM((bq, dp), jnp.float32) for _ in range(2)],
    ),
    compiler_params=ku.compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
    cost_estimate=ku.cost_estimate(5, batch * hq * int(sched.count.sum()), bq, bk, dp, 1, operands),
    interpret=interpret,
    name="parallax_bwd_dq_dr_tpu",
  )(*sched.tables(), *operands)
