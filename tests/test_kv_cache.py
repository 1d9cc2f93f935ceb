"""KV cache, prefill and decode_step of the model (docs/design.md §13.4).

The reference is the model's own training forward ``model(tokens)`` (full causal recompute, no
cache): the cached paths must give its logits at the matching positions. Tiny float32 models
(GQA 4:2, two layers so a layer mix-up in the cache shows); ``init_std`` is raised so logits
are O(1) and a wrong position, slot or mask moves them far beyond the tolerance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.model import ModelConfig, Transformer, kv_cache

VOCAB = 64
ATOL = 2e-5  # float32 logits of magnitude ~1; the two paths differ only in summation order


def make_model(attention="parallax", window_size=None, **overrides) -> Transformer:
  cfg = ModelConfig(
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    attention=attention,
    window_size=window_size,
    compute_dtype="float32",
    init_std=0.2,
    **overrides,
  )
  return Transformer(cfg, rngs=nnx.Rngs(0))


@functools.cache
def model(attention, window_size):
  return make_model(attention, window_size)


@nnx.jit
def forward(m, tokens):
  return m(tokens)


@functools.partial(nnx.jit, static_argnames="chunk_size")
def prefill(m, tokens, prompt_lengths, cache, chunk_size=None):
  return m.prefill(tokens, prompt_lengths, cache, chunk_size=chunk_size)


@nnx.jit
def decode_step(m, tokens, cache):
  return m.decode_step(tokens, cache)


def tokens(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape, dtype=np.int32))


def run_cached(m, seq, prompt_lengths, max_len, steps, chunk_size=None):
  """Prefill ``seq[:, :T]`` then feed row b's tokens ``seq[b, L_b + j]`` for ``steps`` steps;
  returns the logits ``[steps + 1, B, V]`` and the final cache."""
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  t = int(prompt_lengths.max())
  cache = m.init_cache(seq.shape[0], max_len)
  logits, cache = prefill(m, seq[:, :t], jnp.asarray(prompt_lengths), cache, chunk_size)
  out = [logits]
  rows = np.arange(seq.shape[0])
  for j in range(steps):
    logits, cache = decode_step(m, seq[rows, prompt_lengths + j], cache)
    out.append(logits)
  return jnp.stack(out), cache


@pytest.mark.parametrize(
  "attention,window_size", [("parallax", None), ("parallax", 3), ("softmax", None), ("softmax", 3)]
)
def test_prefill_and_decode_match_the_forward(attention, window_size):
  m = model(attention, window_size)
  seq = tokens((2, 15), seed=1)
  prompt, steps, max_len = 10, 5, 16
  lengths = jnp.array([prompt, prompt], jnp.int32)
  want = forward(m, seq)[:, prompt - 1 : prompt + steps]  # [B, steps + 1, V]
  assert float(jnp.abs(want).max()) > 0.3  # logits that a wrong position would visibly move

  one, cache_one = prefill(m, seq[:, :prompt], lengths, m.init_cache(2, max_len))
  np.testing.assert_allclose(one, want[:, 0], atol=ATOL, rtol=0)
  # Chunks of 4 (the last one of 2): chunk c attends to slots 0 .. its end through the op.
  got, cache = prefill(m, seq[:, :prompt], lengths, m.init_cache(2, max_len), chunk_size=4)
  np.testing.assert_allclose(got, want[:, 0], atol=ATOL, rtol=0)
  for a, b in zip(cache_one.k + cache_one.v, cache.k + cache.v, strict=True):
    np.testing.assert_allclose(b[:, :prompt], a[:, :prompt], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(b[:, prompt:], 0.0)  # slots past the prompt are untouched
  np.testing.assert_array_equal(cache.lengths, lengths)

  for j in range(steps):
    got, cache = decode_step(m, seq[:, prompt + j], cache)
    np.testing.assert_allclose(got, want[:, j + 1], atol=ATOL, rtol=0, err_msg=f"step {j}")
  np.testing.assert_array_equal(cache.lengths, [prompt + steps] * 2)


@pytest.mark.parametrize("attention", ["parallax", "softmax"])
def test_ragged_batch_equals_each_prompt_alone(attention):
  m = model(attention, 3)
  # The shapes of test_prefill_and_decode_match_the_forward (its compiled functions serve).
  lengths, steps, max_len = [3, 10], 5, 16
  seq = tokens((2, 15), seed=3)  # row b: prompt seq[b, :L_b], then its decode tokens
  batched, cache = run_cached(m, seq, lengths, max_len, steps, chunk_size=4)  # [steps+1, B, V]
  np.testing.assert_array_equal(cache.lengths, np.add(lengths, steps))
  # Each row's own sequence without a cache: forward is causal, so the logits at position
  # L_b - 1 + j depend on seq[b, :L_b + j] only (nothing of the other rows, no padding).
  full = forward(m, seq)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(
      batched[:, b], full[b, n - 1 : n + steps], atol=ATOL, rtol=0, err_msg=f"row {b}"
    )
  # The shortest prompt alone (batch of 1, unpadded) through the cached path.
  n = lengths[0]
  alone, _ = run_cached(m, seq[:1, : n + steps], [n], max_len, steps)
  np.testing.assert_allclose(batched[:, 0], alone[:, 0], atol=ATOL, rtol=0)


def test_cache_dtype_and_layout():
  m = model("parallax", None)
  cache = m.init_cache(3, 20)
  assert cache.max_len == 20 and cache.num_layers == 2
  assert cache.k[0].shape == (3, 20, 2, 8) and cache.k[0].dtype == jnp.float32
  assert cache.lengths.dtype == jnp.int32
  assert m.init_cache(1, 4, dtype="bfloat16").v[1].dtype == jnp.bfloat16
  # A pytree: it passes through jit and comes back a KVCache.
  assert isinstance(jax.jit(lambda c: c)(cache), kv_cache.KVCache)


def test_full_row_write_is_dropped():
  cache_BSHD = jnp.arange(2 * 3 * 1 * 1, dtype=jnp.float32).reshape(2, 3, 1, 1)
  new_BHD = jnp.full((2, 1, 1), -1.0)
  lengths = jnp.array([1, 3], jnp.int32)  # row 1 is full
  out = kv_cache.write_token(cache_BSHD, new_BHD, lengths)
  want = np.array(cache_BSHD)
  want[0, 1] = -1.0
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(kv_cache.next_lengths(lengths, 3), [2, 3])


def abstract_model(attention="parallax", **overrides) -> Transformer:
  """Shapes only: every check below runs before a parameter is read."""
  return nnx.eval_shape(lambda: make_model(attention, **overrides))


def test_errors():
  lla = abstract_model("lla")
  for call in (
    lambda: lla.init_cache(1, 8),
    lambda: lla.prefill(tokens((1, 4), 0), jnp.array([4]), empty_for(lla, 1, 8)),
    lambda: lla.decode_step(tokens((1,), 0), empty_for(lla, 1, 8)),
  ):
    with pytest.raises(NotImplementedError, match="decode supports attention='parallax' and"):
      call()

  regression = abstract_model(input_dim=3, output_dim=1, tie_embeddings=False)
  with pytest.raises(ValueError, match="regression model"):
    regression.init_cache(1, 8)
  with pytest.raises(ValueError, match="regression model"):
    regression.decode_step(tokens((1,), 0), empty_for(regression, 1, 8))

  m = model("parallax", None)
  with pytest.raises(ValueError, match=r"T=9 .* max_len=8"):
    m.prefill(tokens((1, 9), 0), jnp.array([9]), m.init_cache(1, 8))
  with pytest.raises(ValueError, match="prompt_lengths must lie in 1 .. T=4"):
    m.prefill(tokens((2, 4), 0), jnp.array([4, 0]), m.init_cache(2, 8))
  with pytest.raises(ValueError, match="batch of 2"):
    m.prefill(tokens((2, 4), 0), jnp.array([4, 4]), m.init_cache(3, 8))
  full = m.init_cache(2, 8)._replace(lengths=jnp.array([3, 8], jnp.int32))
  with pytest.raises(ValueError, match="row 1 has lengths=8 .* max_len=8"):
    m.decode_step(tokens((2,), 0), full)
  with pytest.raises(ValueError, match="cache must be empty"):
    m.prefill(tokens((2, 4), 0), jnp.array([4, 4]), full)


def empty_for(m, batch, max_len):
  cfg = m.cfg
  return kv_cache.empty_cache(
    cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim, jnp.float32
  )


def test_decode_config_keys_reach_the_op():
  """``model.decode_impl`` / ``decode_num_splits`` are what decode asks for: an explicit "xla"
  path with a split count it cannot run raises (nothing falls back), one split runs."""
  seq = tokens((1, 6), seed=3)
  five = jnp.array([5], jnp.int32)
  m = make_model(decode_impl="xla", decode_num_splits=4)
  _, cache = prefill(m, seq[:, :5], five, m.init_cache(1, 16))
  with pytest.raises(NotImplementedError, match="no launch tuning"):
    decode_step(m, seq[:, 5], cache)
  m = make_model(decode_impl="xla", decode_num_splits=1)
  _, cache = prefill(m, seq[:, :5], five, m.init_cache(1, 16))
  logits, _ = decode_step(m, seq[:, 5], cache)
  np.testing.assert_allclose(logits, forward(m, seq)[:, 5], atol=ATOL)
  with pytest.raises(ValueError, match="model.decode_impl"):
    make_model(decode_impl="fast")
