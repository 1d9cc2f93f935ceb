"""The GPU kernels' loop over one program's tiles, in the three ranges of the tile classes.

``MaskSpec.key_blocks`` (forward and dq/dr: key blocks of one query block) and
``MaskSpec.query_blocks`` (dk/dv: query blocks of one key block) return ``(lo, safe_lo,
safe_hi, hi)``: ``[safe_lo, safe_hi)`` are FULL tiles, run without the index mask, and the two
borders around them are MASKED (docs/design.md §2.3). This helper is the one place that turns
those ranges into loops; segment ids, when present, are tested inside ``body`` on every tile.
"""

from __future__ import annotations

import functools

from jax import lax


def three_range_loop(ranges, body, carry, *, left_border: bool):
  """Folds ``carry = body(block, carry, masked=...)`` over the blocks of ``ranges``.

  ``left_border=False`` drops the (then provably empty) first masked range at trace time: a key
  loop without a window has none, and an empty loop still costs the kernel registers.
  """
  lo, safe_lo, safe_hi, hi = ranges
  masked = functools.partial(body, masked=True)
  if left_border:
    carry = lax.fori_loop(lo, safe_lo, masked, carry)
  carry = lax.fori_loop(safe_lo, safe_hi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(safe_hi, hi, masked, carry)
