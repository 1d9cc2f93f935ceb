"""Repeated calls of the op (a model's layers) lower to one function per kernel, called from each
site: the kernels are lowered once, and the module holds one copy of each (parallax_jax/attention/
api.py). Counted in the StableHLO text of a jitted function, so it holds for any implementation
with a custom VJP; "xla" runs here on CPU."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import pytest

from parallax_jax.attention.api import parallax_attention

LAYERS = 3


def _layers(q, r, k, v):
  o = q
  for _ in range(LAYERS):
    o = parallax_attention(o, r, k, v, implementation="xla", causal=True)
  return o


def _functions_and_calls(fn, *args):
  text = jax.jit(fn).lower(*args).as_text()
  defined = re.findall(r"func\.func private @(_impl_\w+)\(", text)
  called = collections.Counter(re.findall(r"call @(_impl_\w+)\(", text))
  return defined, called


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_layers_share_one_lowered_kernel_function(grad):
  x = jnp.ones((1, 32, 2, 16), jnp.float32)
  if grad:
    fn = jax.grad(lambda *a: _layers(*a).sum(), argnums=(0, 1, 2, 3))
    name = "_impl_bwd"
  else:
    fn, name = _layers, "_impl_fwd"
  defined, called = _functions_and_calls(fn, x, x, x, x)
  ours = [f for f in defined if f.startswith(name)]
  assert ours == [name], defined
  assert called[name] == LAYERS, called


def test_other_shapes_get_their_own_function():
  a, b = jnp.ones((1, 32, 2, 16), jnp.float32), jnp.ones((1, 16, 2, 16), jnp.float32)
  defined, called = _functions_and_calls(
    lambda a, b: (_layers(a, a, a, a).sum(), _layers(b, b, b, b).sum()), a, b
  )
  assert len([f for f in defined if f.startswith("_impl_fwd")]) == 2, defined
  assert sum(called.values()) == 2 * LAYERS, called


def test_lowering_cost_counts_one_function_per_kernel_for_a_model(tmp_path):
  """``experiments/lowering_cost.py`` on a tiny 3-layer model (CPU target, "xla" path): one
  forward and one backward function for all layers, and its result files."""
  from experiments import lowering_cost

  record = lowering_cost.main(
    [
      "--config=configs/lm_0p6b.py",
      "--seq-len=32",
      "--layers=3",
      "--implementation=xla",
      "--platform=cpu",
      f"--out-dir={tmp_path}",
      "--config.model.vocab_size=256",
      "--config.model.d_model=64",
      "--config.model.num_heads=2",
      "--config.model.num_kv_heads=1",
      "--config.model.head_dim=32",
      "--config.model.mlp_dim=128",
    ]
  )
  (row,) = record["rows"]
  assert row["attention_functions"] == {"_impl_fwd": 1, "_impl_bwd": 1}
  assert row["kernel_custom_calls"] == {}
  assert len(list(tmp_path.glob("lowering_cost_*"))) == 2
