"""The KV cache of the decoder: per-layer k and v after k-norm and RoPE (docs/design.md §13.4).

``KVCache`` is a plain pytree (a NamedTuple of arrays): it passes through ``jax.jit`` /
``nnx.jit`` and can be donated. Row ``b`` holds ``lengths[b]`` valid keys in slots
``0 .. lengths[b] - 1`` of every layer (right-padded); slots past that may hold anything (the
prompt's padding, stale values) and are never visible (``masking.kv_lengths_mask``).
r is never cached: like q it belongs to the new token.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int


class KVCache(NamedTuple):
  """Per-layer ``k``, ``v`` ``[B, S, Hkv, D]`` and the valid slots per row ``lengths [B]``."""

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths: jax.Array  # [B] int32, the same for every layer

  @property
  def max_len(self) -> int:
    """S, the slots per row."""
    return self.k[0].shape[1]

  @property
  def batch(self) -> int:
    return self.k[0].shape[0]

  @property
  def num_layers(self) -> int:
    return len(self.k)


def empty_cache(
  num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype
) -> KVCache:
  """Zeros ``[batch, max_len, num_kv_heads, head_dim]`` per layer, ``lengths`` 0."""
  for name, value in (("batch", batch), ("max_len", max_len)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}.")
  shape = (batch, max_len, num_kv_heads, head_dim)
  zeros = lambda: jnp.zeros(shape, dtype)
  return KVCache(
    k=tuple(zeros() for _ in range(num_layers)),
    v=tuple(zeros() for _ in range(num_layers)),
    lengths=jnp.zeros((batch,), jnp.int32),
  )


def check_cache(cache, *, num_layers: int, batch: int, num_kv_heads: int, head_dim: int) -> None:
  """Raises a ValueError/TypeError naming what does not fit the model and the batch."""
  if not isinstance(cache, KVCache):
    raise TypeError(
      f"cache must be a KVCache (Transformer.init_cache), got {type(cache).__name__}."
    )
  if len(cache.k) != num_layers or len(cache.v) != num_layers:
    raise ValueError(
      f"cache has {len(cache.k)} k and {len(cache.v)} v layers; the model has {num_layers}: "
      f"build it with this model's init_cache."
    )
  want = (batch, cache.max_len, num_kv_heads, head_dim)
  for name, arrays in (("k", cache.k), ("v", cache.v)):
    for i, a in enumerate(arrays):
      if tuple(a.shape) != want or a.dtype != cache.k[0].dtype:
        raise ValueError(
          f"cache.{name}[{i}] has shape {tuple(a.shape)} ({a.dtype}); expected {want} "
          f"({cache.k[0].dtype}) [B, S, Hkv, D] for a batch of {batch}: build the cache with "
          f"init_cache(batch={batch}, ...)."
        )
  if tuple(cache.lengths.shape) != (batch,) or not jnp.issubdtype(cache.lengths.dtype, jnp.integer):
    raise ValueError(
      f"cache.lengths must be int [B] = ({batch},), got {tuple(cache.lengths.shape)} "
      f"{cache.lengths.dtype}."
    )


def write_chunk(
  cache_BSHD: Float[Array, "B S H D"], new_BCHD: Float[Array, "B C H D"], start: int
) -> Float[Array, "B S H D"]:
  """Writes a chunk into slots ``start .. start + C - 1`` of every row (prefill)."""
  new_BCHD = new_BCHD.astype(cache_BSHD.dtype)
  return lax.dynamic_update_slice(cache_BSHD, new_BCHD, (0, start, 0, 0))


def write_token(
  cache_BSHD: Float[Array, "B S H D"], new_BHD: Float[Array, "B H D"], lengths: Int[Array, " B"]
) -> Float[Array, "B S H D"]:
  """Writes row ``b``'s new k (or v) into slot ``lengths[b]`` (decode).

  A full row (``lengths[b] == S``) has no slot left: its write is dropped (``mode="drop"``),
  the cache is unchanged.
  """
  rows = jnp.arange(cache_BSHD.shape[0])
  return cache_BSHD.at[rows, lengths].set(new_BHD.astype(cache_BSHD.dtype), mode="drop")


def next_lengths(lengths: Int[Array, " B"], max_len: int) -> Int[Array, " B"]:
  """Valid slots after one decode step: ``lengths + 1``, kept at ``max_len`` for full rows
  (whose write was dropped; lengths past S would break the decode op's contract)."""
  return jnp.minimum(lengths.astype(jnp.int32) + 1, max_len)
