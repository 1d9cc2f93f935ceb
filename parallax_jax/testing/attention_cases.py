"""The one case grid and tolerance table for every implementation of the op.

Every path (reference, xla, pallas_gpu, pallas_tpu; interpret mode on CPU or compiled on the
accelerator) is checked on ``CASES`` against the float64 NumPy oracle (``oracle.py``) with
``TOLERANCES``. ``tests/attention_cases.py`` turns these into pytest parameters;
``experiments/gpu_smoke.py`` runs them outside pytest. ``BENCHMARK_SHAPES`` are the shapes the
kernel benchmarks time.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from parallax_jax.testing import oracle


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
  core: bool = False  # part of the small grid interpreted kernels run by default

  @property
  def tk(self) -> int:
    return self.q_len if self.kv_len is None else self.kv_len

  @property
  def id(self) -> str:
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

  def segment_ids(self) -> np.ndarray | None:
    """``[B, T]`` int32 ids of the packed segments, or None."""
    if self.segments is None:
      return None
    assert sum(self.segments) == self.q_len, self
    ids = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(self.segments)])
    return np.stack([ids] * self.batch)


# The training-parity and fla grids scaled to CPU, plus the odd shapes the kernels must handle.
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
  # Odd lengths and head dims, Tq < Tk, Tq > Tk (leading rows see no key), non-causal, packed.
  Case(2, 1, None, 2, 1, 64, core=True),
  Case(1, 1, 77, 4, 2, 64, core=True),
  Case(1, 1, 77, 4, 2, 64, window=20),
  Case(2, 37, 100, 4, 2, 60, core=True),
  Case(1, 50, 130, 2, 2, 100, window=45),
  Case(1, 150, 60, 2, 1, 32, core=True),
  Case(2, 63, None, 2, 1, 60, causal=False, core=True),
  Case(1, 40, 100, 2, 2, 64, causal=False, scale=0.1),
  Case(2, 111, None, 4, 2, 100, segments=(1, 40, 70), core=True),
  Case(1, 96, None, 2, 2, 64, segments=(30, 30, 36), window=20),
  # Windows not a multiple of any block, larger than T, and W = 1. T = 256 with W = 200: the
  # first row of a 128-row tile sees key tile 0 whole, its last row does not (the tile is
  # masked, not full); T = 300 with W = 128 spans several tiles of unequal q/k blocks.
  Case(1, 150, None, 2, 2, 64, window=1),
  Case(1, 150, None, 2, 2, 64, window=500),
  Case(1, 256, None, 2, 1, 64, window=200, core=True),
  Case(1, 300, None, 2, 1, 64, window=128),
  # Half precision.
  Case(2, 128, None, 4, 2, 64, dtype="bfloat16", inputs="rms", core=True),
  Case(1, 111, None, 2, 1, 100, dtype="bfloat16", window=40, core=True),
  Case(2, 64, None, 4, 4, 128, dtype="bfloat16", scale=0.1),
  # W = 1 in bfloat16: each row's one key gives t - bart = 0 exactly, so the output is exact
  # only where W2 is rounded about a centre (design §3.2); without it, w t rounds in bf16.
  Case(1, 128, None, 2, 2, 64, dtype="bfloat16", window=1),
  Case(1, 96, None, 2, 2, 64, dtype="float16", inputs="rms", core=True),
  Case(1, 63, None, 2, 1, 60, dtype="float16", segments=(20, 43)),
]

CORE_CASES = [c for c in CASES if c.core]

# Tolerances per dtype: (max-norm relative error, RMS ratio) against the float64 oracle. fp32 is
# set by float32 rounding of O(D)-sized dot products; bf16/fp16 by one rounding of the inputs
# of each matmul. The same for every implementation and every mode (interpret or compiled).
TOLERANCES = {
  "float32": (2e-5, 2e-5),
  "bfloat16": (2e-2, 2e-2),
  "float16": (5e-3, 5e-3),
}


@dataclasses.dataclass(frozen=True)
class BenchmarkShape:
  """One kernel-benchmark problem: ``[batch, length, heads, head_dim]`` for q, r, k and v."""

  batch: int
  length: int
  heads: int = 16
  head_dim: int = 128
  dtype: str = "bfloat16"
  causal: bool = True

  @property
  def id(self) -> str:
    return f"{self.batch}x{self.length}"


# The shapes experiments/bench_kernels.py times (and its committed results show).
BENCHMARK_SHAPES = [
  BenchmarkShape(4, 4096),
  BenchmarkShape(2, 8192),
  BenchmarkShape(8, 2048),
  BenchmarkShape(1, 16384),
]


def _rms_normalize(x):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def make_inputs(case: Case, seed: int = 0):
  """NumPy float64 values already rounded to ``case.dtype``: (q, r, k, v, g)."""
  import jax.numpy as jnp

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


def scale_of(case: Case) -> float:
  return case.scale if case.scale is not None else 1.0 / np.sqrt(case.d)


@functools.cache
def oracle_result(case: Case, seed: int = 0):
  """Oracle output and gradients ``(o, (dq, dr, dk, dv))`` in float64, computed once per case."""
  q, r, k, v, g = make_inputs(case, seed)
  seg = case.segment_ids()
  mask = oracle.visible_mask(
    case.q_len, case.tk, causal=case.causal, window_size=case.window, segment_ids=seg
  )
  o, _ = oracle.forward(q, r, k, v, scale=scale_of(case), mask=mask)
  return o, oracle.grads(q, r, k, v, g, scale=scale_of(case), mask=mask)


def run_op(
  implementation: str,
  case: Case,
  *,
  interpret: bool = False,
  block_sizes: object | None = None,
  seed: int = 0,
  deterministic: bool = True,
):
  """The op's output and ``(dq, dr, dk, dv)`` under ``jax.vjp`` with the case's cotangent."""
  import jax
  import jax.numpy as jnp

  from parallax_jax import parallax_attention

  dt = jnp.dtype(case.dtype)
  q, r, k, v, g = (jnp.asarray(x, jnp.float32).astype(dt) for x in make_inputs(case, seed))
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
      implementation=implementation,
      interpret=interpret,
      block_sizes=block_sizes,
      deterministic=deterministic,
    )

  o, vjp = jax.vjp(jax.jit(f), q, r, k, v)
  return o, vjp(g)


def errors(actual, expected, natural_scale: float = 0.0) -> tuple[float, float]:
  """(max |a - e| / max |e|, RMS(a - e) / RMS(e)) in float64.

  A reference that is exactly zero in exact arithmetic (dq, dr, dk when every row sees a
  single key: T = 1 or W = 1) has no scale of its own; it is judged against
  ``natural_scale`` (see ``natural_scale``), the size of the terms that cancel to give it.
  """
  a = np.asarray(np.asarray(actual, np.float32), np.float64)
  e = np.asarray(expected, np.float64)
  assert a.shape == e.shape, (a.shape, e.shape)
  e_max, e_rms = np.max(np.abs(e)), np.sqrt(np.mean(e * e))
  if e_max <= 1e-12 * natural_scale:
    e_max = e_rms = natural_scale
  return (
    float(np.max(np.abs(a - e)) / max(e_max, 1e-30)),
    float(np.sqrt(np.mean((a - e) ** 2)) / max(e_rms, 1e-30)),
  )


def natural_scale(case: Case, seed: int = 0) -> float:
  """``max|dO| max|v| max(|q|, |r|, |k|)``: the size of the terms (``dO.v`` products times a
  q, r or k row) whose differences make up dq, dr and dk."""
  q, r, k, v, g = make_inputs(case, seed)
  qrk = max(np.max(np.abs(x)) for x in (q, r, k))
  return float(np.max(np.abs(g)) * np.max(np.abs(v)) * qrk)


def assert_close(name: str, actual, expected, dtype: str, natural: float = 0.0) -> None:
  """Raises AssertionError unless ``actual`` is finite and within ``TOLERANCES[dtype]``."""
  max_tol, rms_tol = TOLERANCES[dtype]
  a = np.asarray(actual, np.float32)
  if not np.all(np.isfinite(a)):
    raise AssertionError(f"{name}: non-finite entries")
  max_err, rms_err = errors(a, expected, natural)
  if not (max_err < max_tol and rms_err < rms_tol):
    raise AssertionError(
      f"{name}: max-norm rel err {max_err:.3g} (tol {max_tol}), RMS ratio {rms_err:.3g} "
      f"(tol {rms_tol})"
    )


def check_case(o, grads, case: Case, seed: int = 0) -> None:
  """Output and gradients of ``run_op`` against the oracle: dtypes, shapes and tolerances."""
  o_ref, grads_ref = oracle_result(case, seed)
  natural = natural_scale(case, seed)
  for name, got, want in zip(
    ("o", "dq", "dr", "dk", "dv"), (o, *grads), (o_ref, *grads_ref), strict=True
  ):
    if str(got.dtype) != case.dtype or got.shape != want.shape:
      raise AssertionError(f"{name}: {got.dtype}{got.shape}, want {case.dtype}{want.shape}")
    assert_close(name, got, want, case.dtype, natural)
