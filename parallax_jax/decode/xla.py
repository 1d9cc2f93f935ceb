"""The "xla" decode path: plain JAX on any backend, the reference the decode kernels meet.

All ``G = Hq // Hkv`` query heads of a kv head (times ``Tq`` rows) score the cache in one
batched einsum, so GQA never repeats K/V. The whole cache is one tile of ``tile_math``'s
online algorithm (one state, then ``fwd_finalize``). Cache slots a row cannot see may hold
anything, NaN included: their ``t`` and ``v`` are zeroed before they meet a zero weight
(``0 * NaN = NaN``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from parallax_jax.attention import tile_math
from parallax_jax.attention.implementations import Implementation
from parallax_jax.decode.partials import finish
from parallax_jax.decode.validation import DecodeSpec


def _precision(dtype):
  # fp32/fp64 inputs ask for full precision; bf16/fp16 operands are exact on the MXU anyway.
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else lax.Precision.DEFAULT


def _check(spec: DecodeSpec) -> None:
  t = spec.tuning
  if t.num_splits not in (None, 1) or t.block_k is not None or t.num_warps or t.num_stages:
    raise NotImplementedError(
      "implementation='xla' has no launch tuning (it scores the cache in one einsum); pass "
      "tuning=None or choose a kernel path."
    )


def decode_fwd(q, r, k_cache, v_cache, lengths, spec: DecodeSpec):
  """``[B, Tq, Hq, D]`` output of ``parallax_decode`` (see its docstring)."""
  b, tq, hq, d = q.shape
  s_len, hkv = k_cache.shape[1], k_cache.shape[2]
  g = spec.group
  acc = jnp.promote_types(q.dtype, jnp.float32)
  prec = _precision(q.dtype)
  q_ = q.reshape(b, tq, hkv, g, d)
  r_ = r.reshape(b, tq, hkv, g, d)
  lengths = lengths.astype(jnp.int32)
  # [B, Hkv, G, Tq, S] tiles; the rule is masking.kv_lengths_mask through the spec.
  rows = jnp.arange(tq, dtype=jnp.int32)[None, None, None, :, None]
  keys = jnp.arange(s_len, dtype=jnp.int32)[None, None, None, None, :]
  visible = spec.mask(lengths[:, None, None, None, None]).visible(rows, keys)
  einsum = lambda eq, x, y: jnp.einsum(eq, x, y, precision=prec, preferred_element_type=acc)
  s = einsum("bqhgd,bkhd->bhgqk", q_, k_cache) * spec.scale
  t = jnp.where(visible, einsum("bqhgd,bkhd->bhgqk", r_, k_cache), 0.0)
  in_cache = (jnp.arange(s_len)[None, :] < lengths[:, None])[:, :, None, None]  # [B, S, 1, 1]
  v = jnp.where(in_cache, v_cache, jnp.zeros((), v_cache.dtype))
  state = tile_math.fwd_init((b, hkv, g, tq), d, acc)
  tile = tile_math.fwd_tile(s, t, visible, state.m)
  cast = lambda w: w.astype(q.dtype)
  pv1 = einsum("bhgqk,bkhd->bhgqd", cast(tile.w), v)
  pv2c = einsum("bhgqk,bkhd->bhgqd", cast(tile.w2c), v)
  state = tile_math.fwd_update(state, tile, pv1, pv2c)
  o = finish(state, q.dtype)  # [B, Hkv, G, Tq, D]
  return o.transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d)


IMPLEMENTATION = Implementation(
  name="xla", fwd=decode_fwd, bwd=None, platforms=("cpu", "gpu", "tpu"), check=_check
)
