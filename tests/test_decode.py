"""``parallax_decode``: every path against the float64 oracle on one case grid, its agreement
with the training op, and its argument checks.

Kernel paths run in Pallas interpret mode here (core cases by default, the rest under
``-m slow``); ``python -m pytest -m gpu`` runs the compiled GPU kernel on the same grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import Impl, require_gpu

from parallax_jax import DecodeTuning, parallax_attention, parallax_decode
from parallax_jax.testing.decode_cases import (
  DECODE_CASES,
  DecodeCase,
  check_decode,
  decode_oracle,
  make_decode_inputs,
  run_decode,
)

IMPLEMENTATIONS = [
  Impl("xla"),
  Impl("pallas_gpu", interpret=True, fast_grid=False),
  Impl("pallas_tpu", interpret=True, fast_grid=False),
]


def _params():
  out = []
  for impl in IMPLEMENTATIONS:
    for case in DECODE_CASES:
      marks = [] if (impl.fast_grid or case.core) else [pytest.mark.slow]
      out.append(pytest.param(impl, case, id=f"{impl}-{case.id}", marks=marks))
  return out


@pytest.mark.parametrize("impl, case", _params())
def test_decode_matches_oracle(impl: Impl, case: DecodeCase):
  o = run_decode(impl.name, case, interpret=impl.interpret)
  check_decode(o, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.id)
def test_decode_gpu_compiled(case: DecodeCase):
  require_gpu()
  check_decode(run_decode("pallas_gpu", case), case)


# A window near or past 2**31 (an idiom for "no window") masks nothing. A row shorter than Tq
# (queries at negative positions) once wrapped the TPU kernel's int32 key range and saw no key;
# W >= 2**31 raised OverflowError from inside JAX.
@pytest.mark.parametrize("window", [2**31 - 1, 2**40], ids=["int32max", "2pow40"])
@pytest.mark.parametrize("impl", [Impl("xla"), Impl("pallas_tpu", interpret=True)], ids=str)
def test_huge_window_masks_nothing(impl: Impl, window):
  case = DecodeCase((2, 40), cache_len=40, q_len=5, hq=2, hkv=1, d=16, window=window)
  check_decode(run_decode(impl.name, case, interpret=impl.interpret), case)


def test_oracle_sees_the_planted_rule():
  """The oracle's mask: a row of length 5 with Tq = 2 and W = 2 sees keys {2, 3} and {3, 4}."""
  from parallax_jax.testing import oracle

  m = oracle.decode_mask([5], 2, 8, window_size=2)[0]
  assert [list(np.flatnonzero(row)) for row in m] == [[2, 3], [3, 4]]


@pytest.mark.parametrize("window", [None, 24])
def test_decode_equals_last_rows_of_training_op(window):
  """Decode over a full-length cache = the last Tq rows of ``parallax_attention`` (reference)."""
  case = DecodeCase((40, 40), cache_len=40, q_len=3, hq=4, hkv=2, d=32, window=window)
  q_all, r_all, k, v, lengths = make_decode_inputs(case)
  rng = np.random.default_rng(1)
  q_all = rng.standard_normal((2, 40, 4, 32))
  r_all = rng.standard_normal(q_all.shape)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  full = parallax_attention(
    f32(q_all), f32(r_all), f32(k), f32(v), window_size=window, implementation="reference"
  )
  o = parallax_decode(
    f32(q_all[:, -3:]),
    f32(r_all[:, -3:]),
    f32(k),
    f32(v),
    lengths=jnp.asarray(lengths),
    window_size=window,
  )
  np.testing.assert_allclose(np.asarray(o), np.asarray(full[:, -3:]), rtol=2e-5, atol=2e-5)


def test_zero_r_is_softmax_decode():
  case = DecodeCase((30, 7), cache_len=32, hq=4, hkv=2, d=32)
  q, _, k, v, lengths = make_decode_inputs(case)
  k, v = np.nan_to_num(k), np.nan_to_num(v)
  q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
  o = parallax_decode(q, jnp.zeros_like(q), k, v, lengths=jnp.asarray(lengths))
  want = jax.nn.dot_product_attention(
    q, k, v, key_value_seq_lengths=jnp.asarray(lengths), implementation="xla"
  )
  np.testing.assert_allclose(np.asarray(o), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_traced_lengths_are_not_checked_but_work():
  case = DECODE_CASES[0]
  o = run_decode("xla", case)  # run_decode jits: lengths is traced
  np.testing.assert_allclose(np.asarray(o), decode_oracle(case), rtol=2e-5, atol=2e-5)


# Bad input: one clear error naming the argument -------------------------------------------------
_Q = jnp.zeros((2, 1, 4, 16))
_K = jnp.zeros((2, 8, 2, 16))
_N = jnp.array([3, 8], jnp.int32)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(q=jnp.zeros((2, 4, 16))), ValueError, "q must have rank 4"),
    (dict(r=jnp.zeros((2, 1, 4, 8))), ValueError, "r must have q's shape"),
    (dict(v_cache=jnp.zeros((2, 9, 2, 16))), ValueError, "v_cache must have k_cache's shape"),
    (
      dict(k_cache=jnp.zeros((2, 8, 3, 16)), v_cache=jnp.zeros((2, 8, 3, 16))),
      ValueError,
      "multiple of the number of kv heads",
    ),
    (
      dict(k_cache=jnp.zeros((3, 8, 2, 16)), v_cache=jnp.zeros((3, 8, 2, 16))),
      ValueError,
      "batch size",
    ),
    (dict(r=jnp.zeros((2, 1, 4, 16), jnp.bfloat16)), TypeError, "share one dtype"),
    (dict(q=jnp.zeros((2, 1, 4, 16), jnp.int32)), TypeError, "q has dtype int32"),
    (dict(lengths=jnp.array([3], jnp.int32)), ValueError, "lengths must have shape"),
    (dict(lengths=jnp.array([[3, 4]], jnp.int32)), ValueError, "lengths must have shape"),
    (dict(lengths=jnp.array([3.0, 4.0])), TypeError, "lengths must have an integer dtype"),
    (dict(lengths=jnp.array([3, 9], jnp.int32)), ValueError, "lengths must be <= the cache"),
    (dict(lengths=jnp.array([-1, 2], jnp.int32)), ValueError, "lengths must be >= 0"),
    (dict(window_size=0), ValueError, "window_size must be >= 1"),
    (dict(scale="0.1"), TypeError, "scale must be a static Python float"),
    (dict(scale=True), TypeError, "scale must be a static Python float"),
    (dict(implementation="nope"), ValueError, "implementation must be None or one of"),
    (dict(tuning=DecodeTuning(num_splits=4)), NotImplementedError, "no launch tuning"),
    (dict(implementation="pallas_gpu"), NotImplementedError, "runs on gpu"),
  ],
)
def test_bad_inputs(kwargs, error, match):
  args = dict(q=_Q, r=_Q, k_cache=_K, v_cache=_K, lengths=_N)
  args.update(kwargs)
  q, r, k, v = (args.pop(n) for n in ("q", "r", "k_cache", "v_cache"))
  if "tuning" in args:
    args.setdefault("implementation", "xla")
  with pytest.raises(error, match=match):
    parallax_decode(q, r, k, v, **args)


def test_bad_tuning_values():
  with pytest.raises(ValueError, match="DecodeTuning.num_splits must be >= 1"):
    DecodeTuning(num_splits=0)
  with pytest.raises(TypeError, match="DecodeTuning.block_k must be an int"):
    DecodeTuning(block_k=64.0)
