"""The TPU kernels' grids over ``MaskSpec``'s schedules, and per-tile dispatch on its classes.

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

from parallax_jax.attention.masking import MaskSpec, TileKind


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
  """Key blocks per query block (forward and dq/dr): ``MaskSpec.block_schedule``."""
  return Schedule(*mask.block_schedule(bq, bk))


def q_schedule(mask: MaskSpec, bq: int, bk: int) -> Schedule:
  """Query blocks per key block (dk/dv): ``MaskSpec.query_block_schedule``."""
  return Schedule(*mask.query_block_schedule(bq, bk))


def inner_block(first_ref, count_ref, outer, step):
  """Block index of inner step ``step``: clamped to the last visited block past the count."""
  count = count_ref[outer]
  return first_ref[outer] + jnp.minimum(step, jnp.maximum(count - 1, 0))


def kv_head(q_head, group: int):
  """GQA: the kv head of query head ``q_head`` (``lax.div``: non-negative, no floor-div sign
  fix-up in the scalar index map)."""
  return q_head if group == 1 else lax.div(q_head, jnp.asarray(group, q_head.dtype))


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
  full = mask.tile_kind(q_block, k_block, bq, bk, jnp) == TileKind.FULL
  pl.when(run & full)(lambda: update(masked=False))
  pl.when(run & jnp.logical_not(full))(lambda: update(masked=True))
