"""Which tiles the kernels visit (static, NumPy) and how each tile is masked (in-kernel).

The grids are rectangular, ``steps = max`` visited blocks; a grid step past a block's count is
skipped with ``pl.when`` and its BlockSpec index is clamped to the last visited block, so the
pipeline sees an unchanged block index and issues no DMA (the splash-attention trick).
Segment ids can only shrink the visible set; they are masked per tile, never scheduled.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from parallax_jax.attention.masking import MaskSpec


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Per outer block, the first inner block and how many consecutive ones hold visible keys.

  ``outer`` is the query block for the forward and dq/dr kernels (inner: key blocks) and the
  key block for the dk/dv kernel (inner: query blocks).
  """

  first: np.ndarray  # [n_outer] int32
  count: np.ndarray  # [n_outer] int32
  steps: int  # grid extent of the inner axis (>= 1)

  def tables(self):
    """Scalar-prefetch operands ``(first, count)``."""
    return jnp.asarray(self.first), jnp.asarray(self.count)


def kv_schedule(mask: MaskSpec, bq: int, bk: int) -> Schedule:
  """Key blocks per query block (forward and dq/dr)."""
  n_k = -(-mask.kv_len // bk)
  first, count, steps = mask.block_schedule(bq, bk)
  return Schedule(np.minimum(first, n_k - 1).astype(np.int32), count, max(steps, 1))


def q_schedule(mask: MaskSpec, bq: int, bk: int) -> Schedule:
  """Query blocks per key block (dk/dv): the transpose of ``kv_schedule``.

  Row ``i`` sees keys in ``[lo(i), hi(i)]`` with both bounds non-decreasing in ``i``, so the
  query blocks that see a key block are consecutive.
  """
  n_k = -(-mask.kv_len // bk)
  kv = kv_schedule(mask, bq, bk)
  kb = np.arange(n_k)[None, :]
  seen = (kb >= kv.first[:, None]) & (kb < (kv.first + kv.count)[:, None])  # [nQ, nK]
  count = seen.sum(axis=0).astype(np.int32)
  first = np.where(count > 0, np.argmax(seen, axis=0), 0).astype(np.int32)
  for j in range(n_k):  # consecutive by construction; guard the invariant the grid relies on
    assert seen[first[j] : first[j] + count[j], j].all(), (
      "query blocks of a key block not contiguous"
    )
  return Schedule(first, count, max(int(count.max(initial=0)), 1))


def inner_block(first_ref, count_ref, outer, step):
  """Block index of inner step ``step``: clamped to the last visited block past the count."""
  count = count_ref[outer]
  return first_ref[outer] + jnp.minimum(step, jnp.maximum(count - 1, 0))


def kv_head(q_head, group: int):
  """GQA: the kv head of query head ``q_head`` (``lax.div``: non-negative, no floor-div sign
  fix-up in the scalar index map)."""
  return q_head if group == 1 else lax.div(q_head, group)


def tile_is_full(mask: MaskSpec, q_block, k_block, bq: int, bk: int):
  """True when every (row, key) pair of the tile is visible (segment ids aside).

  PARALLAX.md 2.3 with the last-row window rule: all keys at or before the first row's
  position, all keys inside the last row's window, and no padded row or key.
  """
  r0 = q_block * bq
  c0 = k_block * bk
  full = (c0 + bk <= mask.kv_len) & (r0 + bq <= mask.q_len)
  if mask.causal:
    full = full & (c0 + bk - 1 <= r0 + mask.q_offset)
  if mask.window_size is not None:
    full = full & (c0 >= r0 + bq - 1 + mask.q_offset - mask.window_size + 1)
  return full


def tile_visible(mask: MaskSpec, q_block, k_block, bq: int, bk: int, q_seg=None, k_seg=None):
  """Boolean ``[bq, bk]`` visibility of one tile (``MaskSpec.visible`` on block iotas).

  ``q_seg``: ``[bq, 1]`` and ``k_seg``: ``[1, bk]`` segment ids, or None.
  """
  rows = q_block * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  cols = k_block * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  return mask.visible(rows, cols, q_seg, k_seg)


def run_tile(update, run, mask: MaskSpec, q_block, k_block, bq: int, bk: int, has_segments: bool):
  """Runs ``update(masked=...)`` for a scheduled tile (``run``): without the mask arithmetic
  when the tile is fully visible, with it on border tiles (and on every tile when segment ids
  are present, since they are only known at run time)."""
  if has_segments:
    pl.when(run)(lambda: update(masked=True))
    return
  full = tile_is_full(mask, q_block, k_block, bq, bk)
  pl.when(run & full)(lambda: update(masked=False))
  pl.when(run & jnp.logical_not(full))(lambda: update(masked=True))
