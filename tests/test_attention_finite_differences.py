"""Custom VJPs against finite differences of the same path's forward, in float64."""

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

from parallax_jax import BlockSizes, parallax_attention


@pytest.mark.parametrize("implementation", ["reference", "xla"])
@pytest.mark.parametrize(
  "causal,window,tk,segments",
  [
    (True, None, None, False),
    (True, 4, None, False),
    (True, None, 13, False),
    (False, None, 7, False),
    (True, 5, None, True),
  ],
)
def test_grads_match_finite_differences(implementation, causal, window, tk, segments):
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(0), 4)
    b, t, hq, hkv, d = 2, 9, 4, 2, 5
    tk = tk or t
    q = jax.random.normal(keys[0], (b, t, hq, d), jnp.float64)
    r = 0.5 * jax.random.normal(keys[1], (b, t, hq, d), jnp.float64)
    k = jax.random.normal(keys[2], (b, tk, hkv, d), jnp.float64)
    v = jax.random.normal(keys[3], (b, tk, hkv, d), jnp.float64)
    seg = jnp.asarray([[0] * 4 + [1] * 5, [0] * 9]) if segments else None

    @jax.jit  # check_grads calls f many times at one shape: compile once
    def f(q, r, k, v):
      return parallax_attention(
        q,
        r,
        k,
        v,
        scale=0.8,
        causal=causal,
        window_size=window,
        segment_ids=seg,
        implementation=implementation,
        block_sizes=BlockSizes.uniform(4, 3) if implementation == "xla" else None,
      )

    # Central differences with a 1e-6 step: truncation error ~1e-12, roundoff ~1e-9.
    check_grads(f, (q, r, k, v), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)
