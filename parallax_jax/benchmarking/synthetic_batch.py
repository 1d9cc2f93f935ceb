"""Random train batches of the right shapes (no data pipeline): benchmarks and sharding tests."""

from __future__ import annotations

import numpy as np


def synthetic_batch(model, batch_size: int, seq_len: int, *, seed: int = 0, packed: bool = True):
  """A batch dict for ``model`` (a ``ModelConfig``) as NumPy arrays, like the pipeline's.

  Random token ids (or, with ``model.input_dim`` / ``model.output_dim``, standard normal input
  vectors / regression targets), positions ``0..seq_len-1``, every position in the loss.
  ``packed``: segment ids of ones (one document per row), as the data pipeline gives them, so
  the packed attention path runs as in training; False: ``segment_ids=None`` (the plain causal
  kernels).
  """
  rng = np.random.default_rng(seed)
  b, t = batch_size, seq_len
  tokens = rng.integers(0, model.vocab_size, (b, t + 1), dtype=np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  if model.input_dim:
    inputs = rng.standard_normal((b, t, model.input_dim), dtype=np.float32)
  if model.output_dim:
    shape = (b, t) if model.output_dim == 1 else (b, t, model.output_dim)
    targets = rng.standard_normal(shape, dtype=np.float32)
  return {
    "inputs": inputs,
    "targets": targets,
    "segment_ids": np.ones((b, t), np.int32) if packed else None,
    "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
    "loss_mask": np.ones((b, t), np.float32),
  }
