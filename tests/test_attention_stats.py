"""Effective attention weights and their statistics against the float64 NumPy oracle."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.analysis import attention_stats, capture_scored
from parallax_jax.analysis.attention_stats import MARGIN, _layer_stats
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.reference import effective_weights
from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.testing import oracle

CFG = ModelConfig(
  vocab_size=64,
  d_model=32,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  mlp_dim=48,
  compute_dtype="float32",
)


def _qrk(b=2, t=12, h=4, hkv=2, d=8, seed=0):
  kq, kr, kk = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (b, t, h, d))
  r = 0.5 * jax.random.normal(kr, (b, t, h, d))
  k = jax.random.normal(kk, (b, t, hkv, d))
  return q, r, k


# The pipelines' convention: 1, 2, ... per packed document, 0 padding.
SEGMENTS = np.array([[1] * 5 + [2] * 7, [1] * 12])


def test_effective_weights_match_the_oracle():
  q, r, k = _qrk()
  mask = MaskSpec(q_len=12, kv_len=12, causal=True)
  a, visible = effective_weights(q, r, k, scale=0.3, mask=mask, segment_ids=jnp.asarray(SEGMENTS))
  vis = oracle.visible_mask(12, 12, causal=True, window_size=None, segment_ids=SEGMENTS)
  v = np.zeros(k.shape)
  _, want = oracle.forward(q, r, k, v, scale=0.3, mask=vis)
  np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(visible, np.broadcast_to(vis[:, None], a.shape))


def _numpy_stats(a, vis, segments, min_row):
  """The module's definitions, spelled out with loops over rows."""
  b, h, t, _ = a.shape
  out = {k: np.zeros(h) for k in ("negative", "above_one", "negative_mass", "first_token")}
  out["first_token_uniform"] = np.zeros(h)
  for hh in range(h):
    neg = above = pairs = 0
    nmass, first, uni, rows = [], [], [], 0
    for bb in range(b):
      for i in range(t):
        start = max(j for j in range(i + 1) if j == 0 or segments[bb, j] != segments[bb, j - 1])
        if i - start < min_row:
          continue
        keys = vis[bb, i]
        row = a[bb, hh, i, keys]
        neg += np.sum(row < -MARGIN)
        above += np.sum(row > 1 + MARGIN)
        pairs += row.size
        nmass.append(np.sum(np.minimum(row, 0)))
        first.append(a[bb, hh, i, start])
        uni.append(keys[start] / keys.sum())  # 0 where a window hides the first key
        rows += 1
    out["negative"][hh] = neg / pairs
    out["above_one"][hh] = above / pairs
    out["negative_mass"][hh] = np.mean(nmass)
    out["first_token"][hh] = np.mean(first)
    out["first_token_uniform"][hh] = np.mean(uni)
  return out


@pytest.mark.parametrize("min_row", [0, 3])
@pytest.mark.parametrize("window", [None, 4])
def test_layer_stats_match_a_numpy_count(min_row, window):
  q, r, k = _qrk(seed=1)
  r = 4.0 * r  # large t: plenty of negative weights and weights above 1
  vis = oracle.visible_mask(12, 12, causal=True, window_size=window, segment_ids=SEGMENTS)
  _, a = oracle.forward(q, r, k, np.zeros(k.shape), scale=8**-0.5, mask=vis)
  want = _numpy_stats(a, vis, SEGMENTS, min_row)
  got = _layer_stats(q, r, k, jnp.asarray(SEGMENTS), min_row, window)
  assert want["negative"].min() > 0 and want["above_one"].min() > 0
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def _model(cfg, seed=0):
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _batch(b=2, t=24):
  tokens = jax.random.randint(jax.random.key(3), (b, t), 0, CFG.vocab_size)
  return {
    "inputs": tokens,
    "positions": jnp.broadcast_to(jnp.arange(t), (b, t)),
    "segment_ids": jnp.asarray(np.repeat([[1, 2]], t // 2, axis=1)).repeat(b, 0),
  }


def test_softmax_weights_are_a_distribution_and_zero_r_parallax_equals_softmax():
  soft = attention_stats(
    *_model(dataclasses.replace(CFG, attention="softmax")), [_batch()], min_row=2
  )
  zero = attention_stats(*_model(dataclasses.replace(CFG, r_init="zeros")), [_batch()], min_row=2)
  assert soft.negative.shape == (2, 4)
  for name in ("negative", "above_one", "negative_mass"):
    np.testing.assert_array_equal(getattr(soft, name), 0.0)
  assert np.all(soft.first_token > 0) and np.all(soft.first_token <= 1)
  # Same seed, same weights apart from W_R = 0: the same attention.
  for name in ("first_token", "first_token_uniform"):
    np.testing.assert_allclose(getattr(zero, name), getattr(soft, name), rtol=1e-5)


def test_capture_returns_what_the_op_receives_per_layer():
  graphdef, params = _model(dataclasses.replace(CFG, norm_eps=1e-12))
  scored = capture_scored(graphdef, params, _batch())
  assert len(scored) == CFG.num_layers
  assert scored[0]["q"].shape == (2, 24, 4, 8) and scored[0]["k"].shape == (2, 24, 2, 8)
  assert "r" in scored[0]
  # QK-norm (unit scale at init) then RoPE (a rotation): every head vector has length sqrt(D).
  for name in ("q", "r", "k"):
    norms = jnp.linalg.norm(scored[1][name], axis=-1)
    np.testing.assert_allclose(norms, np.sqrt(8.0), rtol=1e-5, err_msg=name)


def test_stats_over_batches_are_the_mean_of_per_batch_stats():
  graphdef, params = _model(CFG)
  b1 = _batch()
  b2 = {**b1, "inputs": (b1["inputs"] + 1) % CFG.vocab_size}
  both = attention_stats(graphdef, params, [b1, b2], min_row=2)
  each = [attention_stats(graphdef, params, [b], min_row=2) for b in (b1, b2)]
  for name in ("negative", "first_token"):
    want = (getattr(each[0], name) + getattr(each[1], name)) / 2
    np.testing.assert_allclose(getattr(both, name), want, rtol=1e-6)
  assert not np.allclose(each[0].first_token, each[1].first_token)  # the batches differ


def test_padding_rows_are_left_out():
  """Segment 0 is padding (a packed row's tail; the all-zero rows that pad the last eval
  batch, ``Data.eval_batches``): it is no document, and a batch of it weighs nothing."""
  graphdef, params = _model(CFG)
  real = _batch(b=1)
  padded = {k: jnp.concatenate([v, jnp.zeros_like(v)]) for k, v in real.items()}
  want = attention_stats(graphdef, params, [real], min_row=2)
  for batches in ([padded], [real, jax.tree.map(jnp.zeros_like, real)]):
    got = attention_stats(graphdef, params, batches, min_row=2)
    for name in ("negative", "negative_mass", "first_token", "first_token_uniform"):
      np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="no row"):
    attention_stats(graphdef, params, [jax.tree.map(jnp.zeros_like, real)], min_row=2)


def test_stats_pool_the_rows_of_every_batch():
  """A batch with fewer counted rows weighs less: the mean is over rows, not batches."""
  graphdef, params = _model(CFG)
  b1 = _batch(b=1)
  short = {**b1, "segment_ids": b1["segment_ids"].at[:, 20:].set(0)}  # a padded tail
  both = attention_stats(graphdef, params, [b1, short], min_row=2)
  each = [attention_stats(graphdef, params, [b], min_row=2) for b in (b1, short)]
  rows = np.array([10 + 10, 10 + 6], np.float64)  # rows >= 2 into their 12-token documents
  for name in ("negative_mass", "first_token"):
    want = (getattr(each[0], name) * rows[0] + getattr(each[1], name) * rows[1]) / rows.sum()
    np.testing.assert_allclose(getattr(both, name), want, rtol=1e-6, err_msg=name)


def test_bad_arguments_are_user_errors():
  """The CLI prints a ``UserError`` as one line (experiments/attention_analysis.py)."""
  from parallax_jax.errors import UserError

  graphdef, params = _model(CFG)
  with pytest.raises(UserError, match="no row of the batches is 100 or more.*lower min_row"):
    attention_stats(graphdef, params, [_batch()], min_row=100)
  with pytest.raises(UserError, match="covers parallax and softmax models, not 'lla'"):
    attention_stats(*_model(dataclasses.replace(CFG, attention="lla")), [_batch()])
