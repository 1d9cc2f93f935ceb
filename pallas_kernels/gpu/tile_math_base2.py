"""Base-2 versions of ``parallax_jax.attention.tile_math`` for the Triton kernels.

``tile_math.fwd_tile`` / ``bwd_tile`` use ``jnp.exp``, which the Pallas Triton lowering maps to
libdevice ``__nv_expf`` (accurate range reduction, several instructions) while ``jnp.exp2``
maps to ``__nv_exp2f`` (one ``ex2.approx``). The kernels therefore keep scores in base-2 units
(``s2 = scale * log2(e) * q.k``) and use the functions below, which are the same algebra as
``tile_math`` (including the exact per-tile re-centering of ``W2``); the online update and the
finalisation are reused from ``tile_math`` unchanged. ``bwd_tile2`` is also rearranged to keep
fewer live ``[Bq, Bk]`` tiles and takes ``lse2 = +inf`` on rows that see nothing, so the
unmasked tiles need no ``where``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from parallax_jax.attention import tile_math

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
NEG_INF = float("-inf")


def fwd_tile2(s2, t, visible, m_prev) -> tile_math.FwdTile:
  """``tile_math.fwd_tile`` with base-2 scores ``s2`` and running max ``m_prev`` (base 2).

  ``visible`` is a bool tile or None (unmasked tile: no ``where`` on the scores).
  """
  if visible is not None:
    s2 = jnp.where(visible, s2, NEG_INF)
  m_new = jnp.maximum(m_prev, jnp.max(s2, axis=-1))
  if visible is not None:  # safe max: unmasked tiles always have a finite row max
    m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
  else:
    m_safe = m_new
  alpha = jnp.exp2(m_prev - m_safe)
  w = jnp.exp2(s2 - m_safe[..., None])
  d1 = jnp.sum(w, axis=-1)
  d2 = jnp.sum(w * t, axis=-1)
  center = jnp.where(d1 > 0, d2 / jnp.where(d1 > 0, d1, 1.0), 0.0)
  w2c = w * (t - center[..., None])
  return tile_math.FwdTile(m_new, alpha, w, w2c, center, d1, d2)


def fwd_finalize2(state: tile_math.FwdState) -> tile_math.FwdResult:
  """``tile_math.fwd_finalize`` for a state whose running max is in base-2 units."""
  return tile_math.fwd_finalize(state._replace(m=state.m * LN2))


def bwd_tile2(s2, t, visible, lse2, bart, a, delta_o, b):
  """``tile_math.bwd_tile`` with base-2 scores; returns ``(gl, gu, pw)``.

  ``gl = p (A - T + (tbar - t) (A - b)) = pw * delta + p (b - T)`` with ``delta = A - b`` and
  ``pw = p (1 + tbar - t)``; ``gu = -p delta``. Row statistics broadcast along the last axis
  (``[..., Bq]`` against ``[..., Bq, Bk]``); pass them pre-expanded for transposed tiles.
  """
  return bwd_tile2_rows(s2, t, visible, lse2, 1.0 + bart, a, b, b - delta_o)


def bwd_tile2_rows(s2, t, visible, lse2, one_plus_bart, a, b, b_minus_delta_o):
  """``bwd_tile2`` given the two row constants it combines, ``1 + tbar`` and ``b - dO.o``: the
  same float32 operations in the same order, for kernels whose row statistics arrive already
  broadcast to the tile, where each combination would otherwise cost an operation per element
  (the Mosaic GPU backward packs them in XLA)."""
  p = jnp.exp2(s2 - lse2)
  if visible is not None:
    p = jnp.where(visible, p, 0.0)
  delta = a - b
  pw = p * (one_plus_bart - t)
  gl = pw * delta + p * b_minus_delta_o
  gu = -p * delta
  return gl, gu, pw
