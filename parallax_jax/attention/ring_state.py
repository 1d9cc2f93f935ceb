"""Chunk placement and online-state algebra of context-parallel (ring) Parallax attention.

Everything here is independent of devices and collectives, so it is shared by the ring in
``context_parallel`` and by tests/planning code (NumPy in, NumPy out; the chunk helpers also
take traced ``jnp`` ints).

Placement. A sequence of ``T`` positions is cut into equal chunks of ``C`` positions and the
chunks are spread over ``n`` shards (devices of the mesh axis):

* contiguous (``load_balance=False``): ``n`` chunks, shard ``i`` holds chunk ``i``;
* zigzag (``load_balance=True``): ``2n`` chunks, shard ``i`` holds chunks ``i`` and
  ``2n - 1 - i`` (in that order). Under a causal mask every shard then does the same work: an
  early chunk (little to see) is paired with a late one (much to see).

The *layout* of a global ``[B, T, ...]`` array is the concatenation of the shards' chunks in
shard order, so that sharding its sequence axis over ``n`` devices gives each shard its chunks.
Contiguous layout = natural order; ``to_zigzag`` / ``from_zigzag`` convert the zigzag one, and
``zigzag_positions`` gives the absolute position of each layout row (for RoPE etc.).

Pairs. A (query chunk, key chunk) pair is classified like a tile (``masking.chunk_pair_kind``):
``SKIP`` (no query sees any key: entirely in the future or entirely left of every row's
window), ``FULL`` (every query sees every key) or ``MASKED`` (needs the element mask: the
diagonal chunk, or a chunk cut by a window edge).

States. ``merge_fwd_states`` combines the un-normalised online states (``tile_math.FwdState``)
of two disjoint key sets of the same rows exactly (the split-K merge, docs/design.md §7.3):
``m = max(m_a, m_b)``, every other field of state ``x`` scaled by ``exp(m_x - m)`` and added.
Rows that saw no key keep ``m = -inf`` and zeros (never NaN).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from parallax_jax.attention import tile_math
from parallax_jax.attention.masking import MaskSpec, chunk_pair_kind


def merge_fwd_states(a: tile_math.FwdState, b: tile_math.FwdState) -> tile_math.FwdState:
  """Exact merge of the online states of two disjoint key sets of the same query rows."""
  m = jnp.maximum(a.m, b.m)
  m_safe = jnp.where(m == tile_math.NEG_INF, 0.0, m)  # exp(-inf - 0) = 0 for empty states
  ca = jnp.exp(a.m - m_safe)
  cb = jnp.exp(b.m - m_safe)
  return tile_math.FwdState(
    m=m,
    d1=ca * a.d1 + cb * b.d1,
    d2=ca * a.d2 + cb * b.d2,
    acc1=ca[..., None] * a.acc1 + cb[..., None] * b.acc1,
    acc2=ca[..., None] * a.acc2 + cb[..., None] * b.acc2,
  )


@dataclasses.dataclass(frozen=True)
class Placement:
  """How ``seq_len`` positions are cut into chunks and spread over ``num_shards`` shards."""

  seq_len: int
  num_shards: int
  load_balance: bool = True

  def __post_init__(self):
    if self.num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {self.num_shards}.")
    if self.seq_len % self.num_chunks:
      kind = "2 * num_shards (zigzag load balancing)" if self.load_balance else "num_shards"
      raise ValueError(
        f"the sequence length {self.seq_len} must be divisible by {kind} = {self.num_chunks}."
      )

  @property
  def chunks_per_shard(self) -> int:
    return 2 if self.load_balance else 1

  @property
  def num_chunks(self) -> int:
    return self.num_shards * self.chunks_per_shard

  @property
  def chunk_len(self) -> int:
    return self.seq_len // self.num_chunks

  def shard_chunks(self, shard) -> tuple:
    """Global chunk indices held by ``shard`` (int or traced), in layout order."""
    if self.load_balance:
      return (shard, 2 * self.num_shards - 1 - shard)
    return (shard,)

  def positions(self) -> np.ndarray:
    """``[T]`` absolute position of each row of the layout."""
    c = self.chunk_len
    return np.concatenate(
      [
        np.arange(ch * c, (ch + 1) * c)
        for i in range(self.num_shards)
        for ch in self.shard_chunks(i)
      ]
    )


def zigzag_positions(seq_len: int, num_shards: int) -> np.ndarray:
  """``[T]`` absolute position of each row of the zigzag layout (e.g. RoPE positions)."""
  return Placement(seq_len, num_shards, load_balance=True).positions()


def to_zigzag(x, num_shards: int, axis: int = 1):
  """Natural order -> zigzag layout along ``axis`` (length divisible by ``2 * num_shards``).

  Chunk order ``0, 2n-1, 1, 2n-2, ..., n-1, n``; a reshape and a flip, no gather.
  """
  x = jnp.moveaxis(x, axis, 0)
  t, rest = x.shape[0], x.shape[1:]
  n = num_shards
  Placement(t, n)  # validates divisibility
  x = x.reshape(2, n, t // (2 * n), *rest)
  x = jnp.stack([x[0], x[1, ::-1]], axis=1)  # [n, 2, C, ...]
  return jnp.moveaxis(x.reshape(t, *rest), 0, axis)


def from_zigzag(x, num_shards: int, axis: int = 1):
  """Zigzag layout -> natural order along ``axis`` (inverse of ``to_zigzag``)."""
  x = jnp.moveaxis(x, axis, 0)
  t, rest = x.shape[0], x.shape[1:]
  n = num_shards
  Placement(t, n)
  x = x.reshape(n, 2, t // (2 * n), *rest)
  x = jnp.stack([x[:, 0], x[::-1, 1]], axis=0)  # [2, n, C, ...]
  return jnp.moveaxis(x.reshape(t, *rest), 0, axis)


def num_ring_steps(placement: Placement, *, causal: bool, window_size: int | None) -> int:
  """Ring steps that can meet a visible pair (the rest are skipped entirely).

  Step ``s`` brings shard ``i`` the keys of shard ``i - s``. Only a contiguous placement with
  a window can stop early: shard ``i``'s chunk is then query block ``i`` of the whole sequence
  in chunk-sized tiles, and the most key blocks any of them visits (the schedule's trip count)
  is the number of steps.
  """
  n = placement.num_shards
  if placement.load_balance or not causal or window_size is None:
    return n
  c = placement.chunk_len
  whole = MaskSpec(placement.seq_len, placement.seq_len, causal=True, window_size=window_size)
  return whole.block_schedule(c, c)[2]


def ring_schedule(placement: Placement, *, causal: bool, window_size: int | None) -> np.ndarray:
  """``[n, steps, cps, cps]`` ``TileKind``s of the pairs: shard, ring step, its query chunk,
  the visiting key chunk (``cps`` chunks per shard). Shard ``i`` at step ``s`` holds the keys
  of ``i - s``."""
  n = placement.num_shards
  steps = num_ring_steps(placement, causal=causal, window_size=window_size)
  cps = placement.chunks_per_shard
  out = np.zeros((n, steps, cps, cps), np.int32)
  for i in range(n):
    mine = placement.shard_chunks(i)
    for s in range(steps):
      theirs = placement.shard_chunks((i - s) % n)
      for a in range(cps):
        for b in range(cps):
          c = placement.chunk_len
          out[i, s, a, b] = chunk_pair_kind(
            mine[a] * c, theirs[b] * c, c, causal=causal, window_size=window_size
          )
  return out
