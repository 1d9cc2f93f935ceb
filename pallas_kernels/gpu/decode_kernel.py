"""Split-KV decode kernel (Pallas Triton): one program per (row, kv head, split).

A program serves all ``G = Hq / Hkv`` query heads and all ``Tq`` queries of its kv head, so K
and V are read from HBM once per (row, kv head) (docs/design.md §13.3). Its ``M = Tq * G``
query rows are loaded tq-major (row ``m = tq * g_p + g``) straight from q's ``[B, Tq, Hkv, G,
D]`` view with a masked load that pads them to ``Mp = tq_p * g_p >= 16`` (the tensor-core
minimum); nothing is padded or copied outside the kernel, the cache least of all.

The (row, kv head)'s visible key blocks ``[lo, hi)`` follow its runtime length; split ``s``
takes blocks ``[lo + s per, lo + (s + 1) per)``, ``per = cdiv(hi - lo, num_splits)``, in the
three ranges of ``ChunkMask.key_blocks``: interior blocks (every query sees every key, all
keys valid) run without masks; border blocks load K and V masked to the row's valid slots
(``other=0``: junk slots, NaN included, become zeros, so ``t`` and ``v`` stay finite) and mask
the scores with ``ChunkMask.visible``. Scores are base 2 (``scale * log2 e`` folded into the
float32 scores, docs/design.md §3.4) and the state follows ``tile_math``.

Outputs: with one split, the finished ``o`` (``[B, Tq, Hkv, G, D]``); otherwise the float32
partial state per split (``m`` in natural units) for ``decode.partials.merge_splits``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gpu import common, schedule
from pallas_kernels.gpu.block_sizes import pow2_at_least
from pallas_kernels.gpu.tile_math_base2 import LN2, LOG2E, fwd_finalize2, fwd_tile2
from parallax_jax.attention import tile_math
from parallax_jax.decode.validation import DecodeSpec

MIN_ROWS = 16  # tensor-core dots need M >= 16


@dataclasses.dataclass(frozen=True)
class Launch:
  """Static launch of one call: key block, split count, Triton parameters."""

  block_k: int
  num_splits: int
  num_warps: int
  num_stages: int


def row_padding(q_len: int, group: int) -> tuple[int, int]:
  """``(tq_p, g_p)``: powers of two covering ``Tq`` and ``G`` with ``tq_p * g_p >= 16``."""
  tq_p = pow2_at_least(q_len, floor=1)
  g_p = pow2_at_least(group, floor=max(1, MIN_ROWS // tq_p))
  return tq_p, g_p


def _kernel(q_ref, r_ref, k_ref, v_ref, len_ref, *out_refs, spec: DecodeSpec, launch: Launch):
  bk, splits = launch.block_k, launch.num_splits
  tq_p, g_p = row_padding(spec.q_len, spec.group)
  mp, d = tq_p * g_p, spec.head_dim
  n = len_ref[...]  # this row's valid keys (scalar int32)
  n_load = jnp.minimum(n, spec.cache_len)  # traced lengths are unchecked: never read past S

  # Query rows m = tq * g_p + g; padding rows (tq >= Tq or g >= G) load zeros, are never stored.
  tq_idx = lax.broadcasted_iota(jnp.int32, (tq_p, g_p), 0)
  g_idx = lax.broadcasted_iota(jnp.int32, (tq_p, g_p), 1)
  row_ok = (tq_idx < spec.q_len) & (g_idx < spec.group)
  padded_rows = (tq_p, g_p) != (spec.q_len, spec.group)
  rows = pl.ds(0, tq_p), pl.ds(0, g_p), slice(None)

  def load_rows(ref):
    if padded_rows:
      x = pltriton.load(ref.at[rows], mask=row_ok[..., None], other=0)
    else:
      x = ref[...]
    return x.reshape(mp, d)

  def store_rows(ref, x):
    x = x.reshape(tq_p, g_p, *x.shape[1:]).astype(ref.dtype)
    if padded_rows:
      mask = row_ok if x.ndim == 2 else row_ok[..., None]
      pltriton.store(ref.at[rows[: x.ndim]], x, mask=mask)
    else:
      ref[...] = x

  q, r = load_rows(q_ref), load_rows(r_ref)
  dtype = q.dtype
  prec = common.precision(dtype)
  c2 = spec.scale * LOG2E
  mask = spec.mask(n)  # ChunkMask: query row 0 at key n - Tq
  q_row = lax.broadcasted_iota(jnp.int32, (mp, bk), 0) // g_p  # the query (tq) of each row
  key = lax.broadcasted_iota(jnp.int32, (bk, 1), 0)

  def body(kb, state, masked: bool):
    start = pl.multiple_of(kb * bk, bk)
    # Border blocks: slots at or past n (junk, or past the cache end) read as 0. (pltriton.load
    # also for interior blocks: interpret mode traces them even where bk exceeds the cache.)
    valid = ((start + key) < n_load) if masked else None
    k = pltriton.load(k_ref.at[pl.ds(start, bk), :], mask=valid, other=0 if masked else None)
    v = pltriton.load(v_ref.at[pl.ds(start, bk), :], mask=valid, other=0 if masked else None)
    s2 = common.dot_nt(q, k, prec) * c2
    t = common.dot_nt(r, k, prec)
    visible = None
    if masked:
      cols = start + lax.broadcasted_iota(jnp.int32, (mp, bk), 1)
      visible = mask.visible(q_row, cols)
    tile = fwd_tile2(s2, t, visible, state.m)
    pv1 = common.dot(tile.w.astype(dtype), v, prec)
    pv2c = common.dot(tile.w2c.astype(dtype), v, prec)
    return tile_math.fwd_update(state, tile, pv1, pv2c)

  # Key blocks of this (row, kv head): [lo, hi), interior (unmasked) [safe_lo, safe_hi).
  lo, safe_lo, safe_hi, hi = mask.key_blocks(jnp.int32(0), spec.q_len, bk, jnp)
  if splits == 1:
    first, last = lo, hi
  else:
    per = (hi - lo + splits - 1) // splits
    first = jnp.minimum(lo + pl.program_id(2) * per, hi)
    last = jnp.minimum(first + per, hi)
  s_lo = jnp.clip(safe_lo, first, last)
  s_hi = jnp.clip(safe_hi, s_lo, last)
  state = tile_math.fwd_init((mp,), d)
  state = schedule.three_range_loop(
    (first, s_lo, s_hi, last), body, state, left_border=spec.window_size is not None
  )

  if splits == 1:
    (o_ref,) = out_refs
    store_rows(o_ref, fwd_finalize2(state).o)
  else:
    m_ref, d1_ref, d2_ref, acc1_ref, acc2_ref = out_refs
    store_rows(m_ref, state.m * LN2)  # natural units for merge_splits
    store_rows(d1_ref, state.d1)
    store_rows(d2_ref, state.d2)
    store_rows(acc1_ref, state.acc1)
    store_rows(acc2_ref, state.acc2)


def decode_call(q, r, k_cache, v_cache, lengths, spec: DecodeSpec, launch: Launch):
  """Runs the kernel. One split: ``o`` ``[B, Tq, Hkv, G, D]`` in q's dtype. Several: the
  float32 ``tile_math.FwdState`` with a split axis 1 (``m``, ``d1``, ``d2``: ``[B, splits, Tq,
  Hkv, G]``; ``acc1``, ``acc2``: ``[..., D]``)."""
  b, tq, hq, d = q.shape
  hkv, g, splits = spec.num_kv_heads, spec.group, launch.num_splits
  s_len = k_cache.shape[1]
  q5 = q.reshape(b, tq, hkv, g, d)  # a view: head h * G + g of kv head h
  r5 = r.reshape(b, tq, hkv, g, d)
  q_spec = pl.BlockSpec((None, tq, None, g, d), lambda i, h, s: (i, 0, h, 0, 0))
  kv_spec = pl.BlockSpec((None, s_len, None, d), lambda i, h, s: (i, 0, h, 0))
  in_specs = [q_spec, q_spec, kv_spec, kv_spec, pl.BlockSpec((None,), lambda i, h, s: (i,))]
  if splits == 1:
    out_shape = [jax.ShapeDtypeStruct((b, tq, hkv, g, d), q.dtype)]
    out_specs = [q_spec]
  else:
    stat = jax.ShapeDtypeStruct((b, splits, tq, hkv, g), jnp.float32)
    acc = jax.ShapeDtypeStruct((b, splits, tq, hkv, g, d), jnp.float32)
    stat_spec = pl.BlockSpec((None, None, tq, None, g), lambda i, h, s: (i, s, 0, h, 0))
    acc_spec = pl.BlockSpec((None, None, tq, None, g, d), lambda i, h, s: (i, s, 0, h, 0, 0))
    out_shape = [stat, stat, stat, acc, acc]
    out_specs = [stat_spec, stat_spec, stat_spec, acc_spec, acc_spec]
  out = pl.pallas_call(
    functools.partial(_kernel, spec=spec, launch=launch),
    grid=(b, hkv, splits),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=pltriton.CompilerParams(
      num_warps=launch.num_warps, num_stages=launch.num_stages
    ),
    interpret=spec.interpret,
    name="parallax_decode",
  )(q5, r5, k_cache, v_cache, lengths.astype(jnp.int32))
  if splits == 1:
    return out[0]
  return tile_math.FwdState(*out)
