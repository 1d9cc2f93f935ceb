"""Shared cases, inputs, tolerances and comparisons for every implementation of the op.

One parametrised base: the test modules take ``(implementation, case)`` pairs from here, so
adding a kernel means adding one entry to ``IMPLEMENTATIONS``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest


@dataclasses.dataclass(frozen=True)
class Impl:
  """An implementation under test: its name, whether it runs as an interpreted kernel."""

  name: str
  interpret: bool = False
  # Kernel paths run in interpret mode on CPU: they take the "core" grid by default and the
  # full grid only under -m slow.
  fast_grid: bool = True

  def __str__(self):
    return self.name


IMPLEMENTATIONS = [
  Impl("reference"),
  Impl("xla"),
  Impl("pallas_gpu", interpret=True, fast_grid=False),
  Impl("pallas_tpu", interpret=True, fast_grid=False),
]


@dataclasses.dataclass(frozen=True)
class Case:
  """One problem: shapes, mask and numerics."""

  batch: int = 1
  q_len: int = 64
  kv_len: int | None = None  # None: == q_len
  hq: int = 2
  hkv: int = 2
  d: int = 32
  causal: bool = True
  window: int | None = None
  scale: float | None = None
  dtype: str = "float32"
  segments: tuple[int, ...] | None = None  # segment lengths (packed), summing to q_len
  inputs: str = "normal"  # "normal": N(0,1) like fla; "rms": q, r, k RMS-normalised
  core: bool = False  # part of the small grid kernels run by default

  @property
  def tk(self):
    return self.q_len if self.kv_len is None else self.kv_len

  @property
  def id(self):
    parts = [
      f"B{self.batch}",
      f"T{self.q_len}" + (f"x{self.kv_len}" if self.kv_len else ""),
      f"H{self.hq}-{self.hkv}",
      f"D{self.d}",
      self.dtype,
    ]
    if not self.causal:
      parts.append("noncausal")
    if self.window is not None:
      parts.append(f"W{self.window}")
    if self.scale is not None:
      parts.append(f"s{self.scale}")
    if self.segments is not None:
      parts.append("seg" + "-".join(map(str, self.segments)))
    if self.inputs != "normal":
      parts.append(self.inputs)
    return "_".join(parts)

  def segment_ids(self):
    if self.segments is None:
      return None
    assert sum(self.segments) == self.q_len, self
    ids = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(self.segments)])
    return np.stack([ids] * self.batch)


# PARALLAX.md 6.3 grids scaled to CPU, plus the odd shapes of the op issue.
CASES = [
  # Official training parity grid (B, Hq, Hkv, L, D, W), lengths scaled down.
  Case(1, 128, None, 1, 1, 64, inputs="rms", core=True),
  Case(1, 128, None, 1, 1, 128, inputs="rms"),
  Case(2, 256, None, 4, 4, 64, inputs="rms"),
  Case(1, 256, None, 8, 2, 128, inputs="rms"),
  Case(1, 192, None, 8, 1, 64, inputs="rms"),
  Case(2, 256, None, 4, 4, 128, window=64, inputs="rms"),
  Case(2, 256, None, 4, 2, 128, window=48, inputs="rms"),
  Case(1, 200, None, 8, 2, 128, window=33, inputs="rms", core=True),
  # fla grid (B, T, Hkv, Hq, D, scale) and its SWA grid.
  Case(1, 63, None, 1, 1, 64, scale=1.0, core=True),
  Case(3, 111, None, 2, 2, 100, scale=1.0),
  Case(2, 160, None, 8, 2, 60, scale=0.1, core=True),
  Case(2, 128, None, 8, 2, 128, scale=0.1),
  Case(1, 63, None, 1, 1, 64, window=16),
  Case(2, 111, None, 2, 2, 100, window=32, core=True),
  # Odd lengths and head dims, Tq < Tk, non-causal, packed.
  Case(2, 1, None, 2, 1, 64, core=True),
  Case(1, 1, 77, 4, 2, 64, core=True),
  Case(1, 1, 77, 4, 2, 64, window=20),
  Case(2, 37, 100, 4, 2, 60, core=True),
  Case(1, 50, 130, 2, 2, 100, window=45),
  Case(2, 63, None, 2, 1, 60, causal=False, core=True),
  Case(1, 40, 100, 2, 2, 64, causal=False, scale=0.1),
  Case(2, 111, None, 4, 2, 100, segments=(1, 40, 70), core=True),
  Case(1, 96, None, 2, 2, 64, segments=(30, 30, 36), window=20),
  # Windows not a multiple of any block, larger than T, and W = 1.
  Case(1, 150, None, 2, 2, 64, window=1),
  Case(1, 150, None, 2, 2, 64, window=500),
  # Half precision.
  Case(2, 128, None, 4, 2, 64, dtype="bfloat16", inputs="rms", core=True),
  Case(1, 111, None, 2, 1, 100, dtype="bfloat16", window=40, core=True),
  Case(2, 64, None, 4, 4, 128, dtype="bfloat16", scale=0.1),
  Case(1, 96, None, 2, 2, 64, dtype="float16", inputs="rms", core=True),
  Case(1, 63, None, 2, 1, 60, dtype="float16", segments=(20, 43)),
]


def cases_for(impl: Impl):
  """``pytest.param`` list of the cases this implementation runs (slow-marked beyond core)."""
  out = []
  for case in CASES:
    marks = [] if (impl.fast_grid or case.core) else [pytest.mark.slow]
    out.append(pytest.param(impl, case, id=f"{impl}-{case.id}", marks=marks))
  return out


def all_params():
  return [p for impl in IMPLEMENTATIONS for p in cases_for(impl)]


def _rms_normalize(x):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def make_inputs(case: Case, seed: int = 0):
  """NumPy float64 values already rounded to ``case.dtype``: (q, r, k, v, g)."""
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((case.batch, case.q_len, case.hq, case.d))
  r = rng.standard_normal(q.shape)
  k = rng.standard_normal((case.batch, case.tk, case.hkv, case.d))
  v = rng.standard_normal(k.shape)
  g = rng.standard_normal(q.shape)
  if case.inputs == "rms":
    q, r, k = _rms_normalize(q), _rms_normalize(r), _rms_normalize(k)
  dt = jnp.dtype(case.dtype)
  return tuple(
    np.asarray(jnp.asarray(x, dt).astype(jnp.float32), np.float64) for x in (q, r, k, v, g)
  )


def to_jax(x, dtype):
  return jnp.asarray(x, jnp.float32).astype(dtype)


@functools.cache
def oracle_result(case: Case, seed: int = 0):
  """Oracle output and gradients, computed once per case."""
  q, r, k, v, g = make_inputs(case, seed)
  scale = case.scale if case.scale is not None else 1.0 / np.sqrt(case.d)
  seg = case.segment_ids()
  mask = oracle.visible_mask(
    case.q_len, case.tk, causal=case.causal, window_size=case.window, segment_ids=seg
  )
  o, _ = oracle.forward(q, r, k, v, scale=scale, mask=mask)
  return o, oracle.grads(q, r, k, v, g, scale=scale, mask=mask)


def run_op(impl: Impl, case: Case, seed: int = 0):
  """The op's output and (dq, dr, dk, dv) under ``jax.vjp`` with the case's cotangent."""
  from parallax_jax import parallax_attention

  q, r, k, v, g = (to_jax(x, case.dtype) for x in make_inputs(case, seed))
  seg = case.segment_ids()

  def f(q, r, k, v):
    return parallax_attention(
      q,
      r,
      k,
      v,
      scale=case.scale,
      causal=case.causal,
      window_size=case.window,
      segment_ids=None if seg is None else jnp.asarray(seg),
      implementation=impl.name,
      interpret=impl.interpret,
    )

  o, vjp = jax.vjp(jax.jit(f), q, r, k, v)
  return o, vjp(g)


# Tolerances per dtype: (max-norm relative error, RMS ratio). fp32 is set by float32 rounding
# of O(D)-sized dot products; bf16/fp16 by one rounding of the inputs of each matmul.
TOLERANCES = {
  "float32": (2e-5, 2e-5),
  "bfloat16": (2e-2, 2e-2),
  "float16": (5e-3, 5e-3),
}


def errors(actual, expected, natural_scale=0.0):
  """(max |a - e| / max |e|, RMS(a - e) / RMS(e)) in float64.

  A reference that is exactly zero in exact arithmetic (dq, dr, dk when every row sees a
  single key: T = 1 or W = 1) has no scale of its own; it is judged against
  ``natural_scale`` (see ``natural_scale``), the size of the terms that cancel to give it.
  """
  a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  e = np.asarray(expected, np.float64)
  assert a.shape == e.shape, (a.shape, e.shape)
  e_max, e_rms = np.max(np.abs(e)), np.sqrt(np.mean(e * e))
  if e_max <= 1e-12 * natural_scale:
    e_max = e_rms = natural_scale
  return (
    np.max(np.abs(a - e)) / max(e_max, 1e-30),
    np.sqrt(np.mean((a - e) ** 2)) / max(e_rms, 1e-30),
  )


def natural_scale(case: Case, seed: int = 0):
  """``max|dO| max|v| max(|q|, |r|, |k|)``: the size of the terms (``dO.v`` products times a
  q, r or k row) whose differences make up dq, dr and dk."""
  q, r, k, v, g = make_inputs(case, seed)
  qrk = max(np.max(np.abs(x)) for x in (q, r, k))
  return float(np.max(np.abs(g)) * np.max(np.abs(v)) * qrk)


def assert_close(name, actual, expected, dtype, natural=0.0):
  max_tol, rms_tol = TOLERANCES[dtype]
  max_err, rms_err = errors(actual, expected, natural)
  assert np.all(np.isfinite(np.asarray(jnp.asarray(actual, jnp.float32)))), f"{name}: non-finite"
  assert max_err < max_tol and rms_err < rms_tol, (
    f"{name}: max-norm rel err {max_err:.3g} (tol {max_tol}), RMS ratio {rms_err:.3g} "
    f"(tol {rms_tol})"
  )
