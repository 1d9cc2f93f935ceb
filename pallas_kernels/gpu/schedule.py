"""Tile classification (PARALLAX.md 2.3): which tiles a kernel skips, masks, or runs unmasked.

Each function returns three consecutive ranges of block indices as ``(lo, safe_lo, safe_hi, hi)``:
``[lo, safe_lo)`` and ``[safe_hi, hi)`` are border tiles that need the index mask,
``[safe_lo, safe_hi)`` are tiles where every real row sees every key (no mask), and blocks
outside ``[lo, hi)`` hold no visible pair and are skipped. The window's unmasked bound uses the
LAST row of the row tile (the upstream kernels use the first row and attend outside the window
when ``block_q > block_k`` or ``W`` is not a multiple of the tile).

Rows of a tile beyond ``Tq`` (block padding) may sit in an unmasked tile: the forward drops them,
and the backward gives them ``lse = +inf`` so their weights are exactly 0. Keys beyond ``Tk``
are always masked. Segment ids only shrink visibility: with them every tile gets the segment
test (the kernels apply it in all three loops).

Written against ``xp`` (``numpy`` for tests and static use, ``jax.numpy`` with traced program
ids inside kernels).
"""

from __future__ import annotations

import numpy as np

from parallax_jax.attention.masking import MaskSpec


def _cdiv(a, b):
  return -((-a) // b)


def key_blocks(mask: MaskSpec, row_start, block_q: int, block_k: int, xp=np):
  """Key-block ranges for the query block whose first row is ``row_start``."""
  q_len, kv_len, delta = mask.q_len, mask.kv_len, mask.q_offset
  last = xp.minimum(row_start + block_q, q_len) - 1  # last real row of the tile
  lo_key, hi_key = mask.key_range(row_start, last, xp)
  lo = lo_key // block_k
  hi = xp.where(hi_key >= lo_key, hi_key // block_k + 1, lo)
  full = kv_len // block_k  # key blocks without padded keys
  if mask.causal:  # c0 + Bk - 1 <= pos(first row)
    safe_hi = xp.minimum((row_start + delta + 1) // block_k, full)
  else:
    safe_hi = xp.full_like(lo, full)
  if mask.window_size is not None:  # c0 >= pos(last row) - W + 1
    safe_lo = _cdiv(xp.maximum(last + delta - mask.window_size + 1, 0), block_k)
  else:
    safe_lo = lo
  safe_lo = xp.clip(safe_lo, lo, hi)
  safe_hi = xp.clip(safe_hi, safe_lo, hi)
  return lo, safe_lo, safe_hi, hi


def query_blocks(mask: MaskSpec, key_start, block_q: int, block_k: int, xp=np):
  """Query-block ranges for the key block whose first key is ``key_start`` (dk/dv pass)."""
  q_len, kv_len, delta = mask.q_len, mask.kv_len, mask.q_offset
  last_key = key_start + block_k - 1
  row_lo = xp.maximum(key_start - delta, 0) if mask.causal else xp.zeros_like(key_start)
  row_hi = xp.full_like(key_start, q_len - 1)
  if mask.window_size is not None:  # pos(i) - W + 1 <= last key
    row_hi = xp.minimum(row_hi, last_key + mask.window_size - 1 - delta)
  lo = row_lo // block_q
  hi = xp.where(row_hi >= row_lo, row_hi // block_q + 1, lo)
  if mask.causal:  # pos(r0) >= last key
    safe_lo = _cdiv(xp.maximum(last_key - delta, 0), block_q)
  else:
    safe_lo = lo
  if mask.window_size is not None:  # pos(r0 + Bq - 1) - W + 1 <= key_start
    safe_hi = (key_start + mask.window_size - delta) // block_q
  else:
    safe_hi = hi
  # A key block with padded keys is masked throughout.
  safe_lo = xp.where(last_key < kv_len, safe_lo, hi)
  safe_lo = xp.clip(safe_lo, lo, hi)
  safe_hi = xp.clip(safe_hi, safe_lo, hi)
  return lo, safe_lo, safe_hi, hi
