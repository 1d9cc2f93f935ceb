"""Merge of the split-KV partial states in one Pallas Triton launch (docs/design.md §13.3).

The same exact merge as ``parallax_jax.decode.partials.merge_splits`` + ``finish``, folded
split by split: ``m* = max(m, m_s)``, both sides scaled by ``exp(m - m*)`` and summed, then
``tile_math.fwd_finalize``. XLA turns the jnp merge into several small fusions (a max, then
the weighted sums, then the finalisation), each one launch; at decode sizes the launches, not
the bytes, are the cost, so the kernel path merges in one program per (row, kv head, column
block).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gpu.decode_kernel import row_padding
from parallax_jax.attention import tile_math


def _merge_kernel(
  m_ref, d1_ref, d2_ref, acc1_ref, acc2_ref, o_ref, *, q_len, group, splits, block_d
):
  tq_p, g_p = row_padding(q_len, group)
  mp = tq_p * g_p
  tq_idx = lax.broadcasted_iota(jnp.int32, (tq_p, g_p), 0)
  g_idx = lax.broadcasted_iota(jnp.int32, (tq_p, g_p), 1)
  row_ok = (tq_idx < q_len) & (g_idx < group)
  rows = pl.ds(0, tq_p), pl.ds(0, g_p)

  def stat(ref, s, other):
    x = pltriton.load(ref.at[(s, *rows)], mask=row_ok, other=other)
    return x.reshape(mp)

  def acc(ref, s):
    x = pltriton.load(ref.at[(s, *rows, slice(None))], mask=row_ok[..., None], other=0.0)
    return x.reshape(mp, block_d)

  def fold(s, state):
    m_s = stat(m_ref, s, tile_math.NEG_INF)
    m = jnp.maximum(state.m, m_s)
    m_safe = jnp.where(m == tile_math.NEG_INF, 0.0, m)  # both empty: exp(-inf) = 0
    a, b = jnp.exp(state.m - m_safe), jnp.exp(m_s - m_safe)
    return tile_math.FwdState(
      m=m,
      d1=a * state.d1 + b * stat(d1_ref, s, 0.0),
      d2=a * state.d2 + b * stat(d2_ref, s, 0.0),
      acc1=a[:, None] * state.acc1 + b[:, None] * acc(acc1_ref, s),
      acc2=a[:, None] * state.acc2 + b[:, None] * acc(acc2_ref, s),
    )

  state = lax.fori_loop(0, splits, fold, tile_math.fwd_init((mp,), block_d))
  o = tile_math.fwd_finalize(state).o.reshape(tq_p, g_p, block_d).astype(o_ref.dtype)
  pltriton.store(o_ref.at[(*rows, slice(None))], o, mask=row_ok[..., None])


def merge_call(state: tile_math.FwdState, dtype, *, block_d: int, interpret: bool):
  """``o`` ``[B, Tq, Hkv, G, D]`` in ``dtype`` from the partial states of ``decode_call``
  (split axis 1); grid ``(B, Hkv, D / block_d)``."""
  b, splits, tq, hkv, g, d = state.acc1.shape
  stat_spec = pl.BlockSpec((None, splits, tq, None, g), lambda i, h, c: (i, 0, 0, h, 0))
  acc_spec = pl.BlockSpec((None, splits, tq, None, g, block_d), lambda i, h, c: (i, 0, 0, h, 0, c))
  return pl.pallas_call(
    functools.partial(_merge_kernel, q_len=tq, group=g, splits=splits, block_d=block_d),
    grid=(b, hkv, d // block_d),
    in_specs=[stat_spec, stat_spec, stat_spec, acc_spec, acc_spec],
    out_specs=pl.BlockSpec((None, tq, None, g, block_d), lambda i, h, c: (i, 0, h, 0, c)),
    out_shape=jax.ShapeDtypeStruct((b, tq, hkv, g, d), dtype),
    compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
    interpret=interpret,
    name="parallax_decode_merge",
  )(*state)
