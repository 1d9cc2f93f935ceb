"""dk/dv kernel: grid over key tiles; the G query heads of the group and the query blocks are
the two innermost "arbitrary" axes (docs/design.md §5.2, §5.4).

Grid ``(B, Hkv, nK, G, steps)``. ``dk`` and ``dv`` of a kv head accumulate in f32 VMEM scratch
over every query head of its group and every query block that sees the key block
(``schedule.q_schedule``), and are written once per kv head: no per-query-head buffers.
The tile is computed query-rows-major (``[bq, bk]``, like the forward) so ``tile_math.bwd_tile``
applies unchanged; its three outputs are transposed for the ``[bk, bq] @ [bq, Dp]`` products.
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
  dk_ref, dv_ref, dk_sc, dv_sc = refs
  k_block, head, step = pl.program_id(2), pl.program_id(3), pl.program_id(4)
  q_block = schedule.inner_block(first_ref, count_ref, k_block, step)
  run = step < count_ref[k_block]

  @pl.when((head == 0) & (step == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def update(masked: bool):
    prec = ku.precision(q_ref.dtype)
    q, r, do = q_ref[...], r_ref[...], do_ref[...]
    k, v = k_ref[...], v_ref[...]
    s = cfg.scale * ku.dot_nt(q, k, prec)
    t = ku.dot_nt(r, k, prec)
    a = ku.dot_nt(do, v, prec)
    visible = True
    if masked:
      q_seg = k_seg = None
      if cfg.has_segments:
        q_seg, k_seg = q_seg_ref[0][:, None], k_seg_ref[...]
      visible = schedule.tile_visible(cfg.mask, q_block, k_block, cfg.bq, cfg.bk, q_seg, k_seg)
    lse, bart, delta_o, b = (stats_ref[i] for i in range(4))
    tile = tile_math.bwd_tile(s, t, visible, lse, bart, a, delta_o, b)
    gl_t = (cfg.scale * tile.gl).T.astype(q.dtype)
    dk_sc[...] += ku.dot_nn(gl_t, q, prec) + ku.dot_nn(tile.gu.T.astype(r.dtype), r, prec)
    dv_sc[...] += ku.dot_nn(tile.pw.T.astype(do.dtype), do, prec)

  schedule.run_tile(update, run, cfg.mask, q_block, k_block, cfg.bq, cfg.bk, cfg.has_segments)

  @pl.when((head == pl.num_programs(3) - 1) & (step == pl.num_programs(4) - 1))
  def _finalize():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def dk_dv(
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
  """Heads-major inputs as for ``backward_dq.dq_dr`` -> ``dk, dv [B, Hkv, Tkp, Dp]``."""
  batch, hq, _, dp = q.shape
  hkv = k.shape[1]
  group = hq // hkv
  sched = schedule.q_schedule(mask, bq, bk)
  n_k = pl.cdiv(mask.kv_len, bk)

  def q_index(b, h, i, g, j, first, count):
    return b, h * group + g, schedule.inner_block(first, count, i, j), 0

  def stats_index(b, h, i, g, j, first, count):
    return b, h * group + g, 0, schedule.inner_block(first, count, i, j)

  q_spec = pl.BlockSpec((None, None, bq, dp), q_index)
  stats_spec = pl.BlockSpec((None, None, stats.shape[2], bq), stats_index)
  kv_spec = pl.BlockSpec((None, None, bk, dp), lambda b, h, i, g, j, *_: (b, h, i, 0))
  operands = [q, r, do, stats, k, v]
  in_specs = [q_spec, q_spec, q_spec, stats_spec, kv_spec, kv_spec]
  if q_seg is not None:
    operands += [q_seg, k_seg]
    in_specs += [
      pl.BlockSpec(
        (None, 1, bq),
        lambda b, h, i, g, j, first, count: (b, 0, schedule.inner_block(first, count, i, j)),
      ),
      pl.BlockSpec((None, 1, bk), lambda b, h, i, g, j, *_: (b, 0, i)),
    ]
  cfg = _Config(mask=mask, scale=scale, bq=bq, bk=bk, has_segments=q_seg is not None)
  return pl.pallas_call(
    functools.partial(_kernel, cfg=cfg),
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, hkv, n_k, group, sched.steps),
      in_specs=in_specs,
      out_specs=[kv_spec, kv_spec],
      scratch_shapes=[pltpu.VMEM((bk, dp), jnp.float32) for _ in range(2)],
    ),
    compiler_params=ku.compiler_params(
      ("parallel", "parallel", "parallel", "arbitrary", "arbitrary")
    ),
    cost_estimate=ku.cost_estimate(6, batch * hq * int(sched.count.sum()), bq, bk, dp, 1, operands),
    interpret=interpret,
    name="parallax_bwd_dk_dv_tpu",
  )(*sched.tables(), *operands)
