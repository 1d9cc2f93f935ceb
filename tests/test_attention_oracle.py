"""Every implementation against the float64 NumPy oracle: output and all four gradients."""

import jax.numpy as jnp
import pytest
from attention_cases import (
  Case,
  Impl,
  all_params,
  assert_close,
  check_case,
  natural_scale,
  oracle_result,
  run_op,
)


@pytest.mark.parametrize("impl,case", all_params())
def test_matches_oracle(impl, case):
  o_ref, grads_ref = oracle_result(case)
  o, grads = run_op(impl, case)
  assert o.shape == o_ref.shape and o.dtype == jnp.dtype(case.dtype)
  natural = natural_scale(case)
  assert_close("o", o, o_ref, case.dtype, natural)
  for name, got, want in zip(("dq", "dr", "dk", "dv"), grads, grads_ref, strict=True):
    assert got.dtype == jnp.dtype(case.dtype), name
    assert_close(name, got, want, case.dtype, natural)


# A window near or past 2**31 (an idiom for "no window") masks nothing. Rows at negative
# positions (Tq > Tk) once wrapped the kernels' int32 bound pos - W + 1 and lost keys (xla,
# pallas_tpu); W >= 2**31 raised OverflowError from inside JAX.
@pytest.mark.parametrize("window", [2**31 - 1, 2**40], ids=["int32max", "2pow40"])
@pytest.mark.parametrize("impl", [Impl("xla"), Impl("pallas_tpu", interpret=True)], ids=str)
def test_huge_window_masks_nothing(impl, window):
  case = Case(1, 150, 60, 2, 1, 32, window=window)
  o, grads = run_op(impl, case)
  check_case(o, grads, case)
