"""Config files, CLI overrides and validation before anything compiles."""

from pathlib import Path

import pytest

from parallax_jax.errors import UserError
from parallax_jax.train.config import MeshConfig, apply_overrides, load_config, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny", "lm_0p6b", "lm_1p7b"])
def test_shipped_configs_resolve(name):
  cfg = load_config(ROOT / "configs" / f"{name}.py")
  exp = resolve(cfg, num_devices=1)
  assert exp.model.attention == "parallax" and exp.data.source == "builtin"
  # Every value the file sets arrives unchanged in the resolved section (nothing dropped,
  # defaulted over or coerced).
  for section, values in cfg.to_dict().items():
    for field, value in values.items():
      assert getattr(getattr(exp, section), field) == value, f"{section}.{field}"


def test_qwen3_shapes():
  exp = resolve(load_config(ROOT / "configs" / "lm_0p6b.py"))
  m = exp.model
  assert (m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim) == (
    28,
    1024,
    16,
    8,
    128,
    3072,
  ) and m.tie_embeddings
  m = resolve(load_config(ROOT / "configs" / "lm_1p7b.py")).model
  assert (m.d_model, m.mlp_dim) == (2048, 6144)


def test_overrides_are_typed():
  cfg = load_config(
    ROOT / "configs" / "tiny.py",
    [
      "--config.train.steps=7",
      "--config.model.attention=softmax",
      "--config.optimizer.lr=1".replace("lr", "learning_rate"),
      "--config.model.window_size=16",
      "--config.model.qk_norm=false",
      "--config.optimizer.clip_norm=None",
    ],
  )
  exp = resolve(cfg)
  assert exp.train.steps == 7 and exp.model.attention == "softmax"
  assert exp.optimizer.learning_rate == 1.0 and exp.model.window_size == 16
  assert exp.model.qk_norm is False and exp.optimizer.clip_norm is None


def test_a_string_key_whose_value_is_none_takes_an_override_as_a_string():
  """``checkpoint.init_from`` (declared ``str | None``, None by default): a directory named
  ``2024`` stays the path it names (it was parsed as a Python literal, the int 2024, and then
  refused); "None" still means None, and a number key whose value is None still gets a number."""
  cfg = load_config(
    ROOT / "configs" / "tiny.py",
    ["--config.checkpoint.init_from=2024", "--config.distributed.coordinator_address=10"],
  )
  assert cfg.checkpoint.init_from == "2024" and cfg.distributed.coordinator_address == "10"
  assert (
    load_config(ROOT / "configs" / "tiny.py", ["--config.checkpoint.init_from=None"])["checkpoint"][
      "init_from"
    ]
    is None
  )
  assert (
    load_config(ROOT / "configs" / "tiny.py", ["--config.model.window_size=8"])["model"][
      "window_size"
    ]
    == 8
  )


@pytest.mark.parametrize(
  "override,match",
  [
    ("--config.train.stepz=3", "unknown config key 'train.stepz'"),
    ("--config.nosection.x=1", "no section"),
    ("--config.train.steps=many", "bad value for config.train.steps"),
    ("--config.model.attention=linear", "model.attention"),
    ("--config.model.num_kv_heads=3", "model.num_heads"),
    ("--config.optimizer.name=sgd", "optimizer.name"),
    ("--config.train.batch_size=0", "train.batch_size"),
    ("--config.model.window_size=100000", "window_size"),
    ("--config.data.format=parquet", "format"),
    # numbers out of range, not finite or of the wrong type: refused, naming the key
    ("--config.optimizer.adam_learning_rate=0", r"optimizer.adam_learning_rate must be .* > 0"),
    ("--config.optimizer.adam_learning_rate=-1", "optimizer.adam_learning_rate"),
    ("--config.optimizer.adam_learning_rate=abc", "adam_learning_rate .* got 'abc'"),
    ("--config.optimizer.learning_rate=nan", "optimizer.learning_rate must be a finite number"),
    ("--config.optimizer.learning_rate=inf", "optimizer.learning_rate must be a finite number"),
    ("--config.optimizer.b1=1", r"optimizer.b1 must be .* in \[0, 1\)"),
    ("--config.optimizer.b2=-0.5", r"optimizer.b2 must be .* in \[0, 1\)"),
    ("--config.optimizer.muon_beta=1.5", "optimizer.muon_beta"),
    ("--config.optimizer.eps=0", "optimizer.eps must be a finite number > 0"),
    ("--config.optimizer.min_lr_ratio=1.5", r"optimizer.min_lr_ratio must be .* in \[0, 1\]"),
    ("--config.optimizer.weight_decay=-0.1", "optimizer.weight_decay must be .* >= 0"),
    ("--config.optimizer.muon_ns_steps=0", "optimizer.muon_ns_steps must be an int >= 1"),
    ("--config.optimizer.warmup_steps=None", "optimizer.warmup_steps must be an int >= 0"),
    ("--config.optimizer.clip_norm=nan", "optimizer.clip_norm"),
    ("--config.model.init_std=0", "model.init_std must be a finite number > 0"),
    ("--config.model.norm_eps=0", "model.norm_eps must be a finite number > 0"),
    ("--config.model.rope_theta=0", "model.rope_theta must be a finite number > 0"),
    ("--config.model.rope_theta=nan", "model.rope_theta"),
    ("--config.model.lla_ridge=inf", "model.lla_ridge"),
    ("--config.model.window_size=64.5", "model.window_size must be an int >= 1 or None"),
    ("--config.model.window_size=True", "model.window_size must be an int >= 1 or None"),
    ("--config.train.eval_batches=0", "set train.eval_every=0 to turn evals off"),
    ("--config.train.eval_every=None", "train.eval_every must be an int >= 0, got None"),
    ("--config.checkpoint.keep=None", "checkpoint.keep must be an int >= 1, got None"),
    ("--config.mesh.data=None", "mesh.data must be an int >= 1 or -1"),
    (f"--config.train.compilation_cache_dir={ROOT / 'README.md'}", "is an existing file"),
    ("--config.sharding.rules.dp=foo", "config.sharding.rules.dp: it is a section"),
    ("--config.distributed.initialize=maybe", "distributed.initialize must be one of"),
    ("--config.distributed.num_processes=abc", "distributed.num_processes must be an int >= 1"),
    ("--config.distributed.process_id=-1", "distributed.process_id must be an int >= 0"),
    # jax.random.key keeps 32 bits: 2**32 was seed 0's init (with another data order)
    ("--config.train.seed=4294967296", r"train.seed must be an int in \[0, 4294967295\]"),
    ("--config.train.seed=-1", r"train.seed must be an int in \[0, 4294967295\]"),
  ],
)
def test_bad_configs_fail_before_compiling(override, match):
  with pytest.raises(ValueError, match=match):
    resolve(load_config(ROOT / "configs" / "tiny.py", [override]))


def test_unknown_keys_in_a_config_file(tmp_path):
  cfg = load_config(ROOT / "configs" / "tiny.py")
  cfg.model.unknown_knob = 3
  with pytest.raises(ValueError, match="unknown model config keys"):
    resolve(cfg)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_config(tmp_path / "nope.py")


def test_mesh_sizes_against_device_count():
  assert MeshConfig(data=-1, tensor=2).shape(8) == {
    "data": 4,
    "fsdp": 1,
    "tensor": 2,
    "sequence": 1,
  }
  with pytest.raises(ValueError, match="multiply to"):
    MeshConfig(data=2, fsdp=2, tensor=1, sequence=1).shape(8)
  with pytest.raises(ValueError, match="not divisible"):
    MeshConfig(data=-1, tensor=3).shape(8)
  cfg = load_config(ROOT / "configs" / "tiny.py", ["--config.mesh.data=3"])
  with pytest.raises(ValueError, match="mesh"):
    resolve(cfg, num_devices=1)


def test_ring_attention_needs_the_sequence_on_one_mesh_axis():
  # Ring attention runs over one mesh axis: rules that put the length over two are refused
  # in one line naming the key, not with an unpacking error at trace time.
  rules = "sharding.rules.cp={'batch': ('data', 'fsdp'), 'length': ('sequence', 'tensor')}"
  mesh = ["mesh.data=1", "mesh.tensor=2", "mesh.sequence=2", "sharding.strategy=cp"]
  cfg = load_config(ROOT / "configs" / "tiny.py", [rules, *mesh])
  with pytest.raises(ValueError, match=r"sharding.rules.cp.length .* one mesh axis"):
    resolve(cfg, num_devices=4)
  cfg = load_config(ROOT / "configs" / "tiny.py", [rules, *mesh, "model.attention=softmax"])
  resolve(cfg, num_devices=4)  # no ring: the partitioner splits the sequence


def test_batch_divisibility_follows_the_strategys_batch_rule():
  # The rules (config) say which mesh axes split the batch, so the check reads them: here 6
  # rows over data x sequence = 8 devices, which failed later with an IndivisibleError.
  over = ["sharding.rules.dp.batch=('data', 'sequence')", "mesh.data=2", "mesh.sequence=4"]
  cfg = load_config(ROOT / "configs" / "tiny.py", [*over, "train.batch_size=6"])
  with pytest.raises(ValueError, match=r"train.batch_size=6 .* mesh.data \* mesh.sequence = 8"):
    resolve(cfg, num_devices=8)


@pytest.mark.parametrize(
  "strategy,mesh",
  [("fsdp", ["mesh.data=1", "mesh.fsdp=8"]), ("fsdp_tp", ["mesh.fsdp=4", "mesh.tensor=2"])],
)
def test_fsdp_needs_d_model_divisible_by_its_axis(strategy, mesh):
  # fsdp shards every parameter along d_model; 34 over 8 (or 4) devices left them all whole
  # (sharding.param_shardings drops an axis that does not divide), so "fsdp" trained as dp.
  over = [f"sharding.strategy={strategy}", "mesh.data=1", *mesh, "model.d_model=34"]
  cfg = load_config(ROOT / "configs" / "tiny.py", over)
  with pytest.raises(UserError, match=r"splits embed over \d devices, but model.d_model=34"):
    resolve(cfg, num_devices=8)
  resolve(apply_overrides(cfg, ["model.d_model=40", "mesh.fsdp=4", "mesh.data=-1"]), 8)


def test_apply_overrides_rejects_malformed():
  cfg = load_config(ROOT / "configs" / "tiny.py")
  with pytest.raises(ValueError, match="must look like"):
    apply_overrides(cfg, ["--config.train.steps"])


@pytest.mark.parametrize(
  "rules,match",
  [
    ("foo", "sharding.rules must be a mapping"),
    ({"dp": "foo"}, "sharding.rules.dp must be a mapping"),
    ({"dp": {"batch": 3}}, "sharding.rules.dp.batch must be a mesh axis name or a list"),
  ],
)
def test_a_wrong_type_in_the_sharding_rules_names_the_key(rules, match):
  from parallax_jax.sharding import ShardingConfig

  with pytest.raises(ValueError, match=match):
    ShardingConfig.from_dict({"strategy": "dp", "rules": rules})


def test_a_none_where_a_number_belongs_names_the_key():
  """Not Python's "'<' not supported between 'NoneType' and 'int'" under config.train."""
  cfg = load_config(ROOT / "configs" / "tiny.py")
  with cfg.train.ignore_type():
    cfg.train.eval_batches = None
  with pytest.raises(ValueError, match=r"^train.eval_batches must be an int >= 0, got None$"):
    resolve(cfg)


@pytest.mark.parametrize("override", ["--config.train={'steps': 5}", "--config.sharding={}"])
def test_a_dict_for_a_whole_section_is_refused(override):
  """A dict replaced the section: --config.train={'steps': 5} trained tiny.py at seq_len 256
  and eval_every 200 (the defaults), not its 128 and 100, and said nothing."""
  cfg = load_config(ROOT / "configs" / "tiny.py")
  with pytest.raises(UserError, match=r"a dict would replace the whole section.*one by one"):
    apply_overrides(cfg, [override])
  with pytest.raises(UserError, match=r"it is a section .*KEY=VALUE\), got"):
    apply_overrides(cfg, ["--config.train=5"])


@pytest.mark.parametrize(
  "overrides",
  [
    ["--config.model.output_dim=1"],
    ["--config.model.input_dim=9", "--config.model.tie_embeddings=False"],
  ],
)
def test_a_regression_model_on_a_text_corpus_is_refused(overrides):
  """tiny.py with model.output_dim=1 trained an MSE regression on byte ids (loss 8170 at step
  1) without a word; input_dim read token ids as vectors."""
  from parallax_jax.train.data_io import TrainData

  exp = resolve(load_config(ROOT / "configs" / "tiny.py", overrides))
  with pytest.raises(UserError, match=r"token ids in, logits out: set model.input_dim=0"):
    TrainData(exp)


def test_tp_needs_vocab_size_divisible_by_its_axis():
  # tp splits the embedding (and an untied head) along the vocabulary; 385 over 2 devices left
  # them whole on every device (sharding.param_shardings drops an axis that does not divide).
  over = ["sharding.strategy=tp", "mesh.data=1", "mesh.tensor=2", "model.vocab_size=385"]
  cfg = load_config(ROOT / "configs" / "tiny.py", over)
  with pytest.raises(UserError, match=r"splits vocab over 2 devices, but model.vocab_size=385"):
    resolve(cfg, num_devices=2)
  resolve(apply_overrides(cfg, ["model.vocab_size=386"]), 2)
  # a model of vectors in and out has no vocabulary axis: its vocab_size is not read
  vectors = ["model.input_dim=9", "model.output_dim=1", "model.tie_embeddings=False"]
  resolve(apply_overrides(cfg, vectors), 2)
