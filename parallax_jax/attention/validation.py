"""Argument checks of ``parallax_attention``: every bad input gets an error naming it."""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from parallax_jax.attention.masking import MaskSpec

SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class CallSpec:
  """Static facts of one validated call (hashable: used as a custom_vjp static argument)."""

  scale: float
  mask: MaskSpec
  dtype: str
  batch: int
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  has_segment_ids: bool
  interpret: bool
  block_sizes: object | None = None
  deterministic: bool = True  # False: a path may run a non-reproducible (atomic) backward

  @property
  def group(self) -> int:
    return self.num_q_heads // self.num_kv_heads


def array_shape(name, x) -> tuple[int, ...]:
  """The shape of array argument ``name``; TypeError if it is not an array."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
  return tuple(x.shape)


def common_dtype(arrays: dict, op: str) -> str:
  """The one float dtype of ``arrays`` (name -> array); TypeError naming the odd one out."""
  dtypes = {n: jnp.dtype(x.dtype) for n, x in arrays.items()}
  allowed = [jnp.dtype(t) for t in SUPPORTED_DTYPES]
  if jax.config.jax_enable_x64:
    allowed.append(jnp.dtype(jnp.float64))
  for name, dt in dtypes.items():
    if dt not in allowed:
      raise TypeError(f"{name} has dtype {dt}; {op} takes {', '.join(map(str, allowed))}.")
  if len(set(dtypes.values())) != 1:
    raise TypeError(
      f"{', '.join(dtypes)} must share one dtype, got "
      f"{ {n: str(t) for n, t in dtypes.items()} }; cast them first."
    )
  return str(next(iter(dtypes.values())))


def static_scale(scale, head_dim: int) -> float:
  """``scale`` as a finite Python float (None: ``1 / sqrt(D)``)."""
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if (
    isinstance(scale, jax.core.Tracer)
    or not isinstance(scale, numbers.Real | np.ndarray)
    or np.ndim(scale) != 0
    or np.asarray(scale).dtype == bool  # True is a Real, but no one means a scale of 1.0 by it
  ):
    raise TypeError(
      f"scale must be a static Python float (or None for 1/sqrt(D)), got {type(scale).__name__}."
    )
  scale = float(scale)
  if not math.isfinite(scale):
    raise ValueError(f"scale must be finite, got {scale}.")
  return scale


def window(window_size, kv_len: int) -> int | None:
  """``window_size`` as an int in ``[1, kv_len]`` or None.

  No query sits past key ``kv_len - 1``, so a window of ``kv_len`` keys already masks nothing;
  capping it there keeps the masks' int32 bound ``pos - W + 1`` from wrapping around (a window
  near 2**31, an idiom for "no window", otherwise hid keys from rows at negative positions).
  """
  if window_size is None:
    return None
  if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral):
    raise TypeError(f"window_size must be an int or None, got {window_size!r}.")
  if window_size < 1:
    raise ValueError(
      f"window_size must be >= 1 (the number of most recent keys kept, "
      f"diagonal included) or None for no window, got {window_size}."
    )
  return min(int(window_size), kv_len)


def mask_args(causal, window_size, kv_len: int) -> int | None:
  """Checks ``causal`` (a bool) and ``window_size`` (``window``; only with ``causal``) and
  returns the window as ``window`` does."""
  if not isinstance(causal, bool | np.bool_):
    raise TypeError(f"causal must be a bool, got {causal!r}.")
  window_size = window(window_size, kv_len)
  if window_size is not None and not causal:
    raise ValueError(
      "window_size needs causal=True: the window keeps the W most recent keys "
      "up to the diagonal. Pass causal=True or window_size=None."
    )
  return window_size


def validate(
  q, r, k, v, *, scale, causal, window_size, segment_ids, interpret, block_sizes, deterministic=True
) -> CallSpec:
  """Checks the arguments of ``parallax_attention`` and returns the static ``CallSpec``."""
  shapes = {n: array_shape(n, x) for n, x in (("q", q), ("r", r), ("k", k), ("v", v))}
  layouts = {
    "q": "[B, Tq, Hq, D]",
    "r": "[B, Tq, Hq, D]",
    "k": "[B, Tk, Hkv, D]",
    "v": "[B, Tk, Hkv, D]",
  }
  for name, shape in shapes.items():
    if len(shape) != 4:
      raise ValueError(f"{name} must have rank 4 {layouts[name]}, got shape {shape}.")
  if shapes["r"] != shapes["q"]:
    raise ValueError(f"r must have q's shape {shapes['q']}, got {shapes['r']}.")
  if shapes["v"] != shapes["k"]:
    raise ValueError(f"v must have k's shape {shapes['k']}, got {shapes['v']}.")
  batch, q_len, hq, d = shapes["q"]
  _, kv_len, hkv, dk = shapes["k"]
  if shapes["k"][0] != batch:
    raise ValueError(f"k and v must have q's batch size {batch}, got {shapes['k'][0]}.")
  if dk != d:
    raise ValueError(f"k and v must have q's head dim D={d}, got {dk}.")
  if min(batch, q_len, kv_len, hq, hkv, d) < 1:  # as decode: an empty batch is a mistake too
    raise ValueError(f"empty inputs: q shape {shapes['q']}, k shape {shapes['k']}.")
  if hq % hkv:
    raise ValueError(
      f"the number of query heads ({hq}, q.shape[2]) must be a multiple of the number of "
      f"kv heads ({hkv}, k.shape[2])."
    )

  dtype = common_dtype({"q": q, "r": r, "k": k, "v": v}, "parallax_attention")
  scale = static_scale(scale, d)

  window_size = mask_args(causal, window_size, kv_len)

  if segment_ids is not None:
    seg_shape = array_shape("segment_ids", segment_ids)
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise TypeError(f"segment_ids must have an integer dtype, got {segment_ids.dtype}.")
    if q_len != kv_len:
      raise ValueError(f"segment_ids needs self-attention (Tq == Tk), got Tq={q_len}, Tk={kv_len}.")
    if seg_shape != (batch, q_len):
      raise ValueError(f"segment_ids must have shape [B, T] = {(batch, q_len)}, got {seg_shape}.")
  if not isinstance(interpret, bool):
    raise TypeError(f"interpret must be a bool, got {interpret!r}.")
  if not isinstance(deterministic, bool | np.bool_):
    raise TypeError(f"deterministic must be a bool, got {deterministic!r}.")

  return CallSpec(
    scale=scale,
    mask=MaskSpec(q_len=q_len, kv_len=kv_len, causal=bool(causal), window_size=window_size),
    dtype=dtype,
    batch=batch,
    num_q_heads=hq,
    num_kv_heads=hkv,
    head_dim=d,
    has_segment_ids=segment_ids is not None,
    interpret=interpret,
    block_sizes=block_sizes,
    deterministic=bool(deterministic),
  )
