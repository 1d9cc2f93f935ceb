"""Argument checks of ``parallax_decode``: every bad input gets an error naming it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from parallax_jax.attention.masking import ChunkMask, kv_lengths_mask
from parallax_jax.attention.validation import array_shape, common_dtype, static_scale, window


@dataclasses.dataclass(frozen=True)
class DecodeTuning:
  """Launch choices of the decode kernels (None: the path's documented default).

  Attributes:
    num_splits: split-KV count, the number of programs sharing one (row, kv head)'s keys; their
      float32 partial states are merged afterwards (docs/design.md §13.3). None: the
      heuristic of ``parallax_jax.decode.splits``.
    block_k: keys per tile of the kernel's loop.
    num_warps, num_stages: Triton launch parameters ("pallas_gpu" only).
  """

  num_splits: int | None = None
  block_k: int | None = None
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    for name in ("num_splits", "block_k", "num_warps", "num_stages"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"DecodeTuning.{name} must be an int or None, got {value!r}.")
      if value is not None and value < 1:
        raise ValueError(f"DecodeTuning.{name} must be >= 1 or None, got {value}.")


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Static facts of one validated decode call (hashable: a jit static argument)."""

  scale: float
  q_len: int  # Tq, the queries per row (the last Tq of each row's valid positions)
  cache_len: int  # S, the cache's capacity
  window_size: int | None
  dtype: str
  batch: int
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  interpret: bool
  tuning: DecodeTuning = DecodeTuning()

  @property
  def group(self) -> int:
    return self.num_q_heads // self.num_kv_heads

  def mask(self, lengths) -> ChunkMask:
    """The visibility rule of rows with ``lengths`` valid keys (shaped to broadcast against the
    query index it is compared with)."""
    return kv_lengths_mask(self.q_len, self.cache_len, lengths, self.window_size)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def validate_decode(
  q, r, k_cache, v_cache, *, lengths, scale, window_size, interpret, tuning
) -> DecodeSpec:
  """Checks the arguments of ``parallax_decode`` and returns the static ``DecodeSpec``."""
  layouts = {
    "q": "[B, Tq, Hq, D]",
    "r": "[B, Tq, Hq, D]",
    "k_cache": "[B, S, Hkv, D]",
    "v_cache": "[B, S, Hkv, D]",
  }
  arrays = {"q": q, "r": r, "k_cache": k_cache, "v_cache": v_cache}
  shapes = {n: array_shape(n, x) for n, x in arrays.items()}
  for name, shape in shapes.items():
    if len(shape) != 4:
      raise ValueError(f"{name} must have rank 4 {layouts[name]}, got shape {shape}.")
  if shapes["r"] != shapes["q"]:
    raise ValueError(f"r must have q's shape {shapes['q']}, got {shapes['r']}.")
  if shapes["v_cache"] != shapes["k_cache"]:
    raise ValueError(
      f"v_cache must have k_cache's shape {shapes['k_cache']}, got {shapes['v_cache']}."
    )
  batch, q_len, hq, d = shapes["q"]
  kb, cache_len, hkv, dk = shapes["k_cache"]
  if kb != batch:
    raise ValueError(f"k_cache and v_cache must have q's batch size {batch}, got {kb}.")
  if dk != d:
    raise ValueError(f"k_cache and v_cache must have q's head dim D={d}, got {dk}.")
  if min(batch, q_len, hq, d, cache_len, hkv) < 1:
    raise ValueError(f"empty inputs: q shape {shapes['q']}, k_cache shape {shapes['k_cache']}.")
  if hq % hkv:
    raise ValueError(
      f"the number of query heads ({hq}, q.shape[2]) must be a multiple of the number of "
      f"kv heads ({hkv}, k_cache.shape[2])."
    )

  dtype = common_dtype(arrays, "parallax_decode")

  lshape = array_shape("lengths", lengths)
  if lshape != (batch,):
    raise ValueError(
      f"lengths must have shape [B] = ({batch},) (valid keys per row), got {lshape}."
    )
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"lengths must have an integer dtype (int32), got {lengths.dtype}.")
  if _is_concrete(lengths):
    values = np.asarray(lengths)
    if (values < 0).any():
      raise ValueError(f"lengths must be >= 0, got {values.min()} (row {values.argmin()}).")
    if (values > cache_len).any():
      raise ValueError(
        f"lengths must be <= the cache length S={cache_len} (k_cache.shape[1]), got "
        f"{values.max()} (row {values.argmax()})."
      )

  scale = static_scale(scale, d)
  window_size = window(window_size, cache_len)
  if not isinstance(interpret, bool):
    raise TypeError(f"interpret must be a bool, got {interpret!r}.")
  if tuning is None:
    tuning = DecodeTuning()
  elif not isinstance(tuning, DecodeTuning):
    raise TypeError(f"tuning must be a DecodeTuning or None, got {type(tuning).__name__}.")

  return DecodeSpec(
    scale=scale,
    q_len=q_len,
    cache_len=cache_len,
    window_size=window_size,
    dtype=dtype,
    batch=batch,
    num_q_heads=hq,
    num_kv_heads=hkv,
    head_dim=d,
    interpret=interpret,
    tuning=tuning,
  )
