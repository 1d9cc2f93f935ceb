"""Bad input gets a clear error naming the argument; explicit requests never fall back."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallax_jax import parallax_attention
from parallax_jax.attention import implementations


def _x(shape, dtype=jnp.float32):
  return jnp.zeros(shape, dtype)


Q = _x((1, 8, 4, 16))
K = _x((1, 8, 2, 16))


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    (dict(q=_x((8, 4, 16))), ValueError, r"q must have rank 4"),
    (dict(r=_x((1, 8, 4, 8))), ValueError, r"r must have q's shape"),
    (dict(k=_x((1, 8, 2))), ValueError, r"k must have rank 4"),
    (dict(v=_x((1, 9, 2, 16))), ValueError, r"v must have k's shape"),
    (dict(k=_x((1, 8, 3, 16)), v=_x((1, 8, 3, 16))), ValueError, r"multiple of the number of kv"),
    (dict(k=_x((1, 8, 2, 8)), v=_x((1, 8, 2, 8))), ValueError, r"head dim"),
    (dict(q=_x((1, 8, 0, 16)), r=_x((1, 8, 0, 16))), ValueError, r"empty inputs"),
    (
      dict(q=_x((0, 8, 4, 16)), r=_x((0, 8, 4, 16)), k=_x((0, 8, 2, 16)), v=_x((0, 8, 2, 16))),
      ValueError,
      r"empty inputs",
    ),
    (dict(k=_x((2, 8, 2, 16)), v=_x((2, 8, 2, 16))), ValueError, r"batch size"),
    (dict(r=_x((1, 8, 4, 16), jnp.bfloat16)), TypeError, r"share one dtype"),
    (dict(q=_x((1, 8, 4, 16), jnp.int32)), TypeError, r"q has dtype int32"),
    (dict(segment_ids=jnp.zeros((1, 8), jnp.float32)), TypeError, r"segment_ids must have an int"),
    (dict(segment_ids=jnp.zeros((1, 7), jnp.int32)), ValueError, r"segment_ids must have shape"),
    (
      dict(k=_x((1, 9, 2, 16)), v=_x((1, 9, 2, 16)), segment_ids=jnp.zeros((1, 8), jnp.int32)),
      ValueError,
      r"segment_ids needs self-attention",
    ),
    (dict(window_size=0), ValueError, r"window_size must be >= 1"),
    (dict(window_size=-3), ValueError, r"window_size must be >= 1"),
    (dict(window_size=2.5), TypeError, r"window_size must be an int"),
    (dict(window_size=4, causal=False), ValueError, r"window_size needs causal=True"),
    (dict(causal="yes"), TypeError, r"causal must be a bool"),
    (dict(scale=float("nan")), ValueError, r"scale must be finite"),
    (dict(scale="0.1"), TypeError, r"scale must be a static Python float"),
    (dict(scale=True), TypeError, r"scale must be a static Python float .*got bool"),
    (dict(scale=np.array([0.1, 0.2])), TypeError, r"scale must be a static Python float"),
    (dict(implementation="cuda"), ValueError, r"implementation must be None or one of"),
    (dict(implementation=["xla"]), ValueError, r"implementation must be None or one of"),
    (dict(interpret=1), TypeError, r"interpret must be a bool"),
    (
      dict(implementation="xla", block_sizes=(64, 64)),
      NotImplementedError,
      r"BlockSizes\(\.\.\.\)",
    ),
  ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
  args = dict(q=Q, r=Q, k=K, v=K)
  args.update(kwargs)
  q, r, k, v = (args.pop(n) for n in "qrkv")
  with pytest.raises(error, match=match):
    parallax_attention(q, r, k, v, **args)


def test_traced_scale_is_rejected():
  with pytest.raises(TypeError, match="scale must be a static"):
    jax.jit(lambda s: parallax_attention(Q, Q, K, K, scale=s))(0.5)


def test_explicit_kernel_on_wrong_backend_raises():
  # No GPU/TPU here: asking for a kernel without interpret mode must not fall back.
  for name in ("pallas_gpu", "pallas_tpu"):
    with pytest.raises(NotImplementedError):
      parallax_attention(Q, Q, K, K, implementation=name)


def test_default_picks_xla_on_cpu_and_logs_once(caplog):
  implementations.ATTENTION.clear_log()
  with caplog.at_level(logging.INFO, logger="parallax_jax"):
    a = parallax_attention(Q + 1.0, Q, K + 1.0, K + 2.0)
    parallax_attention(Q, Q, K, K)
  records = [r for r in caplog.records if "implementation=None" in r.message]
  assert len(records) == 1 and "'xla'" in records[0].message
  b = parallax_attention(Q + 1.0, Q, K + 1.0, K + 2.0, implementation="xla")
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float64_with_x64_and_dtype_out():
  with jax.enable_x64(True):
    q = jnp.ones((1, 4, 2, 8), jnp.float64)
    assert parallax_attention(q, q, q, q, implementation="xla").dtype == jnp.float64
  for dt in (jnp.bfloat16, jnp.float16):
    assert parallax_attention(Q.astype(dt), Q.astype(dt), K.astype(dt), K.astype(dt)).dtype == dt
