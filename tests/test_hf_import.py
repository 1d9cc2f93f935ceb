"""import-hf: a tiny random Qwen3 directory imports; its logits equal a float64 NumPy Qwen3."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from cli_runner import one_line_error, run_cli
from flax import nnx

from parallax_jax.errors import UserError
from parallax_jax.inference.loading import load_run
from parallax_jax.interop import hf_names
from parallax_jax.interop.import_hf import import_hf, read_params
from parallax_jax.interop.safetensors_io import SafetensorsReader, write_safetensors
from parallax_jax.model import ModelConfig
from parallax_jax.testing.hf_fixtures import (
  tiny_qwen3_config,
  tiny_qwen3_tensors,
  write_hf_dir,
  write_tiny_qwen3,
)
from parallax_jax.testing.qwen3_oracle import qwen3_logits
from parallax_jax.train.checkpoint import load_params
from parallax_jax.train.step import model_graphdef

# Short rows and one eval batch: eval / train on the imported run take seconds on CPU.
RUN = ["train.batch_size=8", "train.seq_len=32", "train.eval_batches=1", "train.eval_every=0"]
TOKENS = np.random.default_rng(1).integers(0, 384, size=(2, 12))


def imported_logits(workdir) -> np.ndarray:
  """Logits of ``load_run(workdir)``'s params (what generate reads), computed in float32."""
  run = load_run(workdir)
  graphdef, _ = model_graphdef(dataclasses.replace(run.model, compute_dtype="float32"))
  return np.asarray(nnx.merge(graphdef, run.params)(jnp.asarray(TOKENS)))


def assert_close_rel(actual, expected, rtol=1e-5):
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err < rtol, f"max-norm relative error {err:.2e} >= {rtol}"


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
  """A tied GQA (4 query heads, 2 kv heads) Qwen3 in one model.safetensors, imported twice."""
  root = tmp_path_factory.mktemp("tied")
  config, tensors = write_tiny_qwen3(root / "hf", tied=True)
  run = [*RUN, "model.compute_dtype=float32"]  # eval losses compared at float32 precision
  soft = import_hf(root / "hf", root / "soft", attention="softmax", overrides=run).workdir
  par = import_hf(root / "hf", root / "par", overrides=run).workdir
  return config, tensors, soft, par


def test_tied_import_matches_the_float64_qwen3(tied):
  config, tensors, soft, _ = tied
  assert_close_rel(imported_logits(soft), qwen3_logits(tensors, config, TOKENS))


def test_tied_head_scale_one_is_the_hf_head(tied):
  """``tied_head_scale="one"`` holds HF's tensors as they are (no sqrt(d) in the final norm)
  and computes the float64 Qwen3's logits; with "rsqrt_d" the same table moves sqrt(d)."""
  from parallax_jax.interop.hf_config import model_config_from_hf

  config, tensors, _, _ = tied
  base = dataclasses.replace(
    model_config_from_hf(config, attention="softmax"), compute_dtype="float32"
  )
  for scale, norm_factor in (("one", 1.0), ("rsqrt_d", np.sqrt(base.d_model))):
    cfg = dataclasses.replace(base, tied_head_scale=scale)
    params: dict = {}
    for m in hf_names.tensor_table(cfg):
      hf_names.set_path(params, m.path, jnp.asarray(m.to_nnx(np.asarray(tensors[m.hf_name]))))
    np.testing.assert_allclose(
      params["final_norm"]["scale"], norm_factor * tensors["model.norm.weight"], rtol=1e-6
    )
    graphdef, _ = model_graphdef(cfg)
    logits = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(TOKENS)))
    assert_close_rel(logits, qwen3_logits(tensors, config, TOKENS))


def test_parallax_with_zero_r_equals_the_softmax_import(tied):
  config, tensors, soft, par = tied
  logits = imported_logits(par)
  assert_close_rel(logits, imported_logits(soft), rtol=1e-6)
  assert_close_rel(logits, qwen3_logits(tensors, config, TOKENS))
  params = load_run(par).params
  assert not np.any(np.asarray(params["blocks"][1]["attn"]["r_proj"]["kernel"]))
  np.testing.assert_array_equal(params["blocks"][1]["attn"]["r_norm"]["scale"], 1.0)


def test_untied_sharded_bfloat16_import_matches_the_float64_qwen3(tmp_path):
  config = tiny_qwen3_config(tied=False, torch_dtype="bfloat16")
  tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tiny_qwen3_tensors(config, seed=2).items()}
  write_hf_dir(tmp_path / "hf", config, tensors, shards=3)
  workdir = import_hf(tmp_path / "hf", tmp_path / "w", overrides=RUN).workdir
  # The oracle reads the same bf16 values (exact in float64): the tolerance is float32's.
  assert_close_rel(imported_logits(workdir), qwen3_logits(tensors, config, TOKENS))
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["model"]["tie_embeddings"] is False
  assert record["config"]["model"]["compute_dtype"] == "bfloat16"
  assert record["config"]["data"]["tokenizer"] == str(workdir / "tokenizer.json")


def test_params_checkpoint_equals_the_run_checkpoint(tied):
  _, _, _, par = tied
  params = load_run(par).params
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  saved = load_params(par / "params", abstract)
  jax.tree.map(np.testing.assert_array_equal, saved, params)


@pytest.mark.slow  # ~25 s on 2 cores: data pipeline, eval and train-step compilation
def test_eval_and_training_from_the_import(tied, tmp_path):
  from parallax_jax.train.config import load_config
  from parallax_jax.train.loop import Trainer, evaluate

  _, _, soft, par = tied
  # W_R = 0: the Parallax import's held-out loss is the softmax import's.
  assert abs(evaluate(par)["eval_loss"] - evaluate(soft)["eval_loss"]) < 1e-4
  # Another run starting from W/params, with the config file the import wrote.
  cfg = load_config(
    par / "hf_import_config.py", [f"checkpoint.init_from={par / 'params'}", "train.steps=1"]
  )
  trainer = Trainer(cfg, tmp_path / "uptrain")
  state = trainer.initial_state()
  jax.tree.map(np.testing.assert_array_equal, state.params, load_run(par).params)
  assert np.isfinite(trainer.run()["loss"])


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_import_leaves_no_partial_run(tmp_path, monkeypatch, existing):
  # A disk that fills up at the params copy, after checkpoints/0: a half import's checkpoints
  # made the retry refuse the workdir ("already holds a run") and `train` would resume from it.
  from parallax_jax.train import checkpoint

  write_tiny_qwen3(tmp_path / "hf")
  w = tmp_path / "runs" / "w"
  if existing:
    w.mkdir(parents=True)
    (w / "notes.txt").write_text("mine")
  real = checkpoint.save_params

  def full_disk(path, params):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoint, "save_params", full_disk)
  with pytest.raises(OSError, match="No space left"):
    import_hf(tmp_path / "hf", w, overrides=RUN)
  if existing:
    assert sorted(p.name for p in w.iterdir()) == ["notes.txt"]
  else:
    assert not w.exists()
  monkeypatch.setattr(checkpoint, "save_params", real)
  result = import_hf(tmp_path / "hf", w, overrides=RUN)  # the retry imports
  assert (w / "config.json").is_file() and (w / "params").is_dir()
  assert existing == (w / "notes.txt").is_file()
  params = load_run(w).params
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  jax.tree.map(np.testing.assert_array_equal, load_params(result.params_path, abstract), params)


def test_r_init_like_q_copies_q(tmp_path):
  config, _ = write_tiny_qwen3(tmp_path / "hf")
  model = ModelConfig(
    vocab_size=384, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    mlp_dim=64, rope_theta=10000.0, attention="parallax", r_init="like_q",
  )  # fmt: skip
  graphdef, abstract = model_graphdef(model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(abstract))
  with SafetensorsReader(tmp_path / "hf") as reader:
    params = read_params(reader, model, shardings, r_init="like_q")
  attn = params["blocks"][0]["attn"]
  np.testing.assert_array_equal(attn["r_proj"]["kernel"], attn["q_proj"]["kernel"])
  np.testing.assert_array_equal(attn["r_norm"]["scale"], attn["q_norm"]["scale"])
  assert np.any(np.asarray(attn["r_proj"]["kernel"]))


def test_table_conversions_are_inverse_and_cover_the_model():
  for tie in (True, False):
    for attention in ("parallax", "softmax"):
      cfg = ModelConfig(
        vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=64, tie_embeddings=tie, attention=attention,
      )  # fmt: skip
      table = hf_names.tensor_table(cfg)
      _, abstract = model_graphdef(cfg)
      paths = set(hf_names.iter_paths(nnx.to_pure_dict(abstract)))
      assert {m.path for m in table} == paths
      for m in table:
        w = np.random.default_rng(0).standard_normal(m.hf_shape).astype(np.float32)
        assert m.to_nnx(w).shape == m.nnx_shape
        np.testing.assert_allclose(m.to_hf(m.to_nnx(w)), w, rtol=1e-6)


def test_write_safetensors_shards_and_reads_back(tmp_path):
  tensors = {f"t{i}": np.full((4, 8), i, np.float32) for i in range(5)}
  files = write_safetensors(tmp_path, tensors.items(), max_shard_bytes=300)
  assert len(files) == 3 and (tmp_path / "model.safetensors.index.json").is_file()
  with SafetensorsReader(tmp_path) as reader:
    assert reader.names() == sorted(tensors)
    for name, value in tensors.items():
      np.testing.assert_array_equal(reader.get(name), value)


@pytest.mark.parametrize("max_shard_bytes", [300, 2**20], ids=["sharded", "single"])
def test_written_safetensors_get_the_umask_mode(tmp_path, max_shard_bytes):
  """Readable by whoever may read an ordinary file here (safetensors itself writes 0o600)."""
  old = os.umask(0o022)
  try:
    files = write_safetensors(
      tmp_path,
      [(f"t{i}", np.zeros((4, 8), np.float32)) for i in range(5)],
      max_shard_bytes=max_shard_bytes,
    )
  finally:
    os.umask(old)
  assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(0o644)}


# Errors --------------------------------------------------------------------------------------
def _bad_dir(tmp_path, *, config_extra=None, edit=None):
  config = tiny_qwen3_config(**(config_extra or {}))
  tensors = tiny_qwen3_tensors(config)
  if edit is not None:
    edit(tensors)
  return write_hf_dir(tmp_path / "hf", config, tensors)


def _drop(name):
  return lambda t: t.pop(name)


def _add(name):
  return lambda t: t.update({name: np.zeros((4,), np.float32)})


def _reshape(name):
  return lambda t: t.update({name: t[name][:-1]})


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(edit=_drop("model.layers.1.self_attn.k_proj.weight")), "missing.*layers.1.self_attn.k_"),
    (dict(edit=_add("model.layers.0.self_attn.q_proj.bias")), "unknown.*q_proj.bias"),
    (dict(edit=_reshape("model.layers.0.mlp.up_proj.weight")), "up_proj.weight has shape \\[63"),
    (dict(config_extra={"use_sliding_window": True}), "use_sliding_window"),
    (dict(config_extra={"num_experts": 8}), "num_experts=8"),
    (dict(config_extra={"rope_scaling": {"type": "yarn"}}), "rope_scaling"),
    (dict(config_extra={"attention_bias": True}), "attention_bias"),
    (dict(config_extra={"model_type": "llama"}), "model_type"),
    (dict(edit=_add("lm_head.weight")), "lm_head.weight"),
    # transformers' default RoPE rotates head_dim * partial_rotary_factor channels only
    (dict(config_extra={"partial_rotary_factor": 0.5}), "partial_rotary_factor=0.5"),
    (
      dict(config_extra={"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}),
      "rope_parameters.partial_rotary_factor=0.5",
    ),
    # a value of the wrong type: refused naming the field, never converted or a traceback
    (dict(config_extra={"rope_theta": None}), "rope_theta=None: must be a number"),
    (dict(config_extra={"tie_word_embeddings": "false"}), "tie_word_embeddings='false'"),
    (dict(config_extra={"rope_parameters": 1e4}), "rope_parameters=10000.0: must be an object"),
  ],
)
def test_bad_checkpoints_raise_naming_the_culprit(tmp_path, kwargs, match):
  src = _bad_dir(tmp_path, **kwargs)
  with pytest.raises(UserError, match=match):
    import_hf(src, tmp_path / "w")
  assert not (tmp_path / "w").exists()  # nothing written


@pytest.mark.parametrize(
  "file, text, match",
  [
    ("config.json", "[1, 2]", "config.json is not a JSON object"),
    ("model.safetensors.index.json", '{"weight_map": ["a"]}', "'weight_map' must map each"),
    ("model.safetensors.index.json", "[1]", "not a safetensors index"),
    ("config.json", {"hidden_size": None}, "hidden_size=None: must be an integer"),
    ("config.json", {"head_dim": 16.5}, "head_dim=16.5: must be an integer"),
  ],
)
def test_malformed_files_are_one_line_errors(tmp_path, capsys, file, text, match):
  src = tmp_path / "hf"
  write_tiny_qwen3(src, shards=2)  # an index of its own (a single file beside it is refused)
  if isinstance(text, dict):  # config.json fields (the tensors were drawn from valid ones)
    text = json.dumps(tiny_qwen3_config(**text))
  (src / file).write_text(text)
  args = ["import-hf", "--from", str(src), "--workdir", str(tmp_path / "w")]
  code, _, err = run_cli(capsys, *args)
  assert code == 2 and match in one_line_error(err) and file in one_line_error(err)
  assert not (tmp_path / "w").exists()


def test_a_single_file_beside_a_sharded_set_is_refused(tmp_path):
  """save_pretrained leaves a stale model.safetensors when it re-saves sharded (and a stale index
  when it re-saves unsharded); transformers then loads the single file: not read silently."""
  config, tensors = write_tiny_qwen3(tmp_path / "hf", shards=2)
  stale = {k: np.zeros_like(v) for k, v in tensors.items()}
  write_safetensors(tmp_path / "hf", stale.items())
  with pytest.raises(UserError, match="holds both model.safetensors and model.safetensors.index"):
    import_hf(tmp_path / "hf", tmp_path / "w", attention="softmax")
  assert not (tmp_path / "w").exists()


def test_cli_imports_and_errors_in_one_line(tmp_path, capsys):
  write_tiny_qwen3(tmp_path / "hf")
  w = tmp_path / "w"
  args = ["import-hf", "--from", str(tmp_path / "hf"), "--workdir", str(w)]
  code, out, err = run_cli(capsys, *args, "--attention", "softmax", "--config.train.seq_len=32")
  assert code == 0, err
  assert "next:" in out and (w / "checkpoints" / "0").is_dir()
  code, _, err = run_cli(capsys, *args)  # W holds a run now
  assert code == 2 and "already holds a run" in one_line_error(err)
  code, _, err = run_cli(capsys, *args[:-1], str(tmp_path / "w2"), "--config.model.d_model=64")
  assert code == 2 and "model.d_model" in one_line_error(err)
  # the head's scale is the checkpoint's function too (Qwen3's head is unscaled)
  bad_head = "--config.model.tied_head_scale=rsqrt_d"
  code, _, err = run_cli(capsys, *args[:-1], str(tmp_path / "w3"), bad_head)
  assert code == 2 and "model.tied_head_scale are fixed by the checkpoint" in one_line_error(err)
  # the run's data is read by eval, train and generate: a missing file is refused, no run left
  missing = f"--config.data.source={tmp_path / 'none.txt'}"
  code, _, err = run_cli(capsys, *args[:-1], str(tmp_path / "w4"), missing)
  assert code == 2 and "none.txt" in one_line_error(err) and not (tmp_path / "w4").exists()


def test_a_tokenizer_file_in_the_workdir_is_not_replaced(tmp_path):
  """A ``tokenizer.json`` already in the workdir (no run yet) was overwritten by --from's: now a
  different one is refused and left as it was; the same bytes import as before."""
  write_tiny_qwen3(tmp_path / "hf")
  mine = tmp_path / "w" / "tokenizer.json"
  mine.parent.mkdir()
  mine.write_text('{"mine": true}')
  with pytest.raises(UserError, match="holds a tokenizer.json other than --from's"):
    import_hf(tmp_path / "hf", tmp_path / "w", attention="softmax")
  assert mine.read_text() == '{"mine": true}' and sorted(os.listdir(mine.parent)) == [mine.name]
  shutil.copyfile(tmp_path / "hf" / "tokenizer.json", mine)
  import_hf(tmp_path / "hf", tmp_path / "w", attention="softmax")
  assert (tmp_path / "w" / "checkpoints" / "0").is_dir()


def test_cli_refuses_r_init_with_softmax_attention(tmp_path, capsys):
  """--r-init initialises W_R, which a softmax import has none of: it was ignored (a softmax run
  was written as if the flag was not given)."""
  write_tiny_qwen3(tmp_path / "hf")
  w = tmp_path / "w"
  args = ["import-hf", "--from", str(tmp_path / "hf"), "--workdir", str(w)]
  for r_init in ("like_q", "zeros"):
    code, out, err = run_cli(capsys, *args, "--attention", "softmax", "--r-init", r_init)
    line = one_line_error(err)
    assert code == 2 and out == "" and f"--r-init {r_init}" in line and "--attention" in line
  assert not w.exists()


def test_a_moved_import_reads_its_own_tokenizer(tied, tmp_path):
  """An import's ``data.tokenizer`` is the absolute path of its own ``tokenizer.json``; moved
  to another folder (that path gone), generate's loader and eval read the copy in the
  workdir, which encodes as the Hugging Face tokenizer it was copied from."""
  from tokenizers import Tokenizer

  from parallax_jax.train.loop import evaluate

  hf_dir = Path(tied[2]).parent / "hf"
  import_hf(hf_dir, tmp_path / "first", attention="softmax", overrides=RUN)
  shutil.move(tmp_path / "first", tmp_path / "moved")
  run = load_run(tmp_path / "moved")
  text = "hello parallax"
  hf = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
  assert run.tokenizer.encode(text) == hf.encode(text, add_special_tokens=False).ids
  assert np.isfinite(evaluate(tmp_path / "moved")["eval_loss"])
