"""The trainer's view of the data: this process's train iterator, eval batches, state."""

from __future__ import annotations

import jax
import numpy as np

from parallax_jax.data import make_dataset, make_source, make_tokenizer, synthetic
from parallax_jax.errors import UserError


class TrainData:
  """Per-process batches (``global batch / process_count`` rows) of ``parallax_jax.data``."""

  def __init__(self, exp):
    self.exp = exp
    cfg = exp.data
    self.task = cfg.source in synthetic.TASKS  # generated on the fly: no tokenizer, no files
    self.tokenizer = self.source = None
    if self.task:
      synthetic.check_task(cfg, exp.train.seq_len, exp.model)
    else:
      self._init_text(cfg)
    n = jax.process_count()
    if exp.train.batch_size % n:
      raise UserError(
        f"train.batch_size={exp.train.batch_size} must be divisible by the "
        f"number of processes ({n})"
      )
    self.local_batch = exp.train.batch_size // n
    self._train = self._dataset("train")
    if exp.train.eval_every and exp.train.eval_batches:
      self._dataset("eval")  # no held-out document: fail now rather than at the first eval
    self._it = iter(self._train)

  def _init_text(self, cfg):
    exp = self.exp
    self.tokenizer = make_tokenizer(cfg.tokenizer)
    if self.tokenizer.vocab_size > exp.model.vocab_size:
      raise UserError(
        f"model.vocab_size={exp.model.vocab_size} is smaller than the tokenizer's vocabulary "
        f"({self.tokenizer.vocab_size}, {cfg.tokenizer!r}); set model.vocab_size >= "
        f"{self.tokenizer.padded_vocab_size}"
      )
    self.source = make_source(cfg, self.tokenizer)

  def _dataset(self, split):
    if self.task:
      return synthetic.make_task_dataset(
        self.exp.data,
        seq_len=self.exp.train.seq_len,
        batch_size=self.local_batch,
        split=split,
        seed=self.exp.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
    return make_dataset(
      self.exp.data,
      tokenizer=self.tokenizer,
      seq_len=self.exp.train.seq_len,
      batch_size=self.local_batch,
      split=split,
      seed=self.exp.train.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      source=self.source,
    )

  def describe(self) -> dict:
    if self.task:
      return {"source": synthetic.describe_task(self.exp.data, self.exp.train.seq_len)}
    return {
      "source": self.source.describe(),
      "tokenizer": repr(self.tokenizer),
      "vocab_size": self.tokenizer.vocab_size,
    }

  def next_train(self) -> dict:
    return next(self._it)

  def state(self) -> dict:
    """Iterator state after the batches drawn so far (JSON-serialisable)."""
    return self._it.get_state()

  def restore(self, state: dict | None) -> None:
    if state is not None:
      self._it.set_state(state)

  def eval_batches(self):
    """The first ``train.eval_batches`` held-out batches, the same every time.

    Always exactly ``train.eval_batches`` batches: a process whose share of held-out documents
    runs out yields all-padding batches (``loss_mask`` 0), so every process runs the same
    number of (collective) eval steps.
    """
    it = iter(self._dataset("eval"))
    last = None
    for _ in range(self.exp.train.eval_batches):
      try:
        last = next(it)
      except StopIteration:
        if last is None:
          return
        last = {k: np.zeros_like(v) for k, v in last.items()}
      yield last
