"""Synthetic tasks generated on the fly from a seed: MQAR (multi-query associative recall) here,
in-context linear regression ("linreg", "drift_linreg") in `parallax_jax.data.regression`.

One MQAR row of ``seq_len`` inputs (token 0 is padding; keys and values come from disjoint
halves of ``[1, mqar_vocab_size)``)::

    k_1 v_1 k_2 v_2 ... k_N v_N  q_1 a_1 q_2 a_2 ... q_Q a_Q  0 0 ...
    `------ N pairs (keys distinct) -----'`-- Q queries: q_j is one of the keys, a_j its value

``inputs = x[:-1]``, ``targets = x[1:]`` of that ``seq_len + 1`` token sequence, so the target
at a query position ``q_j`` is its answer ``a_j``; ``loss_mask`` is 1 on exactly those Q
positions. Row ``n`` of a split is a pure function of ``(seed, shuffle_seed, split, n)``; the
dataset is ``grain.MapDataset.range(...).map(...)``, so its iterator checkpoints and resumes
like the text pipeline. Chance accuracy is ``1 / num_values``.
"""

from __future__ import annotations

import grain
import numpy as np

from parallax_jax.data.config import TASKS, DataConfig
from parallax_jax.data.regression import RegressionRow, check_regression, describe_regression
from parallax_jax.errors import UserError

_SPLIT_SALT = {"train": 0x7A11, "eval": 0xE7A1}
_EVAL_SEED = 0x5EED  # the eval rows do not depend on the run's seeds
_ROWS = 1 << 40  # "forever" for the train split


def mqar_vocab(vocab_size: int) -> tuple[range, range]:
  """(key ids, value ids): the lower and upper halves of ``[1, vocab_size)``."""
  half = (vocab_size - 1) // 2
  return range(1, 1 + half), range(1 + half, vocab_size)


def mqar_guess_accuracy(num_pairs: int, num_queries: int, num_values: int) -> float:
  """Expected answer accuracy of a model that knows MQAR's rules but cannot match keys: at each
  query it guesses uniformly among the values of the keys not asked yet (each key is asked at
  most once, so an answered key's value is ruled out). With ``m`` keys left, the true value is
  one of them and each other one equals it with probability ``1 / num_values`` (values are drawn
  with replacement), so a guess is right with probability ``(1 + (m - 1) / num_values) / m``;
  averaged over the queries (``m = num_pairs, ..., num_pairs - num_queries + 1``). With every key
  asked and distinct values this is ``H_n / n``. Recall plateaus sit here (docs/design.md §15.1)."""
  if not 0 < num_queries <= num_pairs or num_values < 1:
    raise ValueError(
      f"need 0 < num_queries <= num_pairs and num_values >= 1, got num_pairs={num_pairs}, "
      f"num_queries={num_queries}, num_values={num_values}"
    )
  left = range(num_pairs - num_queries + 1, num_pairs + 1)
  return sum((1 + (m - 1) / num_values) / m for m in left) / num_queries


def split_seed(cfg: DataConfig, seed: int, split: str) -> tuple[int, int]:
  return (_EVAL_SEED, 0) if split == "eval" else (seed, cfg.shuffle_seed)


class MQARRow:
  """Row index -> batch features (int32/float32 ``[seq_len]`` each), see the module docstring."""

  def __init__(self, cfg: DataConfig, seq_len: int, seed: int, split: str):
    self.seq_len, self.split = seq_len, split
    self.num_pairs, self.num_queries = cfg.mqar_num_pairs, cfg.mqar_num_queries
    self.keys, self.values = mqar_vocab(cfg.mqar_vocab_size)
    self.seed = split_seed(cfg, seed, split)

  def __call__(self, index) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([*self.seed, _SPLIT_SALT[self.split], int(index)])
    n, nq, t = self.num_pairs, self.num_queries, self.seq_len
    keys = self.keys.start + rng.choice(len(self.keys), n, replace=False)
    values = self.values.start + rng.integers(0, len(self.values), n)
    asked = rng.choice(n, nq, replace=False)
    x = np.zeros(t + 1, np.int64)
    x[0 : 2 * n : 2], x[1 : 2 * n : 2] = keys, values
    qs = 2 * n + 2 * np.arange(nq)  # query positions in x
    x[qs], x[qs + 1] = keys[asked], values[asked]
    used = 2 * (n + nq)
    loss_mask = np.zeros(t, np.float32)
    loss_mask[qs] = 1.0
    real = np.arange(t) < used
    return {
      "inputs": x[:-1].astype(np.int32),
      "targets": x[1:].astype(np.int32),
      "segment_ids": real.astype(np.int32),
      "positions": np.where(real, np.arange(t), 0).astype(np.int32),
      "loss_mask": loss_mask,
    }


def check_task(cfg: DataConfig, seq_len: int, model=None) -> None:
  """Raises ``ValueError`` naming the field when the task does not fit the run (and ``model``,
  a ``ModelConfig``, when given)."""
  if not cfg.is_task:
    raise UserError(f"data.source={cfg.source!r} is not a synthetic task {TASKS}")
  if cfg.is_regression:
    check_regression(cfg, seq_len, model)
    return
  need = 2 * (cfg.mqar_num_pairs + cfg.mqar_num_queries)
  if need > seq_len:
    raise UserError(
      f"MQAR needs train.seq_len >= 2 * (data.mqar_num_pairs + data.mqar_num_queries) = "
      f"{need}, got {seq_len}"
    )
  if model is None:
    return
  if cfg.mqar_vocab_size > model.vocab_size:
    raise UserError(
      f"data.mqar_vocab_size={cfg.mqar_vocab_size} exceeds model.vocab_size={model.vocab_size}"
    )
  if model.input_dim or model.output_dim:
    raise UserError(
      f"data.source='mqar' is token ids in, logits out: set model.input_dim=0 and "
      f"model.output_dim=0 (got {model.input_dim} and {model.output_dim})"
    )


def make_task_dataset(
  cfg: DataConfig,
  *,
  seq_len: int,
  batch_size: int,
  split: str,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Batches ``{inputs, targets, segment_ids, positions, loss_mask}`` ``[batch_size, seq_len]``
  (regression: ``inputs`` ``[batch_size, seq_len, d + 1]`` float32, eval adds the
  ``baseline_*`` predictions, see `parallax_jax.data.regression`).

  Process ``p`` of ``n`` takes rows ``p, p + n, ...``; "train" is endless, "eval" is a fixed
  set of rows independent of ``seed`` (iterate as many batches as needed).
  """
  if split not in _SPLIT_SALT:
    raise ValueError(f"split={split!r}: must be 'train' or 'eval'")
  check_task(cfg, seq_len)
  rows = grain.MapDataset.range(process_index, _ROWS, process_count)
  if cfg.is_regression:
    entropy = (*split_seed(cfg, seed, split), _SPLIT_SALT[split])
    row = RegressionRow(cfg, seq_len, entropy, with_baselines=split == "eval")
  else:
    row = MQARRow(cfg, seq_len, seed, split)
  ds = rows.map(row).batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset()


def describe_task(cfg: DataConfig, seq_len: int | None = None) -> dict:
  if cfg.is_regression:
    return describe_regression(cfg, seq_len)
  keys, values = mqar_vocab(cfg.mqar_vocab_size)
  return {
    "task": cfg.source,
    "vocab_size": cfg.mqar_vocab_size,
    "num_keys": len(keys),
    "num_values": len(values),
    "num_pairs": cfg.mqar_num_pairs,
    "num_queries": cfg.mqar_num_queries,
    "chance_accuracy": 1.0 / len(values),
  }
