"""``export-hf``: Qwen3 round trips, fla's parallax format against a float64 oracle of fla's
architecture, refusals and the CLI.

The fla oracle below is written from fla's ``ParallaxForCausalLM`` (embedding, pre-RMSNorm
blocks, q/r/k RMSNorm with fla's fixed eps 1e-5, RoPE on q, r, k, Parallax attention with
unscaled ``t = r.k``, SwiGLU, final norm, head = embeddings when tied, unscaled); the attention
itself is the float64 oracle of ``parallax_jax.testing.oracle``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runner import one_line_error, run_cli
from flax import nnx
from safetensors.numpy import load_file

from parallax_jax.errors import UserError
from parallax_jax.interop import hf_names
from parallax_jax.interop.export_hf import FLA_PARALLAX_NAMES, export_hf
from parallax_jax.interop.import_hf import import_hf
from parallax_jax.model import ModelConfig
from parallax_jax.testing import oracle
from parallax_jax.testing.hf_fixtures import write_tiny_qwen3
from parallax_jax.train.step import model_graphdef

# fla's ParallaxConfig.__init__ arguments (plus the PretrainedConfig keys written here).
FLA_CONFIG_FIELDS = {
  "hidden_size",
  "num_hidden_layers",
  "num_heads",
  "num_kv_heads",
  "qkv_bias",
  "qk_norm",
  "window_size",
  "rope_theta",
  "max_position_embeddings",
  "hidden_ratio",
  "intermediate_size",
  "hidden_act",
  "initializer_range",
  "norm_eps",
  "use_cache",
  "pad_token_id",
  "bos_token_id",
  "eos_token_id",
  "tie_word_embeddings",
  "fuse_norm",
  "fuse_swiglu",
  "fuse_cross_entropy",
  "fuse_linear_cross_entropy",
  "use_l2warp",
  "vocab_size",
  "attnres_block_size",
  "architectures",
  "model_type",
  "torch_dtype",
}
TOKENS = np.array([[5, 17, 3, 250, 0, 77, 9, 31], [1, 2, 3, 4, 5, 6, 7, 8]])
FLA_SHAPE = dict(hidden_size=64, num_heads=4, head_dim=16, num_kv_heads=2, rms_norm_eps=1e-5)


def _imported(tmp: Path, *, attention="softmax", r_init="zeros", **config) -> tuple[Path, dict]:
  """A tiny random Qwen3 dir imported into a run: ``(workdir, HF tensors)``."""
  _, tensors = write_tiny_qwen3(tmp / "src", **config)
  import_hf(tmp / "src", tmp / "w", attention=attention, r_init=r_init)
  return tmp / "w", tensors


def _perturb_r(workdir: Path) -> None:
  """Saves step 1 of the run with random ``r_proj`` / ``r_norm`` (unlike q's): W_R != 0."""
  from parallax_jax.train import run_record
  from parallax_jax.train.checkpoint import Checkpointer, abstract_like
  from parallax_jax.train.config import resolve
  from parallax_jax.train.optimizer import make_optimizer
  from parallax_jax.train.step import init_state

  exp = resolve(run_record.load_run_config(workdir))
  tx, _ = make_optimizer(exp.optimizer, exp.train.steps)
  abstract = abstract_like(jax.eval_shape(lambda: init_state(exp.model, tx, 0)))
  ckpt = Checkpointer(workdir / "checkpoints", exp.checkpoint)
  state, _ = ckpt.restore(abstract, 0)
  rng = np.random.default_rng(1)
  blocks = {}
  for i, block in state.params["blocks"].items():
    attn = dict(block["attn"])
    shape = attn["r_proj"]["kernel"].shape
    attn["r_proj"] = {"kernel": jnp.asarray(0.3 * rng.standard_normal(shape), jnp.float32)}
    attn["r_norm"] = {"scale": jnp.asarray(1 + 0.2 * rng.standard_normal(shape[-1]), jnp.float32)}
    blocks[i] = {**block, "attn": attn}
  params = {**state.params, "blocks": blocks}
  ckpt.save(1, state._replace(step=jnp.ones((), jnp.int32), params=params), None)
  ckpt.close()


def _run_logits(workdir: Path) -> tuple[np.ndarray, dict]:
  """``(logits of TOKENS, params)`` of the run's latest params through the model here."""
  from parallax_jax.inference.loading import load_run

  run = load_run(workdir)
  return _logits(run.model, run.params), run.params


def _logits(model: ModelConfig, params: dict) -> np.ndarray:
  """The model's float32-compute logits of TOKENS (jitted: eager dispatch is slow)."""
  graphdef = model_graphdef(ModelConfig(**{**_fields(model), "compute_dtype": "float32"}))[0]
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  return np.asarray(forward(params, jnp.asarray(TOKENS)))


def _fields(cfg: ModelConfig) -> dict:
  return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


def _rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x_BTHD, theta):
  """fla's RotaryEmbedding (interleaved=False): rotate the two halves, positions 0..T-1."""
  t, d = x_BTHD.shape[1], x_BTHD.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
  ang = np.arange(t)[:, None] * inv_freq[None]  # [T, D/2]
  cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  x1, x2 = x_BTHD[..., : d // 2], x_BTHD[..., d // 2 :]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def fla_parallax_logits(tensors: dict, config: dict, tokens_BT: np.ndarray) -> np.ndarray:
  """Float64 logits ``[B, T, V]`` of fla's ParallaxForCausalLM from its config.json and
  tensors (fla names)."""
  w = lambda name: np.asarray(tensors[name], np.float64)
  d, hq = config["hidden_size"], config["num_heads"]
  hkv, dh = config["num_kv_heads"] or hq, d // hq  # fla: head_dim = hidden / heads
  eps, theta, qk_eps = config["norm_eps"], config["rope_theta"], 1e-5
  b, t = tokens_BT.shape
  mask = oracle.visible_mask(t, t, causal=True, window_size=config["window_size"])
  x = w("model.embeddings.weight")[tokens_BT]
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = _rms(x, w(p + "attn_norm.weight"), eps)
    qrkv = {}
    for n, heads in (("q", hq), ("r", hq), ("k", hkv), ("v", hkv)):
      a = (h @ w(p + f"attn.{n}_proj.weight").T).reshape(b, t, heads, dh)
      if n != "v":  # per-head RMSNorm, then RoPE
        a = _rope(_rms(a, w(p + f"attn.{n}_norm.weight"), qk_eps), theta)
      qrkv[n] = a
    q, r, k, v = qrkv["q"], qrkv["r"], qrkv["k"], qrkv["v"]
    o, _ = oracle.forward(q, r, k, v, scale=dh**-0.5, mask=mask)
    x = x + o.reshape(b, t, d) @ w(p + "attn.o_proj.weight").T
    h = _rms(x, w(p + "mlp_norm.weight"), eps)
    gate, up = h @ w(p + "mlp.gate_proj.weight").T, h @ w(p + "mlp.up_proj.weight").T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ w(p + "mlp.down_proj.weight").T
  x = _rms(x, w("model.norm.weight"), eps)
  head = "model.embeddings.weight" if config["tie_word_embeddings"] else "lm_head.weight"
  return x @ w(head).T


def _read_fla_back(out: Path) -> tuple[ModelConfig, dict]:
  """The NNX params of an fla-parallax export, read back through ``hf_names``."""
  config = json.loads((out / "config.json").read_text())
  cfg = ModelConfig(
    vocab_size=config["vocab_size"],
    d_model=config["hidden_size"],
    num_layers=config["num_hidden_layers"],
    num_heads=config["num_heads"],
    num_kv_heads=config["num_kv_heads"],
    head_dim=config["hidden_size"] // config["num_heads"],
    mlp_dim=config["intermediate_size"],
    attention="parallax",
    tie_embeddings=config["tie_word_embeddings"],
    rope_theta=config["rope_theta"],
    norm_eps=config["norm_eps"],
    window_size=config["window_size"],
    compute_dtype="float32",
  )
  tensors = load_file(out / "model.safetensors")
  table = hf_names.tensor_table(cfg, FLA_PARALLAX_NAMES)
  assert sorted(m.hf_name for m in table) == sorted(tensors)
  params: dict = {}
  for m in table:
    hf_names.set_path(params, m.path, jnp.asarray(m.to_nnx(tensors[m.hf_name])))
  return cfg, params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Imported runs, made once per module on first use: ``runs(name) -> (workdir, HF
  tensors)``. All have fla's shape (d 64 = 4 heads x 16, eps 1e-5); "perturbed" ones hold W_R
  != 0 at step 1."""
  made: dict[str, tuple[Path, dict]] = {}
  kinds = {
    "softmax": dict(tied=False),
    "softmax_tied": dict(tied=True),
    "zero_r": dict(attention="parallax", tied=False),
    "perturbed": dict(attention="parallax", r_init="like_q", tied=False),
    "perturbed_tied": dict(attention="parallax", r_init="like_q", tied=True),
  }

  def get(name: str) -> tuple[Path, dict]:
    if name not in made:
      made[name] = _imported(tmp_path_factory.mktemp(name), **kinds[name], **FLA_SHAPE)
      if name.startswith("perturbed"):
        _perturb_r(made[name][0])  # r unlike q: a q/r mix-up or a lost r_norm shows
    return made[name]

  return get


def _edited_run(workdir: Path, tmp: Path, data=None, **model) -> Path:
  """A run dir sharing ``workdir``'s checkpoints (a link) whose config changes ``model``
  (and ``data``) fields: the checks before the checkpoint read, without another import."""
  record = json.loads((workdir / "config.json").read_text())
  record["config"]["model"].update(model)
  record["config"]["data"].update(data or {})
  tmp.mkdir()
  (tmp / "config.json").write_text(json.dumps(record))
  (tmp / "checkpoints").symlink_to(workdir / "checkpoints")
  return tmp


@pytest.mark.parametrize("name", ["softmax", "softmax_tied"])
def test_qwen3_round_trip_gives_the_original_tensors(runs, tmp_path, name):
  # d = 64: a tied head's sqrt(d) = 8 moves into and out of the final norm exactly.
  w, original = runs(name)
  result = export_hf(w, tmp_path / "out")
  exported = load_file(tmp_path / "out" / "model.safetensors")
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  src = json.loads((w.parent / "src" / "config.json").read_text())
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  keep = ("model_type", "hidden_size", "num_key_value_heads", "head_dim", "rms_norm_eps")
  keep += ("rope_theta", "tie_word_embeddings", "vocab_size", "max_position_embeddings")
  assert {k: config[k] for k in keep} == {k: src[k] for k in keep}
  tok = (tmp_path / "out" / "tokenizer.json").read_bytes()
  assert tok == (w.parent / "src" / "tokenizer.json").read_bytes()
  assert result.step == 0 and result.dtype == "float32"


def test_qwen3_export_of_a_zero_r_parallax_model(runs, tmp_path):
  w, original = runs("zero_r")
  result = export_hf(w, tmp_path / "out", dtype="bfloat16")
  exported = load_file(tmp_path / "out" / "model.safetensors")
  assert sorted(exported) == sorted(original)  # no r tensors
  for key, value in original.items():
    assert str(exported[key].dtype) == "bfloat16"
    np.testing.assert_array_equal(exported[key], value.astype(exported[key].dtype))
  assert any("r_proj is exactly zero" in n for n in result.notes)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("name", ["perturbed", "perturbed_tied"])
def test_fla_parallax_export_matches_fla_architecture_and_reads_back(runs, tmp_path, name):
  w, _ = runs(name)
  tied = name.endswith("tied")
  result = export_hf(w, tmp_path / "out", fmt="fla-parallax")
  assert result.step == 1
  out = tmp_path / "out"
  config = json.loads((out / "config.json").read_text())
  assert set(config) <= FLA_CONFIG_FIELDS
  assert config["model_type"] == "parallax" and config["tie_word_embeddings"] == tied
  assert (config["num_heads"], config["num_kv_heads"], config["hidden_size"]) == (4, 2, 64)
  tensors = load_file(out / "model.safetensors")
  assert ("lm_head.weight" in tensors) != tied

  ours, run_params = _run_logits(w)
  fla = fla_parallax_logits(tensors, config, TOKENS)
  np.testing.assert_allclose(ours, fla, rtol=2e-5, atol=2e-5 * np.abs(fla).max())

  cfg, params = _read_fla_back(out)  # back through hf_names: the same tensors, the same logits
  for path in hf_names.iter_paths(run_params):
    got, want = hf_names.get_path(params, path), hf_names.get_path(run_params, path)
    np.testing.assert_array_equal(got, want, err_msg=str(path))
  np.testing.assert_array_equal(_logits(cfg, params), ours)


def test_fla_export_of_a_softmax_model_has_zero_r(runs, tmp_path):
  w, original = runs("softmax")
  result = export_hf(w, tmp_path / "out", fmt="fla-parallax")
  tensors = load_file(tmp_path / "out" / "model.safetensors")
  np.testing.assert_array_equal(tensors["model.layers.1.attn.r_proj.weight"], 0)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  fla = fla_parallax_logits(tensors, config, TOKENS)
  ours = _run_logits(w)[0]
  np.testing.assert_allclose(ours, fla, rtol=2e-5, atol=2e-5 * np.abs(fla).max())
  assert any("r_proj = 0" in n for n in result.notes)
  np.testing.assert_array_equal(
    tensors["model.embeddings.weight"], original["model.embed_tokens.weight"]
  )


def test_refusals(runs, tmp_path):
  w, _ = runs("perturbed")
  with pytest.raises(UserError, match=r"W_R != 0 \(blocks/0/attn/r_proj/kernel"):
    export_hf(w, tmp_path / "a")
  assert not (tmp_path / "a").exists()
  narrow = _edited_run(w, tmp_path / "narrow", head_dim=8)  # 4 heads x 8 != d_model 64
  with pytest.raises(UserError, match=r"model.head_dim=8 with model.num_heads=4 .* ties head_dim"):
    export_hf(narrow, tmp_path / "b", fmt="fla-parallax")
  assert not (tmp_path / "b").exists()
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  with pytest.raises(UserError, match="is not empty"):
    export_hf(w, tmp_path / "full", fmt="fla-parallax")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_export_leaves_no_partial_output(runs, tmp_path, monkeypatch, existing):
  # A disk that fills up at the last file (the tokenizer): no half-written --out (which a retry
  # would refuse as not empty, and which looks like a model without its tokenizer).
  from parallax_jax.interop import export_hf as module

  w, original = runs("softmax")
  out = tmp_path / "exports" / "out"
  if existing:
    out.mkdir(parents=True)
  real = module._tokenizer_name

  def full_disk(path):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(module, "_tokenizer_name", full_disk)
  with pytest.raises(OSError, match="No space left"):
    export_hf(w, out)
  assert sorted(p.name for p in out.parent.iterdir()) == (["out"] if existing else [])
  assert not existing or not any(out.iterdir())
  monkeypatch.setattr(module, "_tokenizer_name", real)
  result = export_hf(w, out)  # the retry writes the whole export
  names = {"config.json", "model.safetensors", "tokenizer.json"}
  assert {p.name for p in out.iterdir()} == names == {p.name for p in result.files}
  assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
  umask = os.umask(0)
  os.umask(umask)
  assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as a mkdir'd directory is
  exported = load_file(out / "model.safetensors")
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_fla_qk_norm_eps_is_refused_unless_allowed(runs, tmp_path):
  w = _edited_run(runs("softmax")[0], tmp_path / "w", norm_eps=1e-6)
  with pytest.raises(UserError, match=r"model.norm_eps=1e-06 .* fixed eps 1e-05"):
    export_hf(w, tmp_path / "a", fmt="fla-parallax")
  result = export_hf(w, tmp_path / "b", fmt="fla-parallax", allow_qk_norm_eps_change=True)
  assert any("--allow-qk-norm-eps-change" in n for n in result.notes)
  assert json.loads((tmp_path / "b" / "config.json").read_text())["norm_eps"] == 1e-6


def test_byte_tokenizer_run_writes_no_tokenizer_file_and_imports_back(runs, tmp_path):
  w, original = runs("softmax")
  w = _edited_run(w, tmp_path / "w", data={"tokenizer": "byte"})
  result = export_hf(w, tmp_path / "out")
  assert {p.name for p in (tmp_path / "out").iterdir()} == {"config.json", "model.safetensors"}
  assert any("byte tokenizer" in n for n in result.notes)
  # Back in: refused without the flag (naming it), then a byte-tokenizer run with the tensors.
  with pytest.raises(UserError, match="has no tokenizer.json .* pass --byte-tokenizer"):
    import_hf(tmp_path / "out", tmp_path / "back", attention="softmax")
  assert not (tmp_path / "back").exists()
  import_hf(tmp_path / "out", tmp_path / "back", attention="softmax", byte_tokenizer=True)
  record = json.loads((tmp_path / "back" / "config.json").read_text())
  assert record["config"]["data"]["tokenizer"] == "byte"
  assert not (tmp_path / "back" / "tokenizer.json").exists()
  export_hf(tmp_path / "back", tmp_path / "again")
  again = load_file(tmp_path / "again" / "model.safetensors")
  assert sorted(again) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)
  src = runs("softmax")[0].parent / "src"  # has its own tokenizer.json: the flag is refused
  with pytest.raises(UserError, match="--byte-tokenizer: .* has its own tokenizer.json"):
    import_hf(src, tmp_path / "other", attention="softmax", byte_tokenizer=True)


def test_cli(runs, tmp_path, capsys):
  w, _ = runs("softmax")
  code, out, _ = run_cli(capsys, "export-hf", "--workdir", str(w), "--out", str(tmp_path / "o"))
  assert code == 0 and "wrote" in out
  files = {p.name for p in (tmp_path / "o").iterdir()}
  assert files == {"config.json", "model.safetensors", "tokenizer.json"}
  code, _, err = run_cli(capsys, "export-hf", "--workdir", str(w), "--out", str(tmp_path / "o"))
  assert code == 2 and "is not empty" in one_line_error(err)
  code, _, err = run_cli(
    capsys, "export-hf", "--workdir", str(w), "--out", str(tmp_path / "p"), "--step", "3"
  )
  assert code == 2 and "--step 3" in one_line_error(err)


def test_cli_refuses_the_eps_permission_where_it_changes_nothing(tmp_path, capsys):
  """--allow-qk-norm-eps-change is about fla's fixed eps: with --format qwen3 it was ignored.
  Checked before the run is read (here: a directory holding none)."""
  argv = ["export-hf", "--workdir", str(tmp_path), "--out", str(tmp_path / "o")]
  code, out, err = run_cli(capsys, *argv, "--allow-qk-norm-eps-change")
  line = one_line_error(err)
  assert code == 2 and out == "" and "--allow-qk-norm-eps-change applies to --format fla" in line
  assert "not to --format qwen3" in line and not (tmp_path / "o").exists()
