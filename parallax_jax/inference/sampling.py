"""Next-token sampling on float32 logits: greedy, temperature, top-k, top-p (docs/design.md §13.5).

``sample`` is pure and jit-able; ``SamplingConfig`` is a frozen (hashable) dataclass, so a
jitted generation loop takes it as a static argument.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from parallax_jax.errors import UserError

_F32_TINY, _F32_MAX = float(jnp.finfo(jnp.float32).tiny), float(jnp.finfo(jnp.float32).max)


def is_number(value, kind: type = numbers.Real) -> bool:
  """A number of ``kind`` (``numbers.Real``, ``numbers.Integral``), Python's or NumPy's
  (``np.float32``, ``np.int64`` from array arithmetic), not a bool."""
  return isinstance(value, kind) and not isinstance(value, bool | np.bool_)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen from the logits.

  Attributes:
    temperature: 0 is greedy (argmax); > 0 divides the logits before sampling.
    top_k: keep only the ``top_k`` most likely tokens (None: all).
    top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
      (after ``top_k``) reaches ``top_p``, in (0, 1]; the most likely token is always kept
      (None or 1: all).

  ``top_k`` and ``top_p`` do not change a greedy choice (the argmax is always kept).
  """

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    def bad(field: str, why: str):
      # Named as the field and its flag (--top-p for top_p), for the CLI's one-line error.
      flag = field.replace("_", "-")
      raise UserError(f"sampling {field}={getattr(self, field)!r} (--{flag}): {why}")

    t = self.temperature
    if not is_number(t, numbers.Real) or not 0 <= t < math.inf:
      bad("temperature", "must be a finite number >= 0 (0: greedy)")
    k = self.top_k
    if k is not None and (not is_number(k, numbers.Integral) or k < 1):
      bad("top_k", "must be an int >= 1, or None for no top-k filter")
    p = self.top_p
    if p is not None and (not is_number(p, numbers.Real) or not 0 < p <= 1):
      bad("top_p", "must be a number in (0, 1], or None for no nucleus filter")
    # Python numbers: one setting is one (hashable, static) jit argument whatever its type.
    object.__setattr__(self, "temperature", float(t))
    if k is not None:
      object.__setattr__(self, "top_k", int(k))
    if p is not None:
      object.__setattr__(self, "top_p", float(p))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def sample(
  logits_BV: Float[Array, "B V"],
  key: jax.Array,
  cfg: SamplingConfig,
  *,
  vocab_size: int | None = None,
) -> Int[Array, " B"]:
  """One token per row, int32 ``[B]``.

  ``key``: one key for the batch, or one per row ``[B]`` (each row then drawn on its own: its
  token depends only on its logits and its key, not on the other rows or its index); unused
  when greedy. ``vocab_size``: the tokenizer's vocabulary; ids ``>= vocab_size`` (the embedding
  table is padded to a multiple of 128) are never chosen.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  v = logits_BV.shape[-1]
  if vocab_size is not None:
    if not 1 <= vocab_size <= v:
      raise ValueError(f"vocab_size={vocab_size} must lie in 1 .. {v} (the logits' last axis)")
    logits_BV = jnp.where(jnp.arange(v) < vocab_size, logits_BV, -jnp.inf)
  if cfg.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  # The largest logit shifted to 0, then times 1 / temperature kept in float32's normal range
  # (XLA flushes subnormals to 0): a tiny temperature sends the others to -inf, never several
  # to +inf (categorical drew the lowest id among them), and neither extreme makes 0 * inf or
  # -inf * 0 = NaN (which categorical drew first: an id >= vocab_size).
  inv_t = min(max(1 / cfg.temperature, _F32_TINY), _F32_MAX)
  logits_BV = (logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True)) * inv_t
  top_p = None if cfg.top_p is None or cfg.top_p >= 1 else cfg.top_p
  if cfg.top_k is None and top_p is None:
    return _categorical(key, logits_BV).astype(jnp.int32)
  # Sort once (descending): top-k is a prefix, and the nucleus is a prefix of that.
  k = v if cfg.top_k is None else min(cfg.top_k, v)
  vals_BK, ids_BK = jax.lax.top_k(logits_BV, k)
  if top_p is not None:
    probs_BK = jax.nn.softmax(vals_BK, axis=-1)
    # Keep a token if the tokens ranked above it hold less than top_p: the first is always kept.
    before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
    vals_BK = jnp.where(before_BK < top_p, vals_BK, -jnp.inf)
  choice_B = _categorical(key, vals_BK)
  return jnp.take_along_axis(ids_BK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _categorical(key: jax.Array, logits_BK: Float[Array, "B K"]) -> Int[Array, " B"]:
  """A draw per row: with one key for the batch, row ``b``'s noise is that key's ``b``-th block;
  with keys ``[B]``, row ``b`` draws from ``key[b]`` alone."""
  if key.ndim == 0:
    return jax.random.categorical(key, logits_BK, axis=-1)
  return jax.vmap(lambda k, logits_K: jax.random.categorical(k, logits_K))(key, logits_BK)
