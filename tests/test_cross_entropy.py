"""The chunked LM-head cross-entropy against a float64 NumPy oracle and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallax_jax.model.cross_entropy import chunked_cross_entropy, chunked_eval_sums


def _oracle(x, w, targets, weights, scale):
  """float64 NumPy: loss and its gradients in x and w, by hand."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  logits = scale * np.einsum("btd,vd->btv", x, w)
  m = logits.max(-1, keepdims=True)
  p = np.exp(logits - m)
  p /= p.sum(-1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  loss = np.sum((lse - picked) * weights)
  g = p.copy()
  np.put_along_axis(g, targets[..., None], np.take_along_axis(g, targets[..., None], -1) - 1, -1)
  g *= weights[..., None] * scale
  return loss, np.einsum("btv,vd->btd", g, w), np.einsum("btv,btd->vd", g, x)


def _inputs(b, t, d, v, seed=0):
  kx, kw, kt, km = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(kx, (b, t, d), jnp.float32)
  w = jax.random.normal(kw, (v, d), jnp.float32)
  targets = jax.random.randint(kt, (b, t), 0, v)
  weights = (jax.random.uniform(km, (b, t)) > 0.3).astype(jnp.float32)
  return x, w, targets, weights


@pytest.mark.parametrize("t,chunk", [(16, 4), (13, 4), (7, 16), (8, 1)])
def test_matches_oracle_loss_and_grads(t, chunk):
  x, w, targets, weights = _inputs(2, t, 8, 11)
  scale = 0.7
  loss, (dx, dw) = jax.value_and_grad(chunked_cross_entropy, argnums=(0, 1))(
    x, w, targets, weights, scale=scale, chunk=chunk
  )
  want_loss, want_dx, want_dw = _oracle(x, w, np.asarray(targets), np.asarray(weights), scale)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-6)


def test_forward_without_grad_equals_with_grad_and_scales_with_cotangent():
  x, w, targets, weights = _inputs(1, 9, 4, 5, seed=1)
  f = lambda x, w: 3.0 * chunked_cross_entropy(x, w, targets, weights, scale=1.0, chunk=4)
  (loss, vjp) = jax.vjp(f, x, w)
  np.testing.assert_allclose(loss, f(x, w), rtol=1e-6)
  dx, _ = vjp(jnp.float32(1.0))
  _, want_dx, _ = _oracle(x, w, np.asarray(targets), np.asarray(weights), 1.0)
  np.testing.assert_allclose(dx, 3.0 * want_dx, rtol=1e-4, atol=1e-6)


def test_bf16_inputs_give_bf16_grads_close_to_fp32():
  x, w, targets, weights = _inputs(2, 8, 16, 32, seed=2)
  g32 = jax.grad(chunked_cross_entropy, argnums=(0, 1))(x, w, targets, weights, scale=0.25, chunk=4)
  g16 = jax.grad(chunked_cross_entropy, argnums=(0, 1))(
    x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), targets, weights, scale=0.25, chunk=4
  )
  for a, b in zip(g32, g16, strict=True):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=0.05, atol=0.02)


def test_bad_chunk_names_the_argument():
  x, w, targets, weights = _inputs(1, 4, 4, 5)
  with pytest.raises(ValueError, match="chunk"):
    chunked_cross_entropy(x, w, targets, weights, scale=1.0, chunk=0)


@pytest.mark.parametrize("t,chunk", [(16, 4), (13, 4), (7, 16)])
def test_eval_sums_match_the_oracle(t, chunk):
  """The eval step's chunked sums: the weighted NLL (the train loss) and the weighted count of
  positions whose argmax is the target, padded chunks included."""
  x, w, targets, weights = _inputs(2, t, 8, 11, seed=1)
  scale = 0.7
  nll, correct = chunked_eval_sums(x, w, targets, weights, scale=scale, chunk=chunk)
  targets, weights = np.asarray(targets), np.asarray(weights)
  want_nll = _oracle(x, w, targets, weights, scale)[0]
  logits = scale * np.einsum("btd,vd->btv", np.asarray(x, np.float64), np.asarray(w, np.float64))
  want_correct = np.sum((logits.argmax(-1) == targets) * weights)
  np.testing.assert_allclose(nll, want_nll, rtol=1e-5)
  assert float(correct) == want_correct and 0 < want_correct < weights.sum()


def _eval_program(*extra):
  from train_configs import SHARDABLE, TINY

  from parallax_jax.train.config import load_config, resolve
  from parallax_jax.train.program import Program

  cfg = load_config(TINY, [*SHARDABLE, "model.vocab_size=16384", *extra])
  exp = resolve(cfg, 1)
  return exp, Program(exp, devices=jax.devices()[:1])


def test_eval_step_with_logits_chunk_holds_no_logits():
  """With ``model.logits_chunk`` the eval step's sums are the dense head's (the same logits, in
  the bfloat16 compute dtype: equal up to summation order) without the ``[B, T, V]`` logits."""
  from parallax_jax.benchmarking.synthetic_batch import synthetic_batch

  # bfloat16 logits of a spread (init_std 0.3) head: float32 ones would move the sum by ~2e-5.
  model = ("model.compute_dtype=bfloat16", "model.init_std=0.3")
  exp, dense = _eval_program(*model)
  _, chunked = _eval_program(*model, "model.logits_chunk=16")
  params = dense.init(0).params
  batch = synthetic_batch(exp.model, exp.train.batch_size, exp.train.seq_len, seed=2)
  want, got = dense.eval_step(params, batch), chunked.eval_step(params, batch)
  np.testing.assert_allclose(got["nll_sum"], want["nll_sum"], rtol=2e-6)
  assert float(got["correct"]) == float(want["correct"]) and got["tokens"] == want["tokens"]

  def temp_bytes(program):
    lowered = program._eval_step.lower(program.abstract_state.params, batch)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  logits_bytes = exp.train.batch_size * exp.train.seq_len * exp.model.vocab_size * 4
  assert temp_bytes(chunked) < temp_bytes(dense) - logits_bytes / 2


@pytest.mark.parametrize("t,chunk,shards", [(16, 4, 1), (16, 3, 4), (12, 8, 2), (13, 4, 1)])
def test_chunk_layout_round_trips_and_spreads_each_step_over_the_shards(t, chunk, shards):
  """``_chunks`` (per block of ``T / S`` positions, zero-padded) and ``_unchunks`` invert each
  other, and scan step ``i`` holds chunk ``i`` of every block."""
  from parallax_jax.model.cross_entropy import _chunks, _unchunks

  a = jnp.arange(2 * t * 3).reshape(2, t, 3) + 1  # no zeros: padding shows as 0
  c = _chunks(a, chunk, shards)
  local = t // shards
  assert c.shape == (-(-local // chunk), 2 * shards, chunk, 3)
  np.testing.assert_array_equal(_unchunks(c, 2, t, shards), a)
  for i in range(c.shape[0]):
    for bs in range(2 * shards):
      b, s = divmod(bs, shards)
      want = np.asarray(a[b, s * local :][:local][i * chunk : (i + 1) * chunk])
      got = np.asarray(c[i, bs])
      np.testing.assert_array_equal(got[: len(want)], want)
      assert not got[len(want) :].any()
