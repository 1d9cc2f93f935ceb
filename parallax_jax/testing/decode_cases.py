"""The case grid of ``parallax_decode``, shared by every decode path's tests and experiments.

Each case is checked against the float64 oracle (``oracle.decode_mask`` + ``oracle.forward``,
both written without the package's masking code) with the training op's ``TOLERANCES``. Cache
slots past a row's length are filled with NaN: they must never reach the output.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from parallax_jax.testing import oracle
from parallax_jax.testing.attention_cases import TOLERANCES, assert_close


@dataclasses.dataclass(frozen=True)
class DecodeCase:
  """One decode problem: ``Tq`` queries per row over a cache of ``S`` slots."""

  lengths: tuple[int, ...]  # valid keys per row (the batch is its length)
  cache_len: int = 64
  q_len: int = 1
  hq: int = 2
  hkv: int = 2
  d: int = 64
  window: int | None = None
  dtype: str = "float32"
  core: bool = False  # part of the small grid interpreted kernels run by default

  @property
  def batch(self) -> int:
    return len(self.lengths)

  @property
  def id(self) -> str:
    parts = [
      "L" + "-".join(map(str, self.lengths)),
      f"S{self.cache_len}",
      f"Tq{self.q_len}",
      f"H{self.hq}-{self.hkv}",
      f"D{self.d}",
      self.dtype,
    ]
    if self.window is not None:
      parts.append(f"W{self.window}")
    return "_".join(parts)

  def with_dtype(self, dtype: str) -> DecodeCase:
    return dataclasses.replace(self, dtype=dtype)


# GQA ratios 1, 2, 3, 4, 6, 8; lengths 0 and 1; windows shorter and longer than the lengths;
# Tq > 1 (rows whose first queries sit before the cache start); D 64 and 128; caches that are
# not a multiple of any block.
_BASE = [
  DecodeCase((0, 1, 37, 64), cache_len=64, hq=8, hkv=8, core=True),
  DecodeCase((100, 5), cache_len=100, hq=4, hkv=2),
  DecodeCase((50, 1), cache_len=80, hq=6, hkv=2, window=16, core=True),
  DecodeCase((3, 70), cache_len=96, q_len=4, hq=8, hkv=2, d=128, window=128, core=True),
  DecodeCase((33, 9), cache_len=48, q_len=2, hq=6, hkv=1, window=1),
  DecodeCase((256, 129), cache_len=256, hq=8, hkv=1, d=128, window=64),
  DecodeCase((200, 0, 77), cache_len=300, q_len=3, hq=4, hkv=4),
]
DECODE_CASES = [c.with_dtype(dt) for c in _BASE for dt in ("float32", "bfloat16")]


def make_decode_inputs(case: DecodeCase, seed: int = 0):
  """``(q, r, k_cache, v_cache, lengths)``: float64 NumPy values rounded to ``case.dtype``,
  the slots at or past each row's length set to NaN."""
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  q = rng.standard_normal((case.batch, case.q_len, case.hq, case.d))
  r = rng.standard_normal(q.shape)
  k = rng.standard_normal((case.batch, case.cache_len, case.hkv, case.d))
  v = rng.standard_normal(k.shape)
  dt = jnp.dtype(case.dtype)
  q, r, k, v = (
    np.asarray(jnp.asarray(x, dt).astype(jnp.float32), np.float64) for x in (q, r, k, v)
  )
  for b, n in enumerate(case.lengths):
    k[b, n:] = np.nan
    v[b, n:] = np.nan
  return q, r, k, v, np.asarray(case.lengths, np.int32)


@functools.cache
def decode_oracle(case: DecodeCase, seed: int = 0) -> np.ndarray:
  """float64 ``[B, Tq, Hq, D]`` output of the case."""
  q, r, k, v, lengths = make_decode_inputs(case, seed)
  mask = oracle.decode_mask(lengths, case.q_len, case.cache_len, window_size=case.window)
  o, _ = oracle.forward(q, r, np.nan_to_num(k), np.nan_to_num(v), scale=case.d**-0.5, mask=mask)
  return o


def run_decode(implementation: str, case: DecodeCase, *, interpret=False, tuning=None, seed=0):
  """``parallax_decode`` of the case (jitted) through one path."""
  import jax
  import jax.numpy as jnp

  from parallax_jax import parallax_decode

  q, r, k, v, lengths = make_decode_inputs(case, seed)
  dt = jnp.dtype(case.dtype)
  q, r, k, v = (jnp.asarray(x, jnp.float32).astype(dt) for x in (q, r, k, v))
  f = jax.jit(
    lambda q, r, k, v, n: parallax_decode(
      q,
      r,
      k,
      v,
      lengths=n,
      window_size=case.window,
      implementation=implementation,
      interpret=interpret,
      tuning=tuning,
    )
  )
  return f(q, r, k, v, jnp.asarray(lengths))


def check_decode(o, case: DecodeCase, seed: int = 0) -> None:
  """Output dtype, shape and ``TOLERANCES`` against the oracle."""
  want = decode_oracle(case, seed)
  if str(o.dtype) != case.dtype or o.shape != want.shape:
    raise AssertionError(f"o: {o.dtype}{o.shape}, want {case.dtype}{want.shape}")
  assert_close("o", o, want, case.dtype)


__all__ = [
  "DECODE_CASES",
  "TOLERANCES",
  "DecodeCase",
  "check_decode",
  "decode_oracle",
  "make_decode_inputs",
  "run_decode",
]
