"""The decoder: shapes, parameter count, softmax twin, causality, packing."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.train.convert import add_zero_r
from parallax_jax.train.step import logical_axes

CFG = ModelConfig(
  vocab_size=128,
  d_model=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=16,
  mlp_dim=96,
  compute_dtype="float32",
)


def _params(cfg, seed=0):
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _logits(cfg, params, tokens, segment_ids=None, positions=None):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params)(tokens, positions, segment_ids)


def _tokens(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size)


@pytest.mark.parametrize("attention", ["parallax", "softmax"])
def test_shapes_and_param_count(attention):
  cfg = dataclasses.replace(CFG, attention=attention, tie_embeddings=attention == "softmax")
  params = _params(cfg)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  logits = _logits(cfg, params, _tokens((2, 24)))
  assert logits.shape == (2, 24, cfg.vocab_size) and logits.dtype == jnp.float32


def test_zero_r_parallax_equals_softmax_twin():
  soft = dataclasses.replace(CFG, attention="softmax")
  par = dataclasses.replace(CFG, attention="parallax", r_init="zeros")
  params = _params(soft)
  tokens = _tokens((2, 40))
  np.testing.assert_allclose(
    _logits(par, add_zero_r(params, par), tokens), _logits(soft, params, tokens), atol=2e-5
  )


def test_r_init_zeros_and_like_q():
  zeros = _params(dataclasses.replace(CFG, r_init="zeros"))
  assert not np.any(np.asarray(zeros["blocks"][0]["attn"]["r_proj"]["kernel"]))
  like_q = _params(CFG)
  r = np.asarray(like_q["blocks"][0]["attn"]["r_proj"]["kernel"])
  q = np.asarray(like_q["blocks"][0]["attn"]["q_proj"]["kernel"])
  assert r.shape == q.shape and abs(r.std() / q.std() - 1) < 0.1


def test_causal_logits_ignore_future_tokens():
  params = _params(CFG)
  a = _tokens((1, 32), seed=1)
  b = a.at[:, 20:].set(_tokens((1, 12), seed=2))
  la, lb = _logits(CFG, params, a), _logits(CFG, params, b)
  np.testing.assert_array_equal(np.asarray(la[:, :20]), np.asarray(lb[:, :20]))
  assert not np.allclose(np.asarray(la[:, 20:]), np.asarray(lb[:, 20:]))


def test_packed_rows_equal_separate_documents():
  params = _params(CFG)
  first, second = _tokens((1, 13), seed=3), _tokens((1, 19), seed=4)
  packed = jnp.concatenate([first, second], axis=1)
  seg = jnp.asarray([[1] * 13 + [2] * 19])
  pos = jnp.asarray([list(range(13)) + list(range(19))])
  out = _logits(CFG, params, packed, seg, pos)
  np.testing.assert_allclose(out[:, :13], _logits(CFG, params, first), atol=2e-5)
  np.testing.assert_allclose(out[:, 13:], _logits(CFG, params, second), atol=2e-5)


def test_every_param_has_logical_axes_of_its_rank():
  params = _params(CFG)
  axes = logical_axes(CFG)
  flat = {
    k: v for k, v in nnx.to_flat_state(nnx.state(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  }
  assert set(axes) == set(flat) and len(axes) == len(jax.tree.leaves(params))
  for path, names in axes.items():
    assert len(names) == flat[path].get_value().ndim, path
  assert axes[("embed",)] == ("vocab", "embed")
  assert axes[("blocks", 0, "attn", "r_proj", "kernel")] == ("embed", "q_heads", "head_dim")


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("num_kv_heads", 3, "num_heads"),
    ("attention", "linear", "attention"),
    ("r_init", "ones", "r_init"),
    ("head_dim", 15, "head_dim"),
    ("d_model", 0, "d_model"),
    ("remat", "some", "remat"),
  ],
)
def test_bad_model_config_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **{field: value})


def _loss_and_grads(cfg, params, tokens):
  def loss(p):
    return jnp.mean(_logits(cfg, p, tokens) ** 2)

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_attention"])
def test_remat_policies_give_the_same_gradients(remat):
  params, tokens = _params(CFG), _tokens((2, 24))
  want = _loss_and_grads(CFG, params, tokens)
  got = _loss_and_grads(dataclasses.replace(CFG, remat=remat), params, tokens)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def _attention_scans(remat):
  """``scan`` loops in the grad jaxpr of one layer: the "xla" path's forward is one, its
  backward another; a rerun forward adds one."""
  cfg = dataclasses.replace(CFG, num_layers=1, remat=remat)
  params, tokens = _params(cfg), _tokens((1, 16))
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(_logits(cfg, p, tokens))))(params)
  return len(re.findall(r"\bscan\b", str(jaxpr)))


def test_remat_dots_attention_keeps_the_attention_residuals():
  scans = {r: _attention_scans(r) for r in ("none", "full", "dots_attention")}
  assert scans["none"] == 2
  assert scans["full"] == 3  # the backward reruns the attention forward
  assert scans["dots_attention"] == 2


def test_remat_accepts_legacy_bools():
  assert dataclasses.replace(CFG, remat=True).remat == "full"
  assert dataclasses.replace(CFG, remat=False).remat == "none"


def test_logits_chunk_loss_and_grads_equal_dense_logits():
  from parallax_jax.train.step import loss_fn

  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params, tokens = _params(cfg), _tokens((2, 21))
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": jnp.broadcast_to(jnp.arange(20), (2, 20)),
    "segment_ids": None,
    "loss_mask": (jnp.arange(20) % 3 != 0).astype(jnp.float32)[None].repeat(2, 0),
  }
  for tied in (cfg, CFG):
    p = params if tied is cfg else _params(CFG)
    results = []
    for chunk in (0, 8):
      c = dataclasses.replace(tied, logits_chunk=chunk)
      graphdef, _ = nnx.split(nnx.eval_shape(lambda c=c: Transformer(c, rngs=nnx.Rngs(0))))
      results.append(jax.value_and_grad(loss_fn, has_aux=True)(p, graphdef, batch))
    for w, g in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
