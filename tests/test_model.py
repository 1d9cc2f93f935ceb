"""The decoder: shapes, parameter count, softmax twin, causality, packing."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.model import LogicalAxes, ModelConfig, Transformer
from parallax_jax.model.layers import RMSNorm, projection
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


# Jitted (the config is static): one compile per test instead of eager dispatch of every op;
# the random draws are the same bits either way.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _params(cfg, seed=0):
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _logits_traced(cfg, params, tokens, segment_ids=None, positions=None):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params)(tokens, positions, segment_ids)


_logits = jax.jit(_logits_traced, static_argnums=0)


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
    ("attention_deterministic", "false", "attention_deterministic"),
    ("tied_head_scale", "half", "tied_head_scale"),
    ("window_size", 64.5, "model.window_size must be an int >= 1 or None"),
    ("window_size", True, "model.window_size must be an int >= 1 or None"),  # bool: no int
    ("d_model", True, "d_model"),
    ("rope_theta", 0.0, "model.rope_theta must be a finite number > 0"),
    ("rope_theta", float("inf"), "model.rope_theta"),
    ("norm_eps", 0.0, "model.norm_eps must be a finite number > 0"),
    ("init_std", -0.02, "model.init_std must be a finite number > 0"),
    ("init_std", float("nan"), "model.init_std"),
    ("lla_ridge", "1", "model.lla_ridge"),
    ("qk_norm", "false", "qk_norm"),
    ("logits_chunk", True, "logits_chunk"),
    ("decode_num_splits", True, "decode_num_splits"),
  ],
)
def test_bad_model_config_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **{field: value})


def test_paths_are_per_attention_kind_and_switching_kinds_drops_the_others():
  from parallax_jax.attention.implementations import ATTENTION
  from parallax_jax.decode import DECODE
  from parallax_jax.model.config import attention_paths

  # The registries' own names (an independent list would drift from them), by kind.
  assert attention_paths("parallax") == ATTENTION.names()
  assert attention_paths("parallax", decode=True) == DECODE.names()
  assert attention_paths("softmax") == attention_paths("softmax", decode=True) == ("xla", "cudnn")
  assert attention_paths("lla") == ()
  m = dataclasses.replace(CFG, attention_impl="pallas_mosaic_gpu", decode_impl="pallas_gpu")
  soft = m.with_attention("softmax")
  assert (soft.attention, soft.attention_impl, soft.decode_impl) == ("softmax", None, None)
  soft = dataclasses.replace(soft, attention_impl="xla", decode_impl="cudnn")
  back = soft.with_attention("parallax")
  assert (back.attention_impl, back.decode_impl) == ("xla", None)  # xla is a path of both
  assert dataclasses.replace(back, attention_impl=None) == CFG
  with pytest.raises(ValueError, match="attention='lla' takes None only, got 'xla'"):
    dataclasses.replace(CFG, attention="lla", attention_impl="xla")


def test_check_paths_refuses_an_explicit_path_the_backend_cannot_run():
  from parallax_jax.errors import UserError

  CFG.check_paths("cpu", decode=True)  # None everywhere: always served
  soft = dataclasses.replace(CFG, attention="softmax", attention_impl="cudnn")
  soft.check_paths("gpu")
  with pytest.raises(UserError, match="'cudnn' runs on gpu, not on this machine's 'cpu'"):
    soft.check_paths("cpu")
  m = dataclasses.replace(CFG, attention_impl="xla", decode_impl="pallas_tpu")
  m.check_paths("gpu")  # decode paths only when asked (generation)
  with pytest.raises(UserError, match=r"model.decode_impl='pallas_tpu' runs on tpu.*=None"):
    m.check_paths("gpu", decode=True)
  for name in ("pallas_gpu", "pallas_mosaic_gpu"):
    dataclasses.replace(CFG, attention_impl=name).check_paths("gpu")
    with pytest.raises(UserError, match=f"'{name}' runs on gpu, not on .* 'tpu'"):
      dataclasses.replace(CFG, attention_impl=name).check_paths("tpu")


def test_scaled_head_on_an_untied_head_is_an_error():
  assert CFG.tied_head_scale == "one"  # the default: Qwen3's unscaled head
  with pytest.raises(ValueError, match="tied_head_scale.*tied head only.*leave .* at 'one'"):
    dataclasses.replace(CFG, tie_embeddings=False, tied_head_scale="rsqrt_d")
  assert dataclasses.replace(CFG, tie_embeddings=False).tied_head_scale == "one"


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
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(_logits_traced(cfg, p, tokens))))(params)
  return len(re.findall(r"\bscan\b", str(jaxpr)))


def test_remat_dots_attention_keeps_the_attention_residuals():
  scans = {r: _attention_scans(r) for r in ("none", "full", "dots_attention")}
  assert scans["none"] == 2
  assert scans["full"] == 3  # the backward reruns the attention forward
  assert scans["dots_attention"] == 2


@pytest.mark.parametrize("value", [True, False])
def test_remat_bool_is_an_error_naming_the_policies(value):
  with pytest.raises(ValueError, match=r"model\.remat.*'none', 'full', 'dots', 'dots_attention'"):
    dataclasses.replace(CFG, remat=value)


def test_rmsnorm_is_float32_math_in_the_input_dtype():
  """bf16 input, float32 scale: the float64 formula rounded once to bf16 (half an ulp)."""
  rng = np.random.default_rng(0)
  norm = RMSNorm(16, eps=1e-6, logical_axis=None, param_dtype=jnp.float32)
  scale = rng.uniform(0.5, 1.5, 16).astype(np.float32)
  norm.scale[...] = jnp.asarray(scale)
  x = jnp.asarray(rng.standard_normal((3, 5, 16)) * 30, jnp.bfloat16)
  y = norm(x)
  assert y.dtype == jnp.bfloat16 and norm.scale[...].dtype == jnp.float32
  x64 = np.asarray(x, np.float64)
  want = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2**-8 + 1e-6, atol=0)
  assert norm(x.astype(jnp.float32)).dtype == jnp.float32


def test_projection_contracts_the_trailing_input_axes():
  """o_proj's layout: ``[B, T, H, Dh] x [H, Dh, D]``, against a float64 einsum."""
  proj = projection(
    (3, 4),
    (5,),
    ("q_heads", "head_dim", "embed"),
    rngs=nnx.Rngs(0),
    std=1.0,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
  )
  assert proj.kernel.logical_axes == ("q_heads", "head_dim", "embed")
  x = np.random.default_rng(1).standard_normal((2, 6, 3, 4)).astype(np.float32)
  w = np.asarray(proj.kernel[...], np.float64)
  want = np.einsum("bthd,hde->bte", x.astype(np.float64), w)
  np.testing.assert_allclose(np.asarray(proj(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_zero_r_init_draws_no_key():
  """With ``r_init="zeros"`` every other parameter equals the softmax model's (same seed):
  the checkpoint conversion and the softmax-twin comparisons rely on it."""
  soft = _params(dataclasses.replace(CFG, attention="softmax"), seed=5)
  par = _params(dataclasses.replace(CFG, r_init="zeros"), seed=5)
  for block in par["blocks"].values():
    assert not np.any(np.asarray(block["attn"].pop("r_proj")["kernel"]))
    block["attn"].pop("r_norm")
  for (path, s), (_, p) in zip(
    jax.tree_util.tree_flatten_with_path(soft)[0],
    jax.tree_util.tree_flatten_with_path(par)[0],
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(s), err_msg=jax.tree_util.keystr(path))


def test_model_config_from_dict_builds_the_axes_and_names_unknown_keys():
  cfg = ModelConfig.from_dict({"d_model": 64, "axes": {"embed": "my_embed"}})
  assert cfg.axes == dataclasses.replace(LogicalAxes(), embed="my_embed")
  with pytest.raises(ValueError, match=r"unknown model\.axes config keys \['embd'\]"):
    ModelConfig.from_dict({"axes": {"embd": "x"}})


def test_a_loss_mask_of_the_wrong_shape_is_an_error():
  """A ``[B, 1]`` mask would broadcast silently against ``[B, T]`` losses."""
  from parallax_jax.train.step import loss_fn

  tokens = _tokens((2, 9))
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": jnp.broadcast_to(jnp.arange(8), (2, 8)),
    "segment_ids": None,
    "loss_mask": jnp.ones((2, 1)),
  }
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
  with pytest.raises(AssertionError, match="shape"):
    loss_fn(_params(CFG), graphdef, batch)


def test_positions_of_the_wrong_shape_are_an_error():
  """``[1, T]`` positions would broadcast silently over a batch of 2 in RoPE."""
  tokens = _tokens((2, 8))
  with pytest.raises(AssertionError, match="shape"):
    _logits(CFG, _params(CFG), tokens, positions=jnp.arange(8)[None])


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
      vg = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)
      results.append(vg(p, graphdef, batch))
    for w, g in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
      # The two programs sum in different orders, so a gradient element's float32 error scales
      # with the terms summed into its leaf, not with the element: an element near zero in a
      # leaf of scale 0.35 can differ by a few ulp of 0.35 (XLA's CPU code, and so the order,
      # varies with the host's vector units). Hence the floor is relative to the leaf's scale.
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))


def test_softmax_falls_back_to_xla_where_cudnn_refuses(monkeypatch, caplog):
  """``implementation=None`` on a GPU backend asks cuDNN first; a refusal at trace time (here:
  no cuDNN on this CPU; on a GPU e.g. float32 inputs) falls back to "xla" with one log line,
  and the result is causal softmax attention (checked against a NumPy softmax)."""
  from parallax_jax.model import attention as model_attention

  monkeypatch.setattr(model_attention.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(model_attention, "_LOGGED_FALLBACKS", set())
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((1, 5, 2, 8)).astype(np.float32) for _ in range(3))
  with caplog.at_level("INFO", logger="parallax_jax"):
    o = model_attention.softmax_attention(
      jnp.asarray(q),
      jnp.asarray(k),
      jnp.asarray(v),
      segment_ids=None,
      window_size=None,
      implementation=None,
    )
  assert "cudnn refused" in caplog.text
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(o, np.einsum("bhqk,bkhd->bqhd", p, v), rtol=1e-5, atol=1e-6)
  with pytest.raises(RuntimeError):  # an explicit request is passed through, never replaced
    model_attention.softmax_attention(
      jnp.asarray(q),
      jnp.asarray(k),
      jnp.asarray(v),
      segment_ids=None,
      window_size=None,
      implementation="cudnn",
    )


@pytest.mark.parametrize("deterministic", [True, False])
def test_attention_deterministic_reaches_the_op(monkeypatch, deterministic):
  """``model.attention_deterministic`` is what the layer asks ``parallax_attention`` for."""
  from parallax_jax.model import attention as attention_module

  seen = []
  real = attention_module.parallax_attention

  def spy(*args, **kwargs):
    seen.append(kwargs.get("deterministic"))
    return real(*args, **kwargs)

  monkeypatch.setattr(attention_module, "parallax_attention", spy)
  cfg = dataclasses.replace(CFG, attention_deterministic=deterministic)
  tokens = jnp.zeros((1, 8), jnp.int32)
  jax.eval_shape(functools.partial(_logits_traced, cfg), _params(CFG), tokens)
  assert seen and set(seen) == {deterministic}
