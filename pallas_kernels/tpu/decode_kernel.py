"""Split-KV decode kernel (docs/design.md §13.3): one float32 partial state per (row, split).

Grid ``(B, num_splits, steps)``, the key-block axis innermost and "arbitrary". Program
``(b, s)`` folds key blocks ``start[b, s] .. start[b, s] + count[b, s] - 1`` of row ``b`` into
the online state of all ``Hkv`` kv heads and their ``G`` query heads (``Tq`` rows each);
``lengths``, ``start`` and ``count`` are scalar-prefetched so the K/V index map follows each
row's runtime range. Steps past ``count`` repeat the last block index (the pipeline issues no
DMA) and skip the body.

Layouts (the cache is read in place, never transposed, padded or reshaped per call):

* cache ``[B, S, Hkv, D]``: one ``(bk, Hkv, D)`` block per step (last two dims full, Mosaic's
  (8, 128) rule) serves every kv head, read per head as ``ref[:, h, :]`` in a static loop;
  a ragged last block (``bk`` not dividing S) is masked like any junk slot;
* queries ``[B, Hkv, Tq * G, D]``, rows time-major (``row = t * G + g``), so one matmul per kv
  head scores all its query heads and rows;
* outputs ``acc1, acc2 [B, splits, Hkv, Tq * G, D]`` and ``stats [..., Tq * G, 8]`` (lanes 0, 1,
  2: ``m, d1, d2``), float32, merged by ``parallax_jax.decode.partials``.

Junk slots (NaN in the tests; the tail of a ragged last block: NaN in interpret mode, unspecified
on a TPU): ``t`` is zeroed on invisible keys and ``v`` past the row's length before they meet a
zero weight (``0 * NaN = NaN``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import kernel_utils as ku
from pallas_kernels.tpu.layout import STAT_LANES
from parallax_jax.attention import tile_math
from parallax_jax.decode.validation import DecodeSpec


@dataclasses.dataclass(frozen=True)
class _Config:
  spec: DecodeSpec
  bk: int
  num_splits: int


def _query_index(shape, q_len: int, group: int):
  """Query index ``t`` of each time-major row ``t * G + g`` (compares and adds: Mosaic has no
  vector integer division)."""
  row = lax.broadcasted_iota(jnp.int32, shape, 0)
  t = jnp.zeros(shape, jnp.int32)
  for i in range(1, q_len):
    t = t + (row >= i * group).astype(jnp.int32)
  return t


def kv_block(start, count, pair, step):
  """Key block fetched at ``step`` of (row, split) ``pair``: steps past ``count`` repeat the last
  block of the range, so the pipeline issues no DMA for them."""
  return start[pair] + jnp.minimum(step, jnp.maximum(count[pair] - 1, 0))


def _kernel(len_ref, start_ref, count_ref, q_ref, r_ref, k_ref, v_ref, *refs, cfg: _Config):
  acc1_out, acc2_out, stats_out, m_sc, d1_sc, d2_sc, acc1_sc, acc2_sc = refs
  spec, bk = cfg.spec, cfg.bk
  rows = spec.q_len * spec.group
  b, split, step = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  pair = b * cfg.num_splits + split

  @pl.when(step == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, tile_math.NEG_INF, jnp.float32)
    for ref in (d1_sc, d2_sc, acc1_sc, acc2_sc):
      ref[...] = jnp.zeros(ref.shape, jnp.float32)

  @pl.when(step < count_ref[pair])
  def _fold_block():
    length = len_ref[b]
    k0 = (start_ref[pair] + step) * bk  # first key of this block
    keys = k0 + lax.broadcasted_iota(jnp.int32, (rows, bk), 1)
    visible = spec.mask(length).visible(_query_index((rows, bk), spec.q_len, spec.group), keys)
    in_cache = k0 + lax.broadcasted_iota(jnp.int32, (bk, 1), 0) < length
    prec = ku.precision(q_ref.dtype)
    for h in range(spec.num_kv_heads):  # static: one K/V block serves every kv head
      k_h = k_ref[:, h, :]
      v_h = jnp.where(in_cache, v_ref[:, h, :], jnp.zeros((), v_ref.dtype))
      s = spec.scale * ku.dot_nt(q_ref[h], k_h, prec)
      t = jnp.where(visible, ku.dot_nt(r_ref[h], k_h, prec), 0.0)
      old = tile_math.FwdState(
        ku.load_rows(m_sc.at[h]),
        ku.load_rows(d1_sc.at[h]),
        ku.load_rows(d2_sc.at[h]),
        acc1_sc[h],
        acc2_sc[h],
      )
      tile = tile_math.fwd_tile(s, t, visible, old.m)
      pv1 = ku.dot_nn(tile.w.astype(v_h.dtype), v_h, prec)
      pv2c = ku.dot_nn(tile.w2c.astype(v_h.dtype), v_h, prec)
      new = tile_math.fwd_update(old, tile, pv1, pv2c)
      ku.store_rows(m_sc.at[h], new.m)
      ku.store_rows(d1_sc.at[h], new.d1)
      ku.store_rows(d2_sc.at[h], new.d2)
      acc1_sc[h] = new.acc1
      acc2_sc[h] = new.acc2

  @pl.when(step == pl.num_programs(2) - 1)
  def _write_state():
    acc1_out[...] = acc1_sc[...]
    acc2_out[...] = acc2_sc[...]
    lane = lax.broadcasted_iota(jnp.int32, stats_out.shape, 2)
    m, d1, d2 = (ref[:, :, :STAT_LANES] for ref in (m_sc, d1_sc, d2_sc))
    stats_out[...] = jnp.where(lane == 0, m, jnp.where(lane == 1, d1, jnp.where(lane == 2, d2, 0)))


def partial_states(
  q_rows, r_rows, k_cache, v_cache, lengths, start, count, *, spec: DecodeSpec, bk: int, splits: int
) -> tile_math.FwdState:
  """Per-split float32 states ``[B, splits, Hkv, Tq * G]`` (``acc*``: ``[..., D]``).

  Args:
    q_rows, r_rows: ``[B, Hkv, Tq * G, D]`` (time-major rows).
    k_cache, v_cache: ``[B, S, Hkv, D]``.
    lengths: ``[B]`` int32; start, count: ``[B * splits]`` int32, each (row, split)'s first
      key block and number of blocks (empty splits: count 0, start a valid block of the row).
  """
  batch, hkv, rows, d = q_rows.shape
  s_len = k_cache.shape[1]
  n_blocks = pl.cdiv(s_len, bk)
  # Static trip count: a window bounds the blocks any row can touch.
  steps = pl.cdiv(spec.mask(0).max_key_blocks(spec.q_len, bk), splits)

  def kv_index(b, s, j, len_ref, start_ref, count_ref):
    return b, kv_block(start_ref, count_ref, b * splits + s, j), 0, 0

  q_spec = pl.BlockSpec((None, hkv, rows, d), lambda b, s, j, *_: (b, 0, 0, 0))
  kv_spec = pl.BlockSpec((None, bk, hkv, d), kv_index)
  acc_spec = pl.BlockSpec((None, None, hkv, rows, d), lambda b, s, j, *_: (b, s, 0, 0, 0))
  stats_spec = pl.BlockSpec(
    (None, None, hkv, rows, STAT_LANES), lambda b, s, j, *_: (b, s, 0, 0, 0)
  )
  acc_shape = jax.ShapeDtypeStruct((batch, splits, hkv, rows, d), jnp.float32)
  stats_shape = jax.ShapeDtypeStruct((batch, splits, hkv, rows, STAT_LANES), jnp.float32)
  scratch = [pltpu.VMEM((hkv, rows, ku.LANES), jnp.float32) for _ in range(3)]
  scratch += [pltpu.VMEM((hkv, rows, d), jnp.float32) for _ in range(2)]
  operands = (q_rows, r_rows, k_cache, v_cache)

  cfg = _Config(spec=spec, bk=bk, num_splits=splits)
  acc1, acc2, stats = pl.pallas_call(
    functools.partial(_kernel, cfg=cfg),
    out_shape=[acc_shape, acc_shape, stats_shape],
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(batch, splits, steps),
      in_specs=[q_spec, q_spec, kv_spec, kv_spec],
      out_specs=[acc_spec, acc_spec, stats_spec],
      scratch_shapes=scratch,
    ),
    compiler_params=ku.compiler_params(("parallel", "parallel", "arbitrary")),
    cost_estimate=ku.cost_estimate(4, batch * hkv * n_blocks, rows, bk, d, 1, operands),
    interpret=spec.interpret,
    name="parallax_decode_tpu",
  )(lengths, start, count, *operands)
  return tile_math.FwdState(stats[..., 0], stats[..., 1], stats[..., 2], acc1, acc2)
