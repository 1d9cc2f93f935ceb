"""Split-KV partial states of decode and their exact merge (docs/design.md §13.3).

A decode kernel cuts each (row, kv head)'s valid keys into ``num_splits`` disjoint ranges and
returns one un-normalised online state per range: ``tile_math.FwdState`` fields
``(m, d1, d2, acc1, acc2)`` (natural-log max, float32) with a split axis. ``merge_splits``
combines them exactly (``m* = max m_s``, every other field scaled by ``exp(m_s - m*)`` and
summed) and ``finish`` normalises: ``o = acc1/d1 (1 + d2/d1) - acc2/d1``. A split that saw no
key has ``m = -inf`` and zero sums and contributes nothing; a row that saw no key gives 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from parallax_jax.attention import tile_math


def merge_splits(state: tile_math.FwdState, axis: int) -> tile_math.FwdState:
  """Merges the partial states stacked along ``axis`` of the row statistics (``m``, ``d1``,
  ``d2``: ``[..., S, ...]``; ``acc1``, ``acc2`` carry one more trailing ``D`` axis)."""
  axis = axis % state.m.ndim
  m = jnp.max(state.m, axis=axis, keepdims=True)
  m_safe = jnp.where(m == tile_math.NEG_INF, 0.0, m)  # exp(-inf - 0) = 0 for empty splits
  c = jnp.exp(state.m - m_safe)

  def fold(x):
    return jnp.sum(c * x, axis=axis)

  def fold_acc(x):
    return jnp.sum(c[..., None] * x, axis=axis)

  return tile_math.FwdState(
    m=jnp.squeeze(m, axis),
    d1=fold(state.d1),
    d2=fold(state.d2),
    acc1=fold_acc(state.acc1),
    acc2=fold_acc(state.acc2),
  )


def finish(state: tile_math.FwdState, dtype) -> jnp.ndarray:
  """The Parallax output of a (merged) state, cast to ``dtype``; rows that saw no key are 0."""
  return tile_math.fwd_finalize(state).o.astype(dtype)
