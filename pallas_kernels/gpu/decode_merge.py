"""Merge of the split-KV partial states in one Pallas Triton launch (docs/design.md §13.3).

The same exact merge as ``parallax_jax.decode.partials.merge_splits`` + ``finish``, folded a
chunk of splits at a time (``fold_splits``), then ``tile_math.fwd_finalize``. XLA turns the
jnp merge into several small fusions (a max, then the weighted sums, then the finalisation),
each one launch; at decode sizes the launches, not the bytes, are the cost, so the kernel
path merges in one program per (row, kv head, column block).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gpu.block_sizes import pow2_at_least
from pallas_kernels.gpu.decode_rows import Rows
from parallax_jax.attention import tile_math

LOAD_ELEMENTS = 4096  # float32 elements of one [chunk, Mp, width] load: 32 registers a thread


def padded_splits(splits: int) -> int:
  """The split axis of the partial-state buffers: a power of two, so chunks tile it."""
  return pow2_at_least(splits)


def split_chunk(splits: int, rows: Rows, width: int) -> int:
  """Splits folded per step: all of them where ``[S_pad, Mp, width]`` stays within
  ``LOAD_ELEMENTS``, else the largest power of two that does (at least 1)."""
  fit = max(1, LOAD_ELEMENTS // (rows.count * width))
  return min(padded_splits(splits), 1 << (fit.bit_length() - 1))


def fold_splits(rows: Rows, partial_refs, splits: int, width: int) -> tile_math.FwdState:
  """The merged ``tile_math.FwdState`` (``[Mp]`` stats, ``[Mp, width]`` sums) of the partial
  states in ``partial_refs`` = ``(m, d1, d2, acc1, acc2)`` refs with a padded leading split
  axis (``[S_pad, Tq, G]`` and ``[S_pad, Tq, G, width]``; only the first ``splits`` hold
  states).

  Each step loads a chunk of splits at once and merges it exactly (``m* = max_s m_s``, every
  field scaled by ``exp(m_s - m*)`` and summed) into the running state: one memory round trip
  per chunk, not per split (the loads of a split-by-split fold wait on each other). Rows that
  no split saw keep ``m = -inf`` and zero sums."""
  m_ref, d1_ref, d2_ref, acc1_ref, acc2_ref = partial_refs
  chunk = split_chunk(splits, rows, width)

  def step(c, state):
    start = c * chunk

    def load(ref, other=0.0):
      return rows.load_splits(ref, start, chunk, splits, other=other)

    m_s = load(m_ref, tile_math.NEG_INF)  # [chunk, Mp]
    m = jnp.maximum(state.m, jnp.max(m_s, axis=0))
    m_safe = jnp.where(m == tile_math.NEG_INF, 0.0, m)  # all empty: exp(-inf) = 0
    a, b = jnp.exp(state.m - m_safe), jnp.exp(m_s - m_safe)
    return tile_math.FwdState(
      m=m,
      d1=a * state.d1 + jnp.sum(b * load(d1_ref), axis=0),
      d2=a * state.d2 + jnp.sum(b * load(d2_ref), axis=0),
      acc1=a[:, None] * state.acc1 + jnp.sum(b[..., None] * load(acc1_ref), axis=0),
      acc2=a[:, None] * state.acc2 + jnp.sum(b[..., None] * load(acc2_ref), axis=0),
    )

  steps = padded_splits(splits) // chunk
  return lax.fori_loop(0, steps, step, tile_math.fwd_init((rows.count,), width))


def _merge_kernel(*refs, rows: Rows, splits: int, block_d: int):
  *partial_refs, o_ref = refs
  state = fold_splits(rows, partial_refs, splits, block_d)
  rows.store(o_ref, tile_math.fwd_finalize(state).o)


def merge_block_d(splits: int, rows: Rows, head_dim: int) -> int:
  """Columns per merge program: as many as keep every split in one load (``fold_splits``
  then takes one step), between 16 and 64 and at most ``head_dim``."""
  fit = max(1, LOAD_ELEMENTS // (padded_splits(splits) * rows.count))
  return min(head_dim, 64, max(16, 1 << (fit.bit_length() - 1)))


def merge_call(state: tile_math.FwdState, splits: int, dtype, *, interpret: bool):
  """``o`` ``[B, Tq, Hkv, G, D]`` in ``dtype`` from the partial states of ``decode_call``
  (split axis 1, padded; the first ``splits`` are states); grid ``(B, Hkv, D / block_d)``."""
  b, s_pad, tq, hkv, g, d = state.acc1.shape
  rows = Rows(tq, g).unpadded()  # no dots here: only the real rows are loaded and folded
  block_d = merge_block_d(splits, rows, d)
  stat_spec = pl.BlockSpec((None, s_pad, tq, None, g), lambda i, h, c: (i, 0, 0, h, 0))
  acc_spec = pl.BlockSpec((None, s_pad, tq, None, g, block_d), lambda i, h, c: (i, 0, 0, h, 0, c))
  return pl.pallas_call(
    functools.partial(_merge_kernel, rows=rows, splits=splits, block_d=block_d),
    grid=(b, hkv, d // block_d),
    in_specs=[stat_spec, stat_spec, stat_spec, acc_spec, acc_spec],
    out_specs=pl.BlockSpec((None, tq, None, g, block_d), lambda i, h, c: (i, 0, h, 0, c)),
    out_shape=jax.ShapeDtypeStruct((b, tq, hkv, g, d), dtype),
    compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
    interpret=interpret,
    name="parallax_decode_merge",
  )(*state)
