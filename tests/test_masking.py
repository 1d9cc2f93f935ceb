"""The one visibility rule (``parallax_jax.attention.masking``), brute force against itself.

For every mask kind (no mask, causal, causal + window; Tq == Tk, Tq < Tk, Tq > Tk; windows
below, at and above the tile sizes, not multiples of them) and every tile shape (square,
block_q > block_k, block_q < block_k, blocks longer than the sequence), the three things the
module gives must agree with a brute-force reading of the element predicate:

(a) ``visible`` against an independent NumPy statement of the convention (docs/design.md §2.1);
(b) ``tile_kind`` (per tile), ``key_blocks`` (row-major ranges) and ``query_blocks`` (their
    transpose) against tile classes counted from (a): SKIP iff no real row sees a key of the
    tile, FULL iff every real row sees every key and no key is padding, MASKED otherwise;
(c) ``block_schedule`` / ``query_block_schedule`` against the non-SKIP tiles of each row /
    column, including the traced (``jnp``) forms the kernels and the ring evaluate.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallax_jax.attention.masking import (
  ChunkMask,
  MaskSpec,
  TileKind,
  chunk_pair_kind,
  kv_lengths_mask,
  same_segment,
)

LENGTHS = ((1, 1), (5, 5), (17, 17), (64, 64), (100, 100), (16, 64), (37, 100), (100, 37), (1, 77))
WINDOWS = (1, 2, 7, 16, 33, 64, 100)
TILES = ((1, 1), (4, 4), (8, 4), (4, 8), (16, 16), (32, 8), (8, 32), (64, 64), (128, 16))


def _masks():
  for tq, tk in LENGTHS:
    yield MaskSpec(tq, tk, causal=False)
    yield MaskSpec(tq, tk, causal=True)
    for w in WINDOWS:
      yield MaskSpec(tq, tk, causal=True, window_size=w)


def _truth(mask, q_seg=None, k_seg=None):
  """``[Tq, Tk]`` visibility written out from the convention, one pair at a time."""
  out = np.zeros((mask.q_len, mask.kv_len), bool)
  for i in range(mask.q_len):
    pos = i + mask.kv_len - mask.q_len  # end-aligned
    for j in range(mask.kv_len):
      ok = (not mask.causal) or j <= pos
      if mask.window_size is not None:
        ok = ok and j >= pos - mask.window_size + 1  # W keys including the diagonal
      if q_seg is not None:
        ok = ok and q_seg[i] == k_seg[j]
      out[i, j] = ok
  return out


def _tile_classes(vis, tk, bq, bk):
  """``[nQ, nK]`` TileKinds counted from the element visibility of the real rows."""
  tq = vis.shape[0]
  nq, nk = -(-tq // bq), -(-tk // bk)
  out = np.zeros((nq, nk), int)
  for a, b in itertools.product(range(nq), range(nk)):
    tile = vis[a * bq : (a + 1) * bq, b * bk : (b + 1) * bk]
    padded_keys = (b + 1) * bk > tk
    if tile.any():
      out[a, b] = TileKind.FULL if tile.all() and not padded_keys else TileKind.MASKED
  return out


def _ranges(lo, safe_lo, safe_hi, hi, n):
  lo, safe_lo, safe_hi, hi = (int(x) for x in (lo, safe_lo, safe_hi, hi))
  assert 0 <= lo <= safe_lo <= safe_hi <= hi <= n, (lo, safe_lo, safe_hi, hi, n)
  out = np.zeros(n, int)
  out[lo:hi] = TileKind.MASKED
  out[safe_lo:safe_hi] = TileKind.FULL
  return out


@pytest.mark.parametrize("mask", list(_masks()), ids=str)
def test_predicate_and_tile_classes_agree(mask):
  rows, cols = np.arange(mask.q_len)[:, None], np.arange(mask.kv_len)[None, :]
  vis = np.asarray(mask.visible(rows, cols))
  np.testing.assert_array_equal(vis, _truth(mask))  # (a)
  # Padding rows/keys of a blocked layout are never visible.
  assert not mask.visible(mask.q_len, 0) and not mask.visible(0, mask.kv_len)
  assert not mask.visible(0, -1)
  for bq, bk in TILES:
    want = _tile_classes(vis, mask.kv_len, bq, bk)
    nq, nk = want.shape
    where = f"{mask} tile {bq}x{bk}"
    # (b) per tile, row-major ranges and their transpose.
    got = np.array([[int(mask.tile_kind(a, b, bq, bk)) for b in range(nk)] for a in range(nq)])
    np.testing.assert_array_equal(got, want, err_msg=f"tile_kind {where}")
    for a in range(nq):
      got = _ranges(*mask.key_blocks(a * bq, bq, bk), nk)
      np.testing.assert_array_equal(got, want[a], err_msg=f"key_blocks {where} row block {a}")
    for b in range(nk):
      got = _ranges(*mask.query_blocks(b * bk, bq, bk), nq)
      np.testing.assert_array_equal(got, want[:, b], err_msg=f"query_blocks {where} key block {b}")
    # (c) schedules: the first non-SKIP block and the count of consecutive ones.
    first, count, steps = mask.block_schedule(bq, bk)
    for a in range(nq):
      live = np.nonzero(want[a])[0]
      assert count[a] == len(live), where
      if len(live):
        assert first[a] == live[0] and (np.diff(live) == 1).all(), where
    assert steps == max(int(count.max()), 1)
    first, count, steps = mask.query_block_schedule(bq, bk)
    for b in range(nk):
      live = np.nonzero(want[:, b])[0]
      assert count[b] == len(live), where
      if len(live):
        assert first[b] == live[0], where
    assert steps == max(int(count.max()), 1)


def test_traced_forms_match_numpy():
  """The kernels evaluate the ranges with traced program ids; the ring with a traced offset."""
  mask = MaskSpec(100, 130, causal=True, window_size=33)
  for start in (0, 32, 96):
    for fn in (mask.key_blocks, mask.query_blocks):
      want = np.asarray(fn(start, 32, 16))
      got = jax.jit(lambda s, fn=fn: jnp.stack(fn(s, 32, 16, jnp)))(start)
      np.testing.assert_array_equal(np.asarray(got), want)
    for qb, kb in itertools.product(range(4), range(9)):
      got = jax.jit(lambda a, b: mask.tile_kind(a, b, 32, 16, jnp))(qb, kb)
      assert int(got) == int(mask.tile_kind(qb, kb, 32, 16))
  # A ChunkMask with a traced offset schedules like the static mask with that offset.
  static = MaskSpec(24, 40, causal=True, window_size=9)  # q_offset = 16
  first_s, count_s, _ = static.block_schedule(8, 4)
  first, count, steps = jax.jit(
    lambda off: (
      MaskSpec(24, 40, True, 9).with_offset(off).block_schedule(8, 4, jnp)[:2] + (jnp.int32(0),)
    )
  )(jnp.int32(16))
  live = count_s > 0
  np.testing.assert_array_equal(np.asarray(count), count_s)
  np.testing.assert_array_equal(np.asarray(first)[live], first_s[live])
  assert static.with_offset(16).max_key_blocks(8, 4) >= count_s.max()


def test_max_key_blocks_bounds_every_offset():
  """The static bound holds for any query offset, block-aligned or not (kernels size their
  rings and loops by it): checked against the schedule itself."""
  from parallax_jax.attention.masking import ChunkMask

  for window, (bq, bk) in itertools.product((2, 3, 5, 9), ((8, 4), (4, 4), (8, 8))):
    for offset in range(-8, 40):
      mask = ChunkMask(16, 48, True, window, offset)
      _, count, _ = mask.block_schedule(bq, bk)
      assert count.max() <= mask.max_key_blocks(bq, bk), (window, bq, bk, offset)


@pytest.mark.parametrize("window", [None, 1, 5, 12, 13, 40])
@pytest.mark.parametrize("chunk", [4, 12])
def test_chunk_pairs_of_one_sequence(window, chunk):
  """The ring's chunk-pair class is the tile class of the whole sequence's mask."""
  t = 4 * chunk
  whole = MaskSpec(t, t, causal=True, window_size=window)
  vis = _truth(whole)
  want = _tile_classes(vis, t, chunk, chunk)
  for a, b in itertools.product(range(4), range(4)):
    got = chunk_pair_kind(a * chunk, b * chunk, chunk, causal=True, window_size=window)
    assert int(got) == want[a, b], (a, b)
  assert chunk_pair_kind(0, 3 * chunk, chunk, causal=False, window_size=None) == TileKind.FULL


def test_segments_only_shrink_visibility():
  seg = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
  mask = MaskSpec(9, 9, causal=True, window_size=3)
  rows, cols = np.arange(9)[:, None], np.arange(9)[None, :]
  got = np.asarray(mask.visible(rows, cols, seg[:, None], seg[None, :]))
  np.testing.assert_array_equal(got, _truth(mask, seg, seg))
  assert same_segment(np.int32(3), np.int32(3)) and not same_segment(1, 2)


def test_library_window_conventions():
  """jax.nn counts the keys left of the diagonal; we count the window including it."""
  assert MaskSpec(8, 8, causal=True, window_size=3).jax_nn_local_window() == (2, 0)
  assert MaskSpec(8, 8, causal=True).jax_nn_local_window() is None


def test_last_row_window_rule():
  """The upstream first-row rule would run this tile unmasked (docs/design.md §2.3): rows
  256..383 of a W=128 window see keys from 129..256 on, so key block 2 ([128, 192)) is cut."""
  mask = MaskSpec(512, 512, causal=True, window_size=128)
  assert int(mask.tile_kind(2, 2, 128, 64)) == TileKind.MASKED
  lo, safe_lo, safe_hi, hi = (int(x) for x in mask.key_blocks(256, 128, 64))
  assert (lo, safe_lo, safe_hi, hi) == (2, 4, 4, 6)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(q_len=0, kv_len=4), "q_len, kv_len >= 1"),
    (dict(q_len=4, kv_len=4, window_size=0), "window_size must be >= 1"),
    (dict(q_len=4, kv_len=4, causal=False, window_size=2), "needs causal=True"),
  ],
)
def test_bad_masks_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MaskSpec(**kwargs)


def test_chunk_mask_is_the_same_rules():
  chunk = ChunkMask(6, 6, True, 3, q_offset=6)
  whole = MaskSpec(12, 12, causal=True, window_size=3)
  rows, cols = np.arange(6)[:, None], np.arange(6)[None, :]
  # Query chunk [6, 12) against key chunk [0, 6) of the whole sequence.
  np.testing.assert_array_equal(
    np.asarray(chunk.visible(rows, cols)), np.asarray(whole.visible(rows + 6, cols))
  )


@pytest.mark.parametrize("q_len, window", [(1, None), (3, None), (1, 4), (4, 2), (2, 1)])
def test_kv_lengths_mask_brute_force(q_len, window):
  """Per-row lengths: visible iff ``j < n_b`` and key j in query i's causal (window) range, with
  query i at position ``n_b - Tq + i``; checked against an explicit loop, and the tile classes
  and key ranges of a row agree with the elementwise rule (a scalar traced-style offset)."""
  cache, lengths = 12, np.array([0, 1, 2, 5, 12])
  got = np.asarray(
    kv_lengths_mask(q_len, cache, lengths[:, None, None], window).visible(
      np.arange(q_len)[None, :, None], np.arange(cache)[None, None, :]
    )
  )
  for b, n in enumerate(lengths):
    for i in range(q_len):
      pos = n - q_len + i
      for j in range(cache):
        want = j < n and j <= pos and (window is None or j >= pos - window + 1)
        assert got[b, i, j] == want, (b, i, j)
  for n in lengths:
    rule = kv_lengths_mask(q_len, cache, int(n), window)
    lo, hi = rule.key_range(0, q_len - 1)
    vis = got[list(lengths).index(n)]
    cols = np.flatnonzero(vis.any(axis=0))
    if cols.size:
      assert lo <= cols.min() and cols.max() <= hi
    else:
      assert n == 0 and hi < lo  # a row with a key always sees its own last position
