"""Which keys a query sees: the one visibility rule of every path (docs/design.md §2).

This module is the single source of the masking convention. Every path asks it:

(a) the per-element predicate ``visible`` (reference, LLA, the XLA path's tiles, the kernels'
    border tiles, the model's masks);
(b) the per-tile classification ``SKIP`` / ``MASKED`` / ``FULL``, in the three forms the
    backends need: ``tile_kind`` (one tile: the TPU kernels, the ring's chunk pairs),
    ``key_blocks`` (for one query block, the key-block ranges to skip, mask or run unmasked:
    the GPU forward and dq/dr loops) and ``query_blocks`` (its transpose for one key block: the
    GPU dk/dv loop);
(c) the static block schedules ``block_schedule`` (key blocks per query block: the XLA loop
    and the kernels' grids) and ``query_block_schedule`` (query blocks per key block);
(d) the decode mask ``kv_lengths_mask``: per-row KV lengths over a right-padded cache are the
    causal rule with a per-row (traced) offset, not a rule of their own.

Positions are end-aligned: with ``Tq`` queries and ``Tk`` keys, query row ``i`` sits at key
position ``pos(i) = i + q_offset`` with ``q_offset = Tk - Tq`` (a ``ChunkMask`` carries any
other, possibly traced, offset: one chunk pair of a sharded sequence).

* causal: ``j <= pos(i)`` (``causal=False``: no causal bound);
* window ``W``: the ``W`` most recent keys including the diagonal, ``j >= pos(i) - W + 1``
  (only together with ``causal=True``);
* segment ids (``Tq == Tk``): ``seg_q[i] == seg_k[j]``;
* always ``0 <= j < Tk`` and ``0 <= i < Tq`` (padding rows/columns of blocked layouts).

Only the scores ``s = c q.k`` are masked; ``t = r.k`` never is (a masked ``-inf`` there would
make ``0 * inf = NaN``): masked keys vanish because their weight is exactly zero.

Tile classes (a tile is ``bq`` rows from ``r0`` by ``bk`` keys from ``c0``; its *real* rows
are those ``< Tq``):

* ``SKIP``: no real row sees any key of the tile;
* ``FULL``: every real row sees every key and no key is padding (``c0 + bk <= Tk``); padding
  rows may sit in a FULL tile: every backend zero-pads q, r and dO, so they add exactly 0;
* ``MASKED``: the rest; the kernel applies ``visible`` elementwise.

The window bound of FULL uses the tile's LAST real row (``c0 >= pos(last) - W + 1``); the
upstream kernels used the first row and so ran keys outside later rows' windows unmasked.
Segment ids can only shrink visibility: they are never scheduled, every tile of a packed call
gets the elementwise segment test.

Written against ``xp``: ``numpy`` for static schedules and tests, ``jax.numpy`` with traced
program ids (inside kernels) or traced offsets (the ring).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class TileKind(enum.IntEnum):
  """How a tile (or a chunk pair) is treated: skipped, masked elementwise, or run unmasked."""

  SKIP = 0
  MASKED = 1
  FULL = 2


def cdiv(a, b):
  """Ceiling division of ints, NumPy or jnp int arrays (``b > 0``). Not ``pl.cdiv``: that one
  turns NumPy arrays into jax arrays and rounds negative numerators toward zero."""
  return -((-a) // b)


def same_segment(q_seg, k_seg):
  """The packing rule: a query sees only keys of its own segment (broadcasting int arrays)."""
  return q_seg == k_seg


class _Rules:
  """The rules, for any ``q_len, kv_len, causal, window_size, q_offset`` (see the module doc)."""

  q_len: int
  kv_len: int
  causal: bool
  window_size: int | None
  q_offset: object

  # (a) ----------------------------------------------------------------------------------------
  def visible(self, q_idx, k_idx, q_seg=None, k_seg=None):
    """Boolean visibility of key ``k_idx`` to query row ``q_idx`` (broadcasting int arrays).

    Works on NumPy values, jnp arrays and inside Pallas kernels. Indices are 0-based row and
    key indices (not positions); out-of-range rows/keys (block padding) are invisible.
    """
    pos = q_idx + self.q_offset
    ok = (k_idx < self.kv_len) & (q_idx < self.q_len) & (k_idx >= 0)
    if self.causal:
      ok = ok & (k_idx <= pos)
    if self.window_size is not None:
      ok = ok & (k_idx > pos - self.window_size)
    if q_seg is not None:
      ok = ok & same_segment(q_seg, k_seg)
    return ok

  def key_range(self, row_first, row_last, xp=np):
    """Inclusive key bounds ``[lo, hi]`` that rows ``row_first..row_last`` may see.

    ``hi < lo``: no key is visible. Segment ids can only shrink this range.
    """
    lo = xp.zeros_like(row_first)
    hi = xp.full_like(row_first, self.kv_len - 1)
    if self.causal:
      hi = xp.minimum(hi, row_last + self.q_offset)
    if self.window_size is not None:
      lo = xp.maximum(lo, row_first + self.q_offset - self.window_size + 1)
    return lo, hi

  # (b) ----------------------------------------------------------------------------------------
  def tile_kind(self, q_block, k_block, bq: int, bk: int, xp=np):
    """``TileKind`` (as int) of the tile ``(q_block, k_block)`` of ``bq x bk`` blocks."""
    r0 = q_block * bq
    c0 = k_block * bk
    last = xp.minimum(r0 + bq, self.q_len) - 1  # last real row
    lo, hi = self.key_range(r0, last, xp)
    some = (r0 < self.q_len) & (hi >= lo) & (c0 <= hi) & (c0 + bk - 1 >= lo)
    full = some & (c0 + bk <= self.kv_len)
    if self.causal:  # every key at or before the first row's position
      full = full & (c0 + bk - 1 <= r0 + self.q_offset)
    if self.window_size is not None:  # every key inside the last real row's window
      full = full & (c0 >= last + self.q_offset - self.window_size + 1)
    return xp.where(full, int(TileKind.FULL), xp.where(some, int(TileKind.MASKED), 0))

  def key_blocks(self, row_start, bq: int, bk: int, xp=np):
    """Key-block ranges ``(lo, safe_lo, safe_hi, hi)`` of the query block starting at row
    ``row_start``: ``[safe_lo, safe_hi)`` are exactly its FULL tiles, ``[lo, safe_lo)`` and
    ``[safe_hi, hi)`` its MASKED ones, blocks outside ``[lo, hi)`` are SKIP."""
    last = xp.minimum(row_start + bq, self.q_len) - 1
    lo_key, hi_key = self.key_range(row_start, last, xp)
    lo = lo_key // bk
    hi = xp.where(hi_key >= lo_key, hi_key // bk + 1, lo)
    full = self.kv_len // bk  # key blocks without padded keys
    if self.causal:  # c0 + bk - 1 <= pos(first row)
      safe_hi = xp.minimum((row_start + self.q_offset + 1) // bk, full)
    else:
      safe_hi = xp.full_like(lo, full)
    if self.window_size is not None:  # c0 >= pos(last real row) - W + 1
      safe_lo = cdiv(xp.maximum(last + self.q_offset - self.window_size + 1, 0), bk)
    else:
      safe_lo = lo
    safe_lo = xp.clip(safe_lo, lo, hi)
    safe_hi = xp.clip(safe_hi, safe_lo, hi)
    return lo, safe_lo, safe_hi, hi

  def query_blocks(self, key_start, bq: int, bk: int, xp=np):
    """Query-block ranges ``(lo, safe_lo, safe_hi, hi)`` of the key block starting at key
    ``key_start`` (the transpose of ``key_blocks``, for loops over query blocks)."""
    delta = self.q_offset
    last_key = key_start + bk - 1
    row_lo = xp.maximum(key_start - delta, 0) if self.causal else xp.zeros_like(key_start)
    row_hi = xp.full_like(key_start, self.q_len - 1)
    if self.window_size is not None:  # pos(i) - W + 1 <= last key
      row_hi = xp.minimum(row_hi, last_key + self.window_size - 1 - delta)
    lo = row_lo // bq
    hi = xp.where(row_hi >= row_lo, row_hi // bq + 1, lo)
    if self.causal:  # pos(r0) >= last key
      safe_lo = cdiv(xp.maximum(last_key - delta, 0), bq)
    else:
      safe_lo = lo
    if self.window_size is not None:  # pos(last real row of the block) - W + 1 <= key_start
      safe_hi = (key_start + self.window_size - delta) // bq
      # The last query block may be partial: its last real row is Tq - 1, not r0 + bq - 1.
      last_block = (self.q_len - 1) // bq
      tail_ok = (self.q_len - 1 + delta - self.window_size + 1 <= key_start) & (
        safe_hi >= last_block
      )
      safe_hi = xp.where(tail_ok, xp.maximum(safe_hi, last_block + 1), safe_hi)
    else:
      safe_hi = hi
    safe_lo = xp.where(last_key < self.kv_len, safe_lo, hi)  # padded keys: always masked
    safe_lo = xp.clip(safe_lo, lo, hi)
    safe_hi = xp.clip(safe_hi, safe_lo, hi)
    return lo, safe_lo, safe_hi, hi

  # (c) ----------------------------------------------------------------------------------------
  def max_key_blocks(self, bq: int, bk: int) -> int:
    """Static bound on the key blocks one query block may touch, for any offset."""
    nk = cdiv(self.kv_len, bk)
    if self.window_size is None:
      return nk
    # bq rows see at most bq + W - 1 consecutive keys, which straddle at most this many blocks.
    return min(nk, cdiv(bq + self.window_size - 2, bk) + 1)

  def block_schedule(self, bq: int, bk: int, xp=np):
    """Key blocks per query block: ``(first, count, steps)``.

    ``first``/``count`` are int32 arrays over the query blocks (the first key block and how many
    consecutive ones hold a visible pair; ``first`` is clamped into range when ``count == 0``);
    ``steps`` is the static trip count of a loop over them (``max(count)`` for a static mask,
    ``max_key_blocks`` when the offset is traced), at least 1.
    """
    row_start = xp.arange(cdiv(self.q_len, bq), dtype=np.int32) * bq
    lo, _, _, hi = self.key_blocks(row_start, bq, bk, xp)
    first = xp.minimum(lo, cdiv(self.kv_len, bk) - 1).astype(np.int32)
    count = (hi - lo).astype(np.int32)
    if xp is np:
      steps = int(count.max(initial=0))
    else:
      steps = self.max_key_blocks(bq, bk)
    return first, count, max(steps, 1)

  def query_block_schedule(self, bq: int, bk: int):
    """Query blocks per key block: ``(first, count, steps)`` (static, NumPy)."""
    key_start = np.arange(cdiv(self.kv_len, bk), dtype=np.int32) * bk
    lo, _, _, hi = self.query_blocks(key_start, bq, bk)
    first = np.minimum(lo, cdiv(self.q_len, bq) - 1).astype(np.int32)
    count = (hi - lo).astype(np.int32)
    return first, count, max(int(count.max(initial=0)), 1)

  # Conventions of other libraries ---------------------------------------------------------------
  def jax_nn_local_window(self) -> tuple[int, int] | None:
    """``local_window_size`` of ``jax.nn.dot_product_attention`` for this window (it counts
    the keys left of the diagonal: ``W`` keys including the diagonal is ``(W - 1, 0)``)."""
    return None if self.window_size is None else (self.window_size - 1, 0)


@dataclasses.dataclass(frozen=True)
class MaskSpec(_Rules):
  """Static description of the mask of one call (hashable: a jit/custom_vjp static argument).

  Attributes:
    q_len: Tq, number of query rows.
    kv_len: Tk, number of keys.
    causal: end-aligned causal mask.
    window_size: keep the ``window_size`` most recent keys (incl. the diagonal); None: all.
  """

  q_len: int
  kv_len: int
  causal: bool = True
  window_size: int | None = None

  def __post_init__(self):
    if self.q_len < 1 or self.kv_len < 1:
      raise ValueError(f"MaskSpec needs q_len, kv_len >= 1, got {self.q_len}, {self.kv_len}.")
    if self.window_size is not None:
      if self.window_size < 1:
        raise ValueError(f"window_size must be >= 1 or None, got {self.window_size}.")
      if not self.causal:
        raise ValueError("window_size needs causal=True.")

  @property
  def q_offset(self) -> int:
    """Key position of query row 0 (``Tk - Tq``; negative when Tq > Tk)."""
    return self.kv_len - self.q_len

  def with_offset(self, q_offset) -> ChunkMask:
    """The same rules with query row 0 at key position ``q_offset`` (an int or traced int)."""
    return ChunkMask(self.q_len, self.kv_len, self.causal, self.window_size, q_offset)


@dataclasses.dataclass(frozen=True)
class ChunkMask(_Rules):
  """``MaskSpec``'s rules with an explicit (possibly traced) query offset.

  One (query chunk, key chunk) pair of a sharded sequence: query row ``i`` sits at key index
  ``i + q_offset`` (the absolute position of query row 0 minus that of key 0).
  """

  q_len: int
  kv_len: int
  causal: bool
  window_size: int | None
  q_offset: object  # int, or an int32 scalar (may be traced)


def chunk_pair_kind(q_start, k_start, chunk_len: int, *, causal, window_size, xp=np):
  """``TileKind`` of a (query chunk, key chunk) pair of one sequence, chunks of ``chunk_len``
  positions starting at absolute positions ``q_start`` and ``k_start`` (ints or arrays)."""
  mask = ChunkMask(chunk_len, chunk_len, causal, window_size, q_start - k_start)
  return mask.tile_kind(0, 0, chunk_len, chunk_len, xp)


def kv_lengths_mask(q_len: int, cache_len: int, lengths, window_size: int | None = None):
  """The decode mask: row ``b`` of a right-padded cache holds ``lengths[b]`` valid keys and its
  ``q_len`` queries are the last ``q_len`` of those positions (end-aligned per row).

  That is the causal rule with query row 0 at key index ``lengths[b] - q_len``: keys at or past
  ``lengths[b]`` lie after every query, and query rows at a negative position (``lengths[b] <
  q_len``) see nothing. ``lengths`` is an int (array) shaped to broadcast against the query
  index it will be compared with (e.g. ``lengths[:, None, None]`` for ``[B, Tq, S]`` tests).
  """
  return ChunkMask(q_len, cache_len, True, window_size, lengths - q_len)
