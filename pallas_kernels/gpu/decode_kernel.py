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
partial state per split (``m`` in natural units), merged by ``decode_merge`` (a second
launch) or, with ``Launch.merge_in_kernel``, by the last program of each (row, kv head) in
this launch: every program stores its partial state, then (after a CTA barrier, so the
release below covers every thread's stores) takes a ticket with an acquire-release
``atomic_add`` on the (row, kv head)'s counter; the program that draws ticket ``S - 1`` knows
the other ``S - 1`` states are visible (its acquire also invalidates the SM's L1, and no
program read those lines before), folds them and stores ``o``. No program ever waits on
another, so any grid order and any residency is safe. The counters start at zero in every
call (an XLA memset of ``B * Hkv`` int32).
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
from pallas_kernels.gpu.decode_merge import fold_splits, padded_splits
from pallas_kernels.gpu.decode_rows import Rows
from pallas_kernels.gpu.tile_math_base2 import LN2, LOG2E, fwd_finalize2, fwd_tile2
from parallax_jax.attention import tile_math
from parallax_jax.decode.validation import DecodeSpec


@dataclasses.dataclass(frozen=True)
class Launch:
  """Static launch of one call: key block, split count, Triton parameters."""

  block_k: int
  num_splits: int
  num_warps: int
  num_stages: int
  merge_in_kernel: bool = False  # several splits: the last program merges (no second launch)


def _kernel(q_ref, r_ref, k_ref, v_ref, len_ref, *refs, spec: DecodeSpec, launch: Launch):
  bk, splits = launch.block_k, launch.num_splits
  rows = Rows(spec.q_len, spec.group)
  mp, g_p, d = rows.count, rows.shape[1], spec.head_dim
  n = len_ref[...]  # this row's valid keys (scalar int32)
  n_load = jnp.minimum(n, spec.cache_len)  # traced lengths are unchecked: never read past S

  # Query rows m = tq * g_p + g; padding rows (tq >= Tq or g >= G) load zeros, are never stored.
  q, r = rows.load(q_ref), rows.load(r_ref)
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
    (o_ref,) = refs
    rows.store(o_ref, fwd_finalize2(state).o)
    return
  partial = state._replace(m=state.m * LN2)  # natural units for the merge
  if not launch.merge_in_kernel:
    for ref, x in zip(refs, partial, strict=True):
      rows.store(ref, x)
    return
  _, o_ref, *partial_refs, count_ref = refs  # the counter's input is aliased to count_ref
  split = pl.program_id(2)
  for ref, x in zip(partial_refs, partial, strict=True):
    rows.store(ref, x, (split,))
  if not spec.interpret:  # interpret mode runs programs one after another
    pltriton.debug_barrier()  # every thread's stores precede the release of the ticket
  ticket = pltriton.atomic_add(count_ref, (jnp.int32(0),), jnp.int32(1))

  @pl.when(ticket == splits - 1)
  def _merge():
    merge_rows = rows.unpadded()  # the fold has no dots: only the real rows
    merged = fold_splits(merge_rows, partial_refs, splits, d)
    merge_rows.store(o_ref, tile_math.fwd_finalize(merged).o)


def decode_call(q, r, k_cache, v_cache, lengths, spec: DecodeSpec, launch: Launch):
  """Runs the kernel. One split, or ``launch.merge_in_kernel``: ``o`` ``[B, Tq, Hkv, G, D]``
  in q's dtype. Otherwise the float32 ``tile_math.FwdState`` with a split axis 1 padded to a
  power of two (only the first ``num_splits`` hold states; ``m``,
  ``d1``, ``d2``: ``[B, splits, Tq, Hkv, G]``; ``acc1``, ``acc2``: ``[..., D]``)."""
  b, tq, hq, d = q.shape
  hkv, g, splits = spec.num_kv_heads, spec.group, launch.num_splits
  s_len = k_cache.shape[1]
  q5 = q.reshape(b, tq, hkv, g, d)  # a view: head h * G + g of kv head h
  r5 = r.reshape(b, tq, hkv, g, d)
  q_spec = pl.BlockSpec((None, tq, None, g, d), lambda i, h, s: (i, 0, h, 0, 0))
  kv_spec = pl.BlockSpec((None, s_len, None, d), lambda i, h, s: (i, 0, h, 0))
  in_specs = [q_spec, q_spec, kv_spec, kv_spec, pl.BlockSpec((None,), lambda i, h, s: (i,))]
  args = [q5, r5, k_cache, v_cache, lengths.astype(jnp.int32)]
  o_shape = jax.ShapeDtypeStruct((b, tq, hkv, g, d), q.dtype)
  s_pad = padded_splits(splits)  # splits >= num_splits are never written, never read
  stat = jax.ShapeDtypeStruct((b, s_pad, tq, hkv, g), jnp.float32)
  acc = jax.ShapeDtypeStruct((b, s_pad, tq, hkv, g, d), jnp.float32)
  aliases = {}
  if splits == 1:
    out_shape, out_specs = [o_shape], [q_spec]
  elif not launch.merge_in_kernel:  # one block per split
    stat_spec = pl.BlockSpec((None, None, tq, None, g), lambda i, h, s: (i, s, 0, h, 0))
    acc_spec = pl.BlockSpec((None, None, tq, None, g, d), lambda i, h, s: (i, s, 0, h, 0, 0))
    out_shape = [stat, stat, stat, acc, acc]
    out_specs = [stat_spec, stat_spec, stat_spec, acc_spec, acc_spec]
  else:  # every program of a (row, kv head) sees all its splits' states and its counter
    stat_spec = pl.BlockSpec((None, s_pad, tq, None, g), lambda i, h, s: (i, 0, 0, h, 0))
    acc_spec = pl.BlockSpec((None, s_pad, tq, None, g, d), lambda i, h, s: (i, 0, 0, h, 0, 0))
    count_spec = pl.BlockSpec((None, 1), lambda i, h, s: (i, h))  # a [1] ref: atomics index it
    out_shape = [o_shape, stat, stat, stat, acc, acc, jax.ShapeDtypeStruct((b, hkv), jnp.int32)]
    out_specs = [q_spec, stat_spec, stat_spec, stat_spec, acc_spec, acc_spec, count_spec]
    args.append(jnp.zeros((b, hkv), jnp.int32))
    aliases = {len(args) - 1: len(out_shape) - 1}
    in_specs.append(count_spec)
  out = pl.pallas_call(
    functools.partial(_kernel, spec=spec, launch=launch),
    grid=(b, hkv, splits),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    input_output_aliases=aliases,
    compiler_params=pltriton.CompilerParams(
      num_warps=launch.num_warps, num_stages=launch.num_stages
    ),
    interpret=spec.interpret,
    name="parallax_decode",
  )(*args)
  if splits == 1 or launch.merge_in_kernel:
    return out[0]
  return tile_math.FwdState(*out)
