"""MQAR generator: answers match the pairs, masks, determinism, resume, config checks."""

import json
from pathlib import Path

import numpy as np
import pytest

from parallax_jax.data.config import DataConfig
from parallax_jax.data.synthetic import MQARRow, describe_task, make_task_dataset, mqar_vocab

CFG = DataConfig(source="mqar", mqar_vocab_size=33, mqar_num_pairs=6, mqar_num_queries=4)


def _batches(it, n):
  return [next(it) for _ in range(n)]


def test_rows_are_correct_recall_problems():
  keys, values = mqar_vocab(CFG.mqar_vocab_size)
  ds = make_task_dataset(CFG, seq_len=24, batch_size=4, split="train", seed=0)
  for batch in _batches(iter(ds), 3):
    assert {k: v.shape for k, v in batch.items()} == {
      k: (4, 24) for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")
    }
    for row in range(4):
      x, y = batch["inputs"][row], batch["targets"][row]
      np.testing.assert_array_equal(x[1:], y[:-1])  # targets are the next tokens
      pair_k, pair_v = x[0:12:2], x[1:12:2]
      assert len(set(pair_k)) == 6 and set(pair_k) <= set(keys) and set(pair_v) <= set(values)
      answer = dict(zip(pair_k, pair_v, strict=True))
      mask = batch["loss_mask"][row]
      qpos = np.flatnonzero(mask)
      np.testing.assert_array_equal(qpos, 12 + 2 * np.arange(4))
      for p in qpos:  # the target at a query key is that key's value
        assert x[p] in answer and y[p] == answer[x[p]]
      assert len(set(x[qpos])) == 4  # distinct keys asked
      np.testing.assert_array_equal(batch["segment_ids"][row], np.arange(24) < 20)
      np.testing.assert_array_equal(x[20:], 0)
      np.testing.assert_array_equal(batch["positions"][row][:20], np.arange(20))


def test_deterministic_and_seeded():
  a = _batches(iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="train", seed=1)), 2)
  b = _batches(iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="train", seed=1)), 2)
  c = _batches(iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="train", seed=2)), 2)
  e = _batches(iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="eval", seed=1)), 2)
  e2 = _batches(iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="eval", seed=9)), 2)
  np.testing.assert_array_equal(a[1]["inputs"], b[1]["inputs"])
  assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])
  assert not np.array_equal(a[0]["inputs"], e[0]["inputs"])
  np.testing.assert_array_equal(e[1]["inputs"], e2[1]["inputs"])  # eval ignores the seed


def test_resume_from_iterator_state():
  ds = make_task_dataset(CFG, seq_len=24, batch_size=2, split="train", seed=0)
  it = iter(ds)
  _batches(it, 3)
  state = it.get_state()
  want = _batches(it, 2)
  resumed = iter(make_task_dataset(CFG, seq_len=24, batch_size=2, split="train", seed=0))
  resumed.set_state(state)
  for w, g in zip(want, _batches(resumed, 2), strict=True):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])


def test_processes_get_disjoint_rows():
  kw = dict(seq_len=24, batch_size=2, split="train", seed=0, process_count=2)
  p0 = next(iter(make_task_dataset(CFG, process_index=0, **kw)))
  p1 = next(iter(make_task_dataset(CFG, process_index=1, **kw)))
  whole = next(iter(make_task_dataset(CFG, seq_len=24, batch_size=4, split="train", seed=0)))
  np.testing.assert_array_equal(whole["inputs"][[0, 2]], p0["inputs"])
  np.testing.assert_array_equal(whole["inputs"][[1, 3]], p1["inputs"])


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="mqar_num_queries"):
    DataConfig(source="mqar", mqar_num_pairs=4, mqar_num_queries=5)
  with pytest.raises(ValueError, match="mqar_vocab_size"):
    DataConfig(source="mqar", mqar_vocab_size=9, mqar_num_pairs=8)
  with pytest.raises(ValueError, match="seq_len"):
    make_task_dataset(CFG, seq_len=16, batch_size=2, split="train", seed=0)
  assert describe_task(CFG)["chance_accuracy"] == 1 / 16
  assert MQARRow(CFG, 24, 0, "train")(5)["loss_mask"].sum() == 4


def _int_keys(tree):
  """Orbax restores list indices (``blocks[0]``) as string keys; NNX wants ints."""
  if not isinstance(tree, dict):
    return tree
  return {int(k) if k.isdigit() else k: _int_keys(v) for k, v in tree.items()}


def test_trainer_on_mqar_logs_eval_accuracy(tmp_path):
  import orbax.checkpoint as ocp
  from flax import nnx

  from parallax_jax.model import Transformer
  from parallax_jax.train.config import load_config, resolve
  from parallax_jax.train.loop import train
  from parallax_jax.train.metrics import read_metrics

  cfg = load_config(
    Path(__file__).resolve().parents[1] / "configs" / "mqar_tiny.py",
    [
      "model.d_model=32",
      "model.num_layers=1",
      "model.head_dim=8",
      "model.mlp_dim=64",
      "train.batch_size=8",
      "train.steps=4",
      "train.log_every=2",
      "train.eval_every=4",
      "train.eval_batches=1",
      "train.progress_bar=false",
    ],
  )
  summary = train(cfg, tmp_path)
  record = read_metrics(tmp_path)[-1]
  assert summary["final_step"] == 4
  # Recompute the logged eval metrics from the final checkpoint with NumPy: argmax accuracy
  # and mean NLL over the answer positions of the held-out batch.
  exp = resolve(cfg)
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore((tmp_path / "checkpoints" / "4" / "state").absolute())
  model = Transformer(exp.model, rngs=nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, _int_keys(saved["params"]))
  nnx.update(model, params)
  batch = next(
    iter(
      make_task_dataset(
        exp.data, seq_len=exp.train.seq_len, batch_size=8, split="eval", seed=exp.train.seed
      )
    )
  )
  logits = np.asarray(model(batch["inputs"], batch["positions"], batch["segment_ids"]), np.float64)
  answer = batch["loss_mask"] > 0
  logits, targets = logits[answer], batch["targets"][answer]
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  nll = log_z - logits[np.arange(len(targets)), targets]
  assert record["eval_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == targets))
  assert record["eval_loss"] == pytest.approx(np.mean(nll), rel=1e-5)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["data"]["source"]["task"] == "mqar"


@pytest.mark.parametrize("pairs,queries,vocab", [(8, 5, 17), (6, 6, 33), (3, 1, 7)])
def test_guess_accuracy_matches_the_generators_rows(pairs, queries, vocab):
  """``mqar_guess_accuracy`` against the real rows: for each generated row, the chance that a
  uniform guess among the values of the keys not asked yet is the answer, averaged over the
  row's queries and over 3000 rows (small value sets, so repeated values count)."""
  from parallax_jax.data.synthetic import mqar_guess_accuracy

  cfg = DataConfig(
    source="mqar", mqar_vocab_size=vocab, mqar_num_pairs=pairs, mqar_num_queries=queries
  )
  seq_len = 2 * (pairs + queries)
  make = MQARRow(cfg, seq_len, 0, "train")
  per_row = []
  for n in range(3000):
    x = make(n)["inputs"]
    keys, values = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
    asked = x[2 * pairs : seq_len : 2]
    hits = []
    for j, key in enumerate(asked):
      left = values[~np.isin(keys, asked[:j])]  # the values of the keys not asked before j
      hits.append(np.mean(left == values[keys == key][0]))
    per_row.append(np.mean(hits))
  mean, sem = np.mean(per_row), np.std(per_row) / np.sqrt(len(per_row))
  assert (
    abs(mqar_guess_accuracy(pairs, queries, len(mqar_vocab(vocab)[1])) - mean) < 4 * sem + 1e-12
  )


def test_guess_accuracy_closed_forms_and_checks():
  """Every key asked, values all distinct (V -> infinity): H_n / n; one query: (1 + (n-1)/V)/n;
  bad counts raise naming them."""
  from parallax_jax.data.synthetic import mqar_guess_accuracy

  harmonic = sum(1 / k for k in range(1, 65))
  assert mqar_guess_accuracy(64, 64, 10**12) == pytest.approx(harmonic / 64)
  assert mqar_guess_accuracy(5, 1, 4) == pytest.approx((1 + 4 / 4) / 5)
  assert mqar_guess_accuracy(4, 4, 512) == pytest.approx(0.5218, abs=1e-4)
  with pytest.raises(ValueError, match="num_queries=5"):
    mqar_guess_accuracy(4, 5, 512)
