"""Query-row layout of the GPU decode kernels (docs/design.md §13.3).

A decode program serves the ``M = Tq * G`` query rows of one (row, kv head): the ``G`` query
heads of the group at each of the ``Tq`` positions. They are held tq-major, ``m = tq * g_p +
g``, padded to powers of two ``tq_p >= Tq``, ``g_p >= G`` with ``tq_p * g_p >= min_rows``
(16, the tensor-core minimum, for the split kernel's dots; 1 for the merges, which have no dots
and would otherwise load and fold 16x the rows at G = 1). Padding rows load zeros and are never
stored. ``Rows`` holds the masks
and the masked loads and stores every decode kernel (the split kernel and the merge) uses on
``[..., Tq, G(, width)]`` blocks.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gpu.block_sizes import pow2_at_least

MIN_ROWS = 16  # tensor-core dots need M >= 16


def row_padding(q_len: int, group: int, min_rows: int = MIN_ROWS) -> tuple[int, int]:
  """``(tq_p, g_p)``: powers of two covering ``Tq`` and ``G`` with ``tq_p * g_p >= min_rows``."""
  tq_p = pow2_at_least(q_len, floor=1)
  g_p = pow2_at_least(group, floor=max(1, min_rows // tq_p))
  return tq_p, g_p


@dataclasses.dataclass(frozen=True)
class Rows:
  """The padded ``(tq_p, g_p)`` rows of ``Tq`` queries of ``G`` heads (static)."""

  q_len: int
  group: int
  min_rows: int = MIN_ROWS  # 1 where no dot consumes the rows (the merges)

  @property
  def shape(self) -> tuple[int, int]:
    return row_padding(self.q_len, self.group, self.min_rows)

  def unpadded(self) -> Rows:
    """The same rows without the tensor-core minimum (for elementwise work: the merges)."""
    return dataclasses.replace(self, min_rows=1)

  @property
  def count(self) -> int:
    """``Mp = tq_p * g_p``, the rows a program computes."""
    tq_p, g_p = self.shape
    return tq_p * g_p

  @property
  def padded(self) -> bool:
    return self.shape != (self.q_len, self.group)

  def ok(self):
    """``[tq_p, g_p]`` bool: the real (stored) rows."""
    tq_idx = lax.broadcasted_iota(jnp.int32, self.shape, 0)
    g_idx = lax.broadcasted_iota(jnp.int32, self.shape, 1)
    return (tq_idx < self.q_len) & (g_idx < self.group)

  def _at(self, ref, lead: tuple, ndim: int):
    """``ref.at[*lead, :tq_p, :g_p(, :)]`` in one indexer (Triton lowers one per access)."""
    tq_p, g_p = self.shape
    return ref.at[(*lead, pl.ds(0, tq_p), pl.ds(0, g_p)) + (slice(None),) * (ndim - 2)]

  def load(self, ref, *, other=0):
    """``ref[:Tq, :G(, :)]`` padded with ``other``, flattened to ``[Mp(, width)]``."""
    ndim = len(ref.shape)
    mask = (self.ok() if ndim == 2 else self.ok()[..., None]) if self.padded else None
    x = pltriton.load(self._at(ref, (), ndim), mask=mask, other=other if self.padded else None)
    return x.reshape(self.count, *x.shape[2:])

  def load_splits(self, ref, start, chunk: int, splits: int, *, other=0):
    """``ref[start:start + chunk, :Tq, :G(, :)]`` of a ``[S_pad, Tq, G(, width)]`` block as
    ``[chunk, Mp(, width)]``; splits at or past ``splits`` and padding rows read ``other``
    (``start + chunk <= S_pad``: the block is padded, so the slice never leaves it)."""
    tq_p, g_p = self.shape
    ndim = len(ref.shape) - 1
    split = start + lax.broadcasted_iota(jnp.int32, (chunk, tq_p, g_p), 0)
    mask = (split < splits) & self.ok()[None]
    mask = mask if ndim == 2 else mask[..., None]
    x = pltriton.load(self._at(ref, (pl.ds(start, chunk),), ndim), mask=mask, other=other)
    return x.reshape(chunk, self.count, *x.shape[3:])

  def store(self, ref, x, lead: tuple = ()):
    """Stores ``[Mp(, width)]`` rows ``x`` into ``ref[*lead, :Tq, :G(, :)]`` (padding dropped)."""
    x = x.reshape(*self.shape, *x.shape[1:]).astype(ref.dtype)
    mask = (self.ok() if x.ndim == 2 else self.ok()[..., None]) if self.padded else None
    pltriton.store(self._at(ref, lead, x.ndim), x, mask=mask)
