"""Gradient accumulation (``train.microbatches``): the same step as the whole batch at once.

The reference is the whole batch taken at once (``microbatches=1``, the path the finite
difference and oracle tests check), on one device; the properties are that accumulation gives
its loss and gradient whatever the pieces' loss-token counts, keeps rows on their devices, and
holds less memory.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_configs import SHARDABLE, TINY

from parallax_jax.benchmarking.compare_sharding import mesh_preset
from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
from parallax_jax.errors import UserError
from parallax_jax.train.config import apply_overrides, load_config, resolve
from parallax_jax.train.microbatch import split, sum_over_microbatches
from parallax_jax.train.program import Program


def test_split_deals_rows_round_robin():
  x = np.arange(12 * 3).reshape(12, 3)
  pieces = split({"x": jnp.asarray(x), "none": None}, 4)
  assert pieces["none"] is None and pieces["x"].shape == (4, 3, 3)
  for i in range(4):
    np.testing.assert_array_equal(pieces["x"][i], x[i::4])
  with pytest.raises(ValueError, match="12 rows do not split into 5"):
    split({"x": jnp.asarray(x)}, 5)


def test_sums_are_added_in_float32():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 5)).astype(np.float32)

  def fn(piece):
    return {"s": jnp.sum(piece["x"]).astype(jnp.bfloat16), "n": jnp.int32(piece["x"].shape[0])}

  out = sum_over_microbatches(fn, {"x": jnp.asarray(x)}, 4)
  assert out["s"].dtype == jnp.float32 and out["n"].dtype == jnp.int32 and int(out["n"]) == 16
  # Each piece's sum is rounded to bfloat16 once; the additions are float32.
  expected = sum(
    float(jnp.asarray(x[i::4].astype(np.float64).sum(), jnp.float32).astype(jnp.bfloat16))
    for i in range(4)
  )
  assert abs(float(out["s"]) - expected) <= 1e-6 * abs(expected)


def _exp(*extra, devices=1, strategy="dp"):
  cfg = load_config(TINY, [*SHARDABLE, "train.batch_size=16", *extra])
  sizes = mesh_preset(strategy, devices, resolve(cfg).model, 64)
  cfg = apply_overrides(
    cfg, [f"sharding.strategy={strategy}"] + [f"mesh.{k}={v}" for k, v in sizes.items()]
  )
  return resolve(cfg, devices)


def _uneven_batch(exp):
  """Loss tokens spread unevenly over the pieces: with 2 or 4 pieces, the even rows (pieces 0,
  2) train 4 positions each and the odd rows all 64, so a mean of per-piece means is off."""
  batch = synthetic_batch(exp.model, exp.train.batch_size, exp.train.seq_len, seed=5)
  mask = np.ones_like(batch["loss_mask"])
  mask[0::2, 4:] = 0
  batch["loss_mask"] = mask
  return batch


@pytest.fixture(scope="module", params=["parallax", "softmax"])
def whole_batch(request):
  exp = _exp(f"model.attention={request.param}")
  program = Program(exp, devices=jax.devices()[:1])
  params = jax.device_get(program.init(0).params)
  batch = _uneven_batch(exp)
  loss, grads = jax.device_get(program.loss_and_grads(params, program.device_batch(batch)))
  return request.param, params, batch, loss, grads


def _assert_same_step(loss, grads, loss_1, grads_1):
  assert abs(float(loss) - float(loss_1)) <= 2e-6 * abs(float(loss_1))
  for (path, g), g1 in zip(
    jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads_1), strict=True
  ):
    assert g.dtype == g1.dtype, jax.tree_util.keystr(path)
    assert np.max(np.abs(g - g1)) <= 1e-5 * np.max(np.abs(g1)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_accumulated_step_is_the_whole_batch_step(microbatches, whole_batch):
  attention, params, batch, loss_1, grads_1 = whole_batch
  exp = _exp(f"model.attention={attention}", f"train.microbatches={microbatches}")
  program = Program(exp, devices=jax.devices()[:1])
  loss, grads = jax.device_get(program.loss_and_grads(params, program.device_batch(batch)))
  _assert_same_step(loss, grads, loss_1, grads_1)
  # The eval sums too (the whole batch's, over the pieces).
  sums = jax.device_get(program.eval_step(params, program.device_batch(batch)))
  sums_1 = jax.device_get(
    Program(_exp(f"model.attention={attention}"), devices=jax.devices()[:1]).eval_step(
      params, batch
    )
  )
  assert sums.keys() == sums_1.keys()
  for k in sums:
    assert abs(float(sums[k]) - float(sums_1[k])) <= 1e-5 * abs(float(sums_1[k])), k


@pytest.mark.parametrize("strategy", ["dp", "fsdp", "cp"])
def test_accumulation_on_eight_devices(strategy, whole_batch):
  """The sharded accumulated step equals the one-device whole-batch step, and its pieces keep
  their rows where they are: the compiled step moves no batch rows between devices."""
  attention, params, batch, loss_1, grads_1 = whole_batch
  exp = _exp(f"model.attention={attention}", "train.microbatches=2", devices=8, strategy=strategy)
  program = Program(exp)
  loss, grads = jax.device_get(program.loss_and_grads(params, program.device_batch(batch)))
  _assert_same_step(loss, grads, loss_1, grads_1)
  if strategy == "dp":
    hlo = program.lower_train_step(batch).compile().as_text()
    assert not re.search(r"all-to-all|collective-permute", hlo)


def _temp_bytes(*extra):
  exp = _exp("model.num_layers=1", "train.seq_len=256", "train.batch_size=16", *extra)
  program = Program(exp, devices=jax.devices()[:1])
  batch = synthetic_batch(exp.model, exp.train.batch_size, exp.train.seq_len, seed=0)
  return program.lower_train_step(batch).compile().memory_analysis().temp_size_in_bytes


def test_accumulation_holds_less_memory():
  whole, quarters = _temp_bytes(), _temp_bytes("train.microbatches=4")
  assert quarters < 0.5 * whole, (quarters, whole)


def test_microbatch_config_mistakes_are_one_line():
  with pytest.raises(UserError, match=r"train.batch_size=16 does not split into .*=3"):
    _exp("train.microbatches=3")
  with pytest.raises(UserError, match="train.microbatches must be an int >= 1, got 0"):
    _exp("train.microbatches=0")
  # 16 rows in 4 pieces of 4 rows cannot spread over 8 data-parallel devices.
  with pytest.raises(UserError, match=r"4 rows does not split over mesh.data \* mesh.fsdp = 8"):
    _exp("train.microbatches=4", devices=8)


@pytest.mark.slow  # ~14 s on 2 cores: the script end to end; the step itself is tested above
def test_bench_train_times_the_accumulated_step(tmp_path):
  """``bench_train --microbatches``: the same steps (same loss after them) on pieces; the table
  says so; a count that does not divide the batch is refused before anything runs."""
  from experiments import bench_train

  common = ["--config", str(TINY), "--seq-len", "32", "--batches", "4", "--steps", "1"]
  common += ["--warmup", "0", "--attention", "parallax"]
  whole = bench_train.main(common)["rows"][0]
  record = bench_train.main([*common, "--microbatches", "2", "--out-dir", str(tmp_path)])
  pieces = record["rows"][0]
  assert (whole["microbatches"], pieces["microbatches"]) == (1, 2)
  assert abs(pieces["loss"] - whole["loss"]) <= 1e-5 * abs(whole["loss"])
  (md,) = tmp_path.glob("bench_train_*.md")
  assert "| parallax | none | 4 in 2 |" in md.read_text()
  with pytest.raises(SystemExit):
    bench_train.main([*common, "--microbatches", "3"])


def test_chunked_lm_head_under_context_parallelism(capfd):
  """The chunked LM head (train and eval) under cp: the one-device numbers, and each scanned
  chunk spread over the sequence shards (a chunk of T taken whole would live on one shard, and
  XLA replicates the stacked chunks: its "Involuntary full rematerialization" warning)."""
  head = ("model.logits_chunk=16",)
  one = Program(_exp(*head), devices=jax.devices()[:1])
  params = jax.device_get(one.init(0).params)
  batch = _uneven_batch(one.exp)
  loss_1, grads_1 = jax.device_get(one.loss_and_grads(params, one.device_batch(batch)))
  sums_1 = jax.device_get(one.eval_step(params, one.device_batch(batch)))
  capfd.readouterr()
  cp = Program(_exp(*head, devices=8, strategy="cp"))
  loss, grads = jax.device_get(cp.loss_and_grads(params, cp.device_batch(batch)))
  sums = jax.device_get(cp.eval_step(params, cp.device_batch(batch)))
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  _assert_same_step(loss, grads, loss_1, grads_1)
  for k in sums:
    assert abs(float(sums[k]) - float(sums_1[k])) <= 1e-5 * abs(float(sums_1[k])), k
