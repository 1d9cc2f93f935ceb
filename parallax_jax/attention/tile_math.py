"""Elementwise math of one (query-rows x keys) tile, shared by the XLA path and the kernels.

Every function is rank-agnostic: a tile is ``[..., Bq, Bk]``, a per-row statistic ``[..., Bq]``
and an accumulator ``[..., Bq, D]``. Matmuls stay with the caller (batched einsums in XLA,
``jnp.dot`` / ``pl.dot`` in kernels); this module holds what they share so the algorithm lives
in one place. Scores are in natural-log units (``s = scale * q.k``); state is float32.

Forward (docs/design.md §3.1) with one exact refinement: each tile's ``W2 = W * t`` is centred on
the tile's own weighted mean ``c = sum(W t) / sum(W)`` before it is rounded to the input dtype
for the PV matmul, and ``c * (W V)`` is added back in float32. The result is identical in exact
arithmetic (``sum_j w_j (t_j - c) v_j + c sum_j w_j v_j = sum_j w_j t_j v_j``) but the rounded
operand is ``w (t - c)`` instead of ``w t``, which removes most of the bf16 cancellation that
``o = barv (1 + bart) - A2 / d1`` otherwise suffers (docs/design.md §3.2).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

NEG_INF = float("-inf")


class FwdTile(NamedTuple):
  """Per-tile quantities of the forward online update."""

  m_new: jnp.ndarray  # [..., Bq] running max after this tile
  alpha: jnp.ndarray  # [..., Bq] rescale factor of the old state
  w: jnp.ndarray  # [..., Bq, Bk] exp(s - m_new), 0 where masked
  w2c: jnp.ndarray  # [..., Bq, Bk] w * (t - c)
  center: jnp.ndarray  # [..., Bq] c, the tile's weighted mean of t
  d1: jnp.ndarray  # [..., Bq] sum(w)
  d2: jnp.ndarray  # [..., Bq] sum(w * t)


def fwd_tile(s, t, visible, m_prev) -> FwdTile:
  """Weights of one tile. ``s``: scaled scores, ``t``: r.k (both float32), ``visible``: bool."""
  s = jnp.where(visible, s, NEG_INF)
  m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1))
  # Safe max: a row that has seen nothing yet keeps m = -inf; exp(-inf - 0) = 0, never NaN.
  m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
  alpha = jnp.exp(m_prev - m_safe)
  w = jnp.exp(s - m_safe[..., None])
  d1 = jnp.sum(w, axis=-1)
  d2 = jnp.sum(w * t, axis=-1)
  center = jnp.where(d1 > 0, d2 / jnp.where(d1 > 0, d1, 1.0), 0.0)
  w2c = w * (t - center[..., None])
  return FwdTile(m_new, alpha, w, w2c, center, d1, d2)


class FwdState(NamedTuple):
  """Online forward state of a block of rows (float32)."""

  m: jnp.ndarray  # [..., Bq] running max of s (natural units), -inf before any visible key
  d1: jnp.ndarray  # [..., Bq] sum exp(s - m)
  d2: jnp.ndarray  # [..., Bq] sum exp(s - m) t
  acc1: jnp.ndarray  # [..., Bq, D] sum exp(s - m) v
  acc2: jnp.ndarray  # [..., Bq, D] sum exp(s - m) t v


def fwd_init(row_shape, d, dtype=jnp.float32) -> FwdState:
  zeros = jnp.zeros(row_shape, dtype)
  acc = jnp.zeros((*row_shape, d), dtype)
  return FwdState(jnp.full(row_shape, NEG_INF, dtype), zeros, zeros, acc, acc)


def fwd_update(state: FwdState, tile: FwdTile, pv1, pv2c) -> FwdState:
  """Fold one tile in: ``pv1 = cast(w) @ V``, ``pv2c = cast(w2c) @ V`` (float32 results)."""
  a = tile.alpha[..., None]
  return FwdState(
    m=tile.m_new,
    d1=tile.alpha * state.d1 + tile.d1,
    d2=tile.alpha * state.d2 + tile.d2,
    acc1=a * state.acc1 + pv1,
    acc2=a * state.acc2 + pv2c + tile.center[..., None] * pv1,
  )


class FwdResult(NamedTuple):
  o: jnp.ndarray  # [..., Bq, D] float32
  barv: jnp.ndarray  # [..., Bq, D] softmax output sum p v
  lse: jnp.ndarray  # [..., Bq] log sum exp(s); -inf for rows that see no key
  bart: jnp.ndarray  # [..., Bq] tbar = sum p t


def fwd_finalize(state: FwdState) -> FwdResult:
  """``o = barv - (acc2 / d1 - bart barv)``: softmax output minus Cov_p(t, v). Empty rows -> 0."""
  seen = state.d1 > 0
  inv = jnp.where(seen, 1.0 / jnp.where(seen, state.d1, 1.0), 0.0)
  barv = state.acc1 * inv[..., None]
  bart = state.d2 * inv
  o = barv - (state.acc2 * inv[..., None] - bart[..., None] * barv)
  lse = jnp.where(seen, state.m + jnp.log(jnp.where(seen, state.d1, 1.0)), NEG_INF)
  return FwdResult(o, barv, lse, bart)


def bwd_row_stats(do, o, barv):
  """Per-row backward statistics ``(dO . o, dO . barv)`` (docs/design.md §5.1), summed over the
  last (head) axis in float32 (float64 for float64 inputs): ``[..., D] -> [...]``."""
  acc = jnp.promote_types(do.dtype, jnp.float32)
  do = do.astype(acc)
  return jnp.sum(do * o.astype(acc), axis=-1), jnp.sum(do * barv.astype(acc), axis=-1)


class BwdTile(NamedTuple):
  gl: jnp.ndarray  # [..., Bq, Bk] dL/ds (s = scale q.k)
  gu: jnp.ndarray  # [..., Bq, Bk] dL/dt (t = r.k)
  pw: jnp.ndarray  # [..., Bq, Bk] effective weights a = p (1 + tbar - t)


def bwd_tile(s, t, visible, lse, bart, a, delta_o, b) -> BwdTile:
  """Closed-form backward of one tile (docs/design.md §5.2).

  Args:
    s, t: scaled scores and r.k, float32 ``[..., Bq, Bk]``.
    visible: bool mask.
    lse, bart: residual row statistics ``[..., Bq]``.
    a: ``dO @ V^T`` float32 ``[..., Bq, Bk]``.
    delta_o, b: row statistics ``dO . o`` and ``dO . barv`` ``[..., Bq]``.
  """
  p = jnp.where(visible, jnp.exp(s - jnp.where(visible, lse[..., None], 0.0)), 0.0)
  tb_minus_t = bart[..., None] - t
  delta = a - b[..., None]
  gl = p * (a - delta_o[..., None] + tb_minus_t * delta)
  gu = -p * delta
  pw = p * (1.0 + tb_minus_t)
  return BwdTile(gl, gu, pw)
