"""Which keys a query sees: the one masking convention shared by every path.

Positions are end-aligned: with ``Tq`` queries and ``Tk`` keys, query row ``i`` sits at
absolute position ``pos(i) = i + Tk - Tq`` and key ``j`` at ``j``.

* causal: ``j <= pos(i)`` (``causal=False``: no causal bound);
* window ``W``: the ``W`` most recent keys including the diagonal, ``j >= pos(i) - W + 1``
  (only together with ``causal=True``);
* segment ids (``Tq == Tk``): ``seg_q[i] == seg_k[j]``;
* always ``0 <= j < Tk`` and ``0 <= i < Tq`` (padding rows/columns of blocked layouts).

Only the scores ``s = c q.k`` are masked; ``t = r.k`` never is (a masked ``-inf`` there would
make ``0 * inf = NaN``): masked keys vanish because their weight is exactly zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Static description of the mask of one call.

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
    """Absolute position of query row 0 (``Tk - Tq``; negative when Tq > Tk)."""
    return self.kv_len - self.q_len

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
      ok = ok & (q_seg == k_seg)
    return ok

  def key_range(self, row_first, row_last, xp=np):
    """Inclusive key-index bounds ``[lo, hi]`` that rows ``row_first..row_last`` may see.

    ``hi < lo`` means no key is visible. ``xp`` is ``np`` for static schedules or ``jnp`` for
    traced row indices (kernels). Segment ids can only shrink this range.
    """
    lo = xp.zeros_like(row_first)
    hi = xp.full_like(row_first, self.kv_len - 1)
    if self.causal:
      hi = xp.minimum(hi, row_last + self.q_offset)
    if self.window_size is not None:
      lo = xp.maximum(lo, row_first + self.q_offset - self.window_size + 1)
    return lo, hi

  def block_schedule(self, block_q: int, block_k: int):
    """Static key-block schedule for query blocks of ``block_q`` rows.

    Returns ``(first_block, num_blocks, max_blocks)``: NumPy int32 arrays over query blocks
    with the first key block and the number of consecutive key blocks that may hold a visible
    key, and the largest such count (the trip count of a blockwise loop).
    """
    n_q = -(-self.q_len // block_q)
    row_first = np.arange(n_q) * block_q
    row_last = np.minimum(row_first + block_q, self.q_len) - 1
    lo, hi = self.key_range(row_first, row_last)
    first = np.clip(lo, 0, None) // block_k
    last = np.where(hi >= lo, hi // block_k, first - 1)
    count = np.maximum(last - first + 1, 0)
    return first.astype(np.int32), count.astype(np.int32), int(count.max(initial=0))
