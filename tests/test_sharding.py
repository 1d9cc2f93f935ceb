"""Sharding strategies on 8 fake CPU devices: exactness, shardings, restore, comparison."""

import copy
import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_configs import SHARDABLE

from parallax_jax import sharding
from parallax_jax.benchmarking.compare_sharding import compare_sharding, mesh_preset
from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
from parallax_jax.errors import UserError
from parallax_jax.train.checkpoint import Checkpointer, abstract_like
from parallax_jax.train.config import CheckpointConfig, apply_overrides, load_config, resolve
from parallax_jax.train.program import Program

ROOT = Path(__file__).resolve().parents[1]
SMALL = SHARDABLE


def _cfg(*extra):
  return load_config(ROOT / "configs" / "tiny.py", [*SMALL, *extra])


def _exp(strategy, attention="parallax", devices=8):
  cfg = _cfg(f"model.attention={attention}")
  sizes = mesh_preset(strategy, devices, resolve(cfg).model, 64)
  cfg = apply_overrides(
    cfg, [f"sharding.strategy={strategy}"] + [f"mesh.{k}={v}" for k, v in sizes.items()]
  )
  return resolve(cfg, devices)


def _loss_and_grads(program, params, batch):
  return program.loss_and_grads(params, program.device_batch(batch))


@pytest.fixture(scope="module")
def single():
  """Loss and grads on one device, per attention kind (the reference of every strategy)."""
  out = {}
  for attention in ("parallax", "softmax"):
    exp = _exp("dp", attention, devices=1)
    program = Program(exp, devices=jax.devices()[:1])
    params = jax.device_get(program.init(0).params)
    batch = synthetic_batch(exp.model, exp.train.batch_size, exp.train.seq_len, seed=3)
    batch["segment_ids"] = np.repeat(np.repeat([[1, 2]], 32, axis=1), 8, axis=0).astype(np.int32)
    out[attention] = (params, batch, *jax.device_get(_loss_and_grads(program, params, batch)))
  return out


@pytest.mark.parametrize("attention", ["parallax", "softmax"])
@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
def test_strategy_matches_single_device(strategy, attention, single):
  params, batch, loss_1, grads_1 = single[attention]
  program = Program(_exp(strategy, attention))
  loss, grads = jax.device_get(_loss_and_grads(program, params, batch))
  assert abs(float(loss) - float(loss_1)) < 1e-6 * abs(float(loss_1))
  for (path, g), g1 in zip(
    jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads_1), strict=True
  ):
    scale = np.max(np.abs(g1))
    assert np.max(np.abs(g - g1)) <= 1e-5 * scale, jax.tree_util.keystr(path)


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
@pytest.mark.parametrize("attention", ["parallax", "softmax"])
def test_softmax_under_cp_says_it_is_not_ring_attention(strategy, attention, caplog):
  Program(_exp(strategy, attention))
  said = "ring attention serves Parallax only" in caplog.text
  assert said == (strategy == "cp" and attention == "softmax"), caplog.text


@pytest.mark.parametrize("attention", ["parallax", "softmax"])
def test_cp_sequence_length_needs_2n_chunks_for_the_ring_and_n_for_softmax(attention):
  """seq_len 36 over 4 sequence shards: the ring's zigzag needs 8 chunks (refused, one line);
  softmax has no ring and shards it in 4 (it was refused too), with single-device numbers."""
  extra = ["train.seq_len=36", f"model.attention={attention}"]
  cfg = _cfg(*extra, "sharding.strategy=cp", "mesh.data=2", "mesh.sequence=4")
  if attention == "parallax":
    with pytest.raises(UserError, match=r"divisible by 8 \(zigzag load balancing"):
      resolve(cfg, 8)
    return
  exp = resolve(cfg, 8)
  one = resolve(_cfg(*extra), 1)
  single = Program(one, devices=jax.devices()[:1])
  params = jax.device_get(single.init(0).params)
  batch = synthetic_batch(one.model, one.train.batch_size, 36, seed=3)
  loss_1 = float(_loss_and_grads(single, params, batch)[0])
  loss = float(_loss_and_grads(Program(exp), params, batch)[0])
  assert abs(loss - loss_1) < 1e-6 * abs(loss_1)


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
def test_a_mesh_axis_no_rule_uses_is_said(strategy, caplog):
  """Each strategy's own preset mesh uses every axis it sizes (nothing said); dp on a mesh with
  tensor=2 repeats the same work on both halves: the log names the axis."""
  Program(_exp(strategy))
  assert "are in no rule" not in caplog.text, caplog.text
  if strategy == "dp":
    cfg = _cfg("sharding.strategy=dp", "mesh.data=4", "mesh.tensor=2")
    Program(resolve(cfg, 8))
    assert "mesh axes tensor=2 are in no rule of sharding.strategy='dp'" in caplog.text


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
def test_a_strategy_whose_split_axes_have_size_1_is_said(strategy, caplog):
  """``sharding.strategy=fsdp`` on the default mesh (data=-1: fsdp=1) ran as dp, every
  parameter replicated, without a word; the log names the unsplit rules. Each preset mesh
  splits what its strategy names (nothing said), and one device says nothing."""
  Program(_exp(strategy))
  assert "mesh axes have size 1 here" not in caplog.text, caplog.text
  Program(resolve(_cfg(f"sharding.strategy={strategy}"), 1), devices=jax.devices()[:1])
  assert "mesh axes have size 1 here" not in caplog.text, caplog.text
  Program(resolve(_cfg(f"sharding.strategy={strategy}"), 8))
  said = {
    "dp": None,
    "fsdp": "splits embed over fsdp, but",
    "tp": "splits kv_heads over tensor, mlp over tensor, q_heads over tensor, vocab over tensor,",
    "fsdp_tp": "splits embed over fsdp, kv_heads over tensor, mlp over tensor, q_heads over ",
    "cp": "splits length over sequence, but",
  }[strategy]
  if said is None:
    assert "mesh axes have size 1 here" not in caplog.text, caplog.text
  else:
    assert f"sharding.strategy='{strategy}' {said}" in caplog.text, caplog.text


def test_cp_with_q_heads_split_and_one_kv_head_matches_single_device():
  """Rules that add q_heads over tensor to cp (kv_heads unsplit; one kv head cannot split over
  2): the ring kept heads over tensor for kv too and raised "the number of kv heads 1 must be
  divisible" at trace time. It keeps heads whole instead, with single-device numbers."""
  mqa = ["model.num_kv_heads=1", "model.window_size=13"]
  one = resolve(_cfg(*mqa), 1)
  single = Program(one, devices=jax.devices()[:1])
  params = jax.device_get(single.init(0).params)
  batch = synthetic_batch(one.model, 8, 64, seed=3)
  batch["segment_ids"] = np.repeat(np.repeat([[1, 2]], 32, axis=1), 8, axis=0).astype(np.int32)
  loss_1, grads_1 = jax.device_get(_loss_and_grads(single, params, batch))
  rules = "sharding.rules.cp={'batch': ('data',), 'length': ('sequence',), 'q_heads': ('tensor',)}"
  mesh = ["sharding.strategy=cp", "mesh.data=1", "mesh.tensor=2", "mesh.sequence=4"]
  loss, grads = jax.device_get(
    _loss_and_grads(Program(resolve(_cfg(*mqa, rules, *mesh), 8)), params, batch)
  )
  assert abs(float(loss) - float(loss_1)) < 1e-6 * abs(float(loss_1))
  for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_1), strict=True):
    assert np.max(np.abs(g - g1)) <= 1e-5 * np.max(np.abs(g1))


def test_cp_with_the_model_s_own_name_for_the_sequence_axis_matches_single_device(single):
  """``model.axes.length`` renamed ('seq', rules to match): the batch sharding, the zigzag
  layout and the seq_len check read the fixed name "length", so T went unsharded and in plain
  order into a ring that expects zigzag (loss off by 3e-4, relative) and seq_len 72 over 8
  passed unchecked. Now the model's name is read: single-device numbers, and 72 refused."""
  params, batch, loss_1, grads_1 = single["parallax"]

  def cfg(*extra):
    cfg = _cfg(
      "sharding.strategy=cp",
      "sharding.rules.dp={'rows': ('data',)}",
      "sharding.rules.cp={'rows': ('data',), 'seq': ('sequence',)}",
      *extra,
    )
    cfg.model.axes = ml_collections.ConfigDict({"batch": "rows", "length": "seq"})
    return cfg

  program = Program(resolve(cfg("mesh.data=2", "mesh.sequence=4"), 8))
  assert program.batch_sharding.spec == P("data", "sequence")
  loss, grads = jax.device_get(_loss_and_grads(program, params, batch))
  assert abs(float(loss) - float(loss_1)) < 1e-6 * abs(float(loss_1))
  for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_1), strict=True):
    assert np.max(np.abs(g - g1)) <= 1e-5 * np.max(np.abs(g1))
  with pytest.raises(UserError, match=r"needs train.seq_len divisible by 16 \(zigzag"):
    resolve(cfg("mesh.data=1", "mesh.sequence=8", "train.seq_len=72"), 8)


@pytest.mark.parametrize(
  "strategy,expect",
  [
    ("dp", {"q": P(), "embed": P(), "down": P()}),
    ("fsdp", {"q": P("fsdp", None, None), "embed": P(None, "fsdp"), "down": P(None, "fsdp")}),
    ("tp", {"q": P(None, "tensor", None), "embed": P("tensor", None), "down": P("tensor", None)}),
    (
      "fsdp_tp",
      {"q": P("fsdp", "tensor", None), "embed": P("tensor", "fsdp"), "down": P("tensor", "fsdp")},
    ),
    ("cp", {"q": P(), "embed": P(), "down": P()}),
  ],
)
def test_parameter_and_activation_shardings_follow_the_rules(strategy, expect):
  program = Program(_exp(strategy))
  state = program.init(0)
  attn = state.params["blocks"][0]["attn"]
  got = {
    "q": attn["q_proj"]["kernel"].sharding.spec,
    "embed": state.params["embed"].sharding.spec,
    "down": state.params["blocks"][1]["mlp"]["down"]["kernel"].sharding.spec,
  }

  def norm(spec):  # P() == P(None, None): compare without trailing Nones
    axes = [None if a is None else (a if isinstance(a, str) else a[0]) for a in spec]
    while axes and axes[-1] is None:
      axes.pop()
    return tuple(axes)

  assert {k: norm(v) for k, v in got.items()} == {k: norm(v) for k, v in expect.items()}
  # Optimizer moments follow their parameter; the step count is replicated.
  leaves = jax.tree.leaves(state.opt_state)
  q_shaped = [x for x in leaves if x.shape == attn["q_proj"]["kernel"].shape]
  assert q_shaped and all(
    x.sharding.spec == attn["q_proj"]["kernel"].sharding.spec for x in q_shaped
  )
  # Activations: the batch is split over the batch axes (and T over sequence under cp).
  batch = program.device_batch(
    synthetic_batch(program.exp.model, program.exp.train.batch_size, program.exp.train.seq_len)
  )
  spec = batch["inputs"].sharding.spec
  assert spec == program.rules.spec(("batch", "length"))
  if strategy == "cp":
    assert spec[1] == "sequence"


@pytest.mark.parametrize(
  "strategy, rule, mesh, named",
  [
    (  # embed and the heads of q_proj both over tensor
      "tp",
      "{'batch': ('data',), 'embed': ('tensor',), 'q_heads': ('tensor',)}",
      ["mesh.data=4", "mesh.tensor=2"],
      "maps (embed and q_heads|q_heads and embed) both to mesh axis 'tensor', but parameter ",
    ),
    (  # the rows and the sequence of the batch both over sequence
      "cp",
      "{'batch': ('data', 'sequence'), 'length': ('sequence',)}",
      ["mesh.data=2", "mesh.sequence=4"],
      "maps batch and length both to mesh axis 'sequence', but every batch array",
    ),
    (  # attention's heads and rows over one axis
      "dp",
      "{'batch': ('data',), 'q_heads': ('data',), 'kv_heads': ('data',)}",
      ["mesh.data=2"],
      "maps batch and q_heads both to mesh axis 'data', but attention's q, k and v",
    ),
  ],
)
def test_rules_naming_one_mesh_axis_twice_for_one_array_are_one_line(strategy, rule, mesh, named):
  """A NamedSharding names a mesh axis once: such rules raised jax's DuplicateSpecError (a
  traceback, or at trace time the ring's ValueError); now a UserError naming the rules."""
  over = [f"sharding.rules.{strategy}={rule}", f"sharding.strategy={strategy}", "mesh.data=1"]
  cfg = _cfg(*over, *mesh)
  devices = int(np.prod([int(m.split("=")[1]) for m in mesh]))
  with pytest.raises(UserError, match=f"^sharding.rules.{strategy} {named}"):
    Program(resolve(cfg, devices), devices=jax.devices()[:devices])


@pytest.mark.parametrize(
  "extra, mesh, named",
  [
    (  # a typo: fsdp ran as dp, every parameter replicated
      ["sharding.strategy=fsdp", "sharding.rules.fsdp={'batch': ('data',), 'embd': ('fsdp',)}"],
      {"data": 1, "fsdp": 8},
      r"^sharding.rules.fsdp names logical axis 'embd', which the model does not have; the mo",
    ),
    (  # a rule for a logical axis the model leaves unnamed (model.axes.norm=None)
      ["sharding.strategy=tp", "sharding.rules.tp={'batch': ('data',), 'norm': ('tensor',)}"],
      {"data": 4, "tensor": 2},
      r"^sharding.rules.tp names logical axis 'norm', which the model does not have",
    ),
    (  # 257 token ids over 2: the embedding was left whole on every device
      ["sharding.strategy=tp", "model.vocab_size=257"],
      {"data": 4, "tensor": 2},
      r"^sharding.strategy='tp' splits vocab over 2 devices, but model.vocab_size=257 is not ",
    ),
    (  # head_dim 12 over 8
      [
        "sharding.strategy=tp",
        "sharding.rules.tp={'batch': ('data',), 'head_dim': ('tensor',)}",
        "model.head_dim=12",
      ],
      {"data": 1, "tensor": 8},
      r"^sharding.strategy='tp' splits head_dim over 8 devices, but model.head_dim=12 is not",
    ),
  ],
)
def test_rules_that_would_shard_nothing_are_refused_before_compiling(extra, mesh, named):
  """A rule naming a logical axis the model lacks, or splitting a dimension (vocab, head_dim)
  its mesh axes do not divide, left parameters replicated under a strategy that names a split;
  refused in one line by ``resolve``."""
  cfg = _cfg(*extra, *(f"mesh.{k}={v}" for k, v in mesh.items()))
  with pytest.raises(UserError, match=named):
    resolve(cfg, 8)


def test_a_rule_naming_a_mesh_axis_twice_is_refused():
  """'batch': ('data', 'data') was told to make train.batch_size divisible by mesh.data *
  mesh.data = 64 (a batch of 64 was then refused as mapping "batch and batch" to one axis);
  the rule is named."""
  cfg = _cfg("sharding.rules.dp={'batch': ('data', 'data')}", "mesh.data=8")
  with pytest.raises(UserError, match=r"^sharding.rules.dp.batch names mesh axes \['data'\] more"):
    resolve(cfg, 8)


def test_a_parameter_its_rule_does_not_divide_is_refused_not_replicated():
  """``param_shardings`` (what ``resolve`` guards) left such a parameter whole; it raises."""
  exp = resolve(
    _cfg("sharding.strategy=tp", "model.vocab_size=257", "mesh.data=4", "mesh.tensor=2")
  )
  with pytest.raises(UserError, match=r"^sharding.rules.tp.vocab splits parameter embed of sha"):
    Program(exp)


def test_tp_preset_splits_only_as_far_as_the_vocabulary_divides():
  """vocab_size=260 on 8 devices of 8 heads: tensor=8 left the embedding whole in a "tp" row
  (now refused by resolve); the preset takes tensor=4, which 260 divides."""
  model = resolve(_cfg("model.vocab_size=260", "model.num_heads=8", "model.num_kv_heads=8")).model
  assert mesh_preset("tp", 8, model, 64) == {"data": 2, "fsdp": 1, "tensor": 4, "sequence": 1}
  exp = _exp_of(_cfg("model.vocab_size=260", "model.num_heads=8", "model.num_kv_heads=8"), "tp")
  assert Program(exp).state_sharding.params["embed"].spec[0] == "tensor"


def _exp_of(cfg, strategy, devices=8):
  sizes = mesh_preset(strategy, devices, resolve(cfg).model, resolve(cfg).train.seq_len)
  cfg = apply_overrides(
    cfg, [f"sharding.strategy={strategy}"] + [f"mesh.{k}={v}" for k, v in sizes.items()]
  )
  return resolve(cfg, devices)


def test_restore_onto_a_different_mesh(tmp_path):
  exp8 = _exp("fsdp")
  program8 = Program(exp8)
  state = program8.init(0)
  ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False))
  ckpt.save(5, state, {"dummy": 1})
  ckpt.close()

  cfg4 = apply_overrides(
    _cfg(), ["sharding.strategy=dp", "mesh.data=4", "mesh.fsdp=1", "train.batch_size=8"]
  )
  program4 = Program(resolve(cfg4, 4), devices=jax.devices()[:4])
  ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False))
  restored, data_state = ckpt.restore(
    abstract_like(program4.abstract_state, program4.state_sharding)
  )
  ckpt.close()
  assert data_state == {"dummy": 1} and int(restored.step) == 0
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  q = restored.params["blocks"][0]["attn"]["q_proj"]["kernel"]
  assert len(q.sharding.device_set) == 4 and q.sharding.is_fully_replicated


@pytest.mark.slow  # ~60 s: the CLI end to end; every strategy's numerics run by default above
def test_compare_sharding_writes_csv_and_chart(tmp_path, capsys):
  cfg = _cfg("train.steps=2")
  rows = compare_sharding(copy.deepcopy(cfg), sharding.STRATEGIES, tmp_path, steps=1)
  assert [r["strategy"] for r in rows] == list(sharding.STRATEGIES)
  printed = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()]
  assert [p for p in printed if p in sharding.STRATEGIES] == list(sharding.STRATEGIES)  # once each
  assert not any(r.get("error") for r in rows), rows
  losses = [r["first_step_loss"] for r in rows]
  assert max(losses) - min(losses) < 1e-5 * abs(losses[0])
  text = (tmp_path / "sharding.csv").read_text().splitlines()
  for column in (
    "strategy",
    "mesh",
    "step_time_s",
    "tokens_per_s",
    "peak_memory_bytes",
    "collective_bytes",
    "mfu",
    "first_step_loss",
  ):
    assert column in text[0]
  assert len(text) == 1 + len(sharding.STRATEGIES)
  assert (tmp_path / "sharding.png").stat().st_size > 10_000
  by = {r["strategy"]: r for r in rows}
  assert by["fsdp"]["peak_memory_bytes"] < by["dp"]["peak_memory_bytes"]
  assert by["dp"]["collective_bytes"] < by["fsdp"]["collective_bytes"]


def test_compare_sharding_over_device_counts(tmp_path):
  """``--devices 1,2``: the strategy runs on 1 and on 2 devices at the same global batch (the
  same first-step loss), the CSV has a devices column, scaling.png is drawn; a count the host
  lacks is a one-line error naming --devices."""
  cfg = _cfg("train.steps=2")
  rows = compare_sharding(copy.deepcopy(cfg), ["dp"], tmp_path, steps=1, device_counts=[1, 2])
  assert not any(r.get("error") for r in rows), rows
  assert [(r["strategy"], r["devices"]) for r in rows] == [("dp", 1), ("dp", 2)]
  assert rows[0]["mesh"] == "" and rows[1]["mesh"] == "data=2"
  a, b = (r["first_step_loss"] for r in rows)
  assert abs(a - b) < 1e-5 * abs(a)
  text = (tmp_path / "sharding.csv").read_text().splitlines()
  assert text[0].split(",")[:2] == ["strategy", "devices"]
  assert [line.split(",")[1] for line in text[1:]] == ["1", "2"]
  assert (tmp_path / "scaling.png").stat().st_size > 10_000
  with pytest.raises(UserError, match="--devices: counts \\[16\\]"):
    compare_sharding(copy.deepcopy(cfg), ["dp"], tmp_path, device_counts=[16])


def test_fsdp_preset_splits_only_as_far_as_d_model_divides():
  """d_model=36 on 8 devices: fsdp=8 would leave every parameter whole (a "fsdp" row that is
  dp); the preset takes fsdp=4 (and data=2), which the parameters split over."""
  model = resolve(_cfg("model.d_model=36")).model
  assert mesh_preset("fsdp", 8, model, 64) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
  assert mesh_preset("fsdp_tp", 8, model, 64) == {"data": 1, "fsdp": 4, "tensor": 2, "sequence": 1}


# Several processes: each reads its own rows -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Device:
  id: int
  process_index: int


class _OverTwoProcesses:
  """A real sharding's tiles with its 8 devices dealt to two processes as jax orders them
  (process-major: devices 0-3 on process 0)."""

  def __init__(self, real):
    self.mesh, self.spec, self._real = real.mesh, real.spec, real

  def devices_indices_map(self, shape):
    return {
      _Device(d.id, d.id // 4): index for d, index in self._real.devices_indices_map(shape).items()
    }


@pytest.mark.parametrize(
  "mesh,ok",
  [
    ({"data": 2, "fsdp": 4}, True),
    ({"data": 8}, True),
    ({"data": 2, "sequence": 4}, True),  # the ring within a process
    ({"data": 4, "tensor": 2}, True),
    ({"sequence": 8}, False),  # the rows whole on both processes: would be glued along T
    ({"fsdp": 4, "tensor": 2}, True),
    ({"data": 2, "tensor": 2, "sequence": 2}, True),
    ({"tensor": 2, "sequence": 4}, False),  # the batch's rows unsplit
  ],
)
def test_each_process_must_hold_its_own_block_of_rows(monkeypatch, mesh, ok):
  cfg = _cfg(*(f"mesh.{k}={v}" for k, v in {"data": 1, **mesh}.items()))
  cfg = apply_overrides(
    cfg, ["sharding.strategy=cp" if "sequence" in mesh else "sharding.strategy=fsdp_tp"]
  )
  program = Program(resolve(cfg, 8))  # one process here: always passes
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  fake = _OverTwoProcesses(program.batch_sharding)
  if ok:
    sharding.check_rows_per_process(fake, 8, 64)
  else:
    with pytest.raises(UserError, match="over 2 processes: each process reads its own rows"):
      sharding.check_rows_per_process(fake, 8, 64)


@pytest.mark.parametrize(
  "strategy, extra, named",
  [
    ("tp", ["model.num_heads=3", "model.num_kv_heads=3"], "num_kv_heads=3.*would be dp$"),
    ("fsdp_tp", ["model.num_heads=3", "model.num_kv_heads=3"], "num_kv_heads=3.*would be fsdp$"),
    ("cp", [], "train.seq_len=66.*would be dp$"),
    ("fsdp", ["model.d_model=33"], "d_model=33; the row would be dp$"),
    ("fsdp_tp", ["model.d_model=33"], "d_model=33; the row would be tp$"),
  ],
)
def test_a_strategy_whose_split_fits_no_device_count_is_refused_not_run_as_dp(
  strategy, extra, named
):
  """tp over 8 devices of a model with 3 heads would run with tensor=1 (every device dp): the
  comparison would print a "tp" row that is not tp. Refused, naming what does not split; on one
  device every strategy is the same run, and stays allowed."""
  model = resolve(_cfg(*extra)).model
  seq_len = 66 if strategy == "cp" else 64  # 66 = 2 x 33: no even split over 2+ devices
  with pytest.raises(UserError, match=f"{strategy} on 8 devices.*{named}"):
    mesh_preset(strategy, 8, model, seq_len)
  assert mesh_preset(strategy, 1, model, seq_len) == {
    "data": 1,
    "fsdp": 1,
    "tensor": 1,
    "sequence": 1,
  }
