"""Every implementation against the float64 NumPy oracle: output and all four gradients."""

import jax.numpy as jnp
import pytest
from attention_cases import all_params, assert_close, natural_scale, oracle_result, run_op


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
