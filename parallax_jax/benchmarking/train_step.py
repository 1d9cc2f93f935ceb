"""A config's jitted train step on a synthetic batch, as the train benchmarks time and lower it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
from parallax_jax.model import ModelConfig
from parallax_jax.train.optimizer import OptimizerConfig, make_optimizer
from parallax_jax.train.step import init_state, make_train_step, model_graphdef


def benchmark_train_step(
  model: ModelConfig, opt: OptimizerConfig, batch_size: int, seq_len: int, microbatches: int = 1
):
  """``(step, init, abstract_state, batch)``: the jitted step (state donated; the batch taken
  in ``microbatches`` pieces, ``train.microbatches``), the jitted ``init(seed)``, the state's
  shapes and a NumPy batch of unpacked rows (no segment ids, so every attention kind runs its
  plain causal kernels)."""
  tx, schedules = make_optimizer(opt, 1000)
  graphdef, _ = model_graphdef(model)
  init = jax.jit(lambda seed: init_state(model, tx, seed))
  train_step = make_train_step(graphdef, tx, schedules, microbatches=microbatches)
  step = jax.jit(train_step, donate_argnums=(0,))
  batch = synthetic_batch(model, batch_size, seq_len, packed=False)
  return step, init, jax.eval_shape(init, jnp.int32(0)), batch
