"""The pure train and eval steps, and model/state initialisation.

``train_step(state, batch) -> (state, metrics)`` is a pure function of the train state (params,
optimizer state, step, rng) and a batch; the mesh code jits it with explicit shardings. The NNX
model is split once into a ``graphdef`` and merged with the (pure-dict) params inside the step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.model.cross_entropy import chunked_cross_entropy


class TrainState(NamedTuple):
  """Everything a step reads and writes; checkpointed whole."""

  step: jax.Array  # int32 scalar: steps taken
  params: dict  # pure dict of arrays (nnx.to_pure_dict layout)
  opt_state: optax.OptState
  rng: jax.Array  # uint32[2] raw key, split every step


def model_graphdef(cfg: ModelConfig):
  """The model's graph definition and abstract param state (no arrays allocated)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return graphdef, state


def logical_axes(cfg: ModelConfig) -> dict:
  """Pure dict (params layout) of each parameter's logical axis names, as tuples."""
  _, state = model_graphdef(cfg)
  flat = {}
  for path, var in nnx.to_flat_state(state):
    flat[path] = tuple(getattr(var, "logical_axes", (None,) * var.get_value().ndim))
  return flat


def init_params(cfg: ModelConfig, seed) -> dict:
  rngs = nnx.Rngs(params=jax.random.key(seed))  # seed: int or traced int32
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=rngs), nnx.Param))


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, seed) -> TrainState:
  """A fresh train state (jit it, with out_shardings, to create it already sharded).

  Pass ``seed`` as a traced argument under jit: with no inputs XLA constant-folds the random
  initialisation of every parameter, which takes minutes at 0.6B parameters.
  """
  params = init_params(cfg, seed)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(seed + 1),
  )


def forward(graphdef, params, batch):
  model = nnx.merge(graphdef, params)
  return model(batch["inputs"], batch["positions"], batch["segment_ids"])


def token_nll(logits, targets):
  """Per-token negative log-likelihood, float32 ``[B, T]``."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return logz - picked


def loss_fn(params, graphdef, batch):
  """Mean NLL over ``loss_mask`` positions (and their count); ``model.logits_chunk > 0`` fuses
  the LM head into a chunked cross-entropy instead of materialising the logits."""
  model = nnx.merge(graphdef, params)
  weights = batch["loss_mask"].astype(jnp.float32)
  tokens = jnp.sum(weights)
  if model.cfg.logits_chunk:
    x = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
    w, scale = model.lm_head()
    total = chunked_cross_entropy(
      x, w, batch["targets"], weights, scale=scale, chunk=model.cfg.logits_chunk
    )
  else:
    logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    total = jnp.sum(token_nll(logits, batch["targets"]) * weights)
  return total / jnp.maximum(tokens, 1.0), tokens


def make_train_step(graphdef, tx, schedules, prepare_batch=None):
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  ``prepare_batch`` (e.g. the zigzag reordering of context parallelism) runs first, inside
  the step.
  """

  def train_step(state: TrainState, batch: dict):
    if prepare_batch is not None:
      batch = prepare_batch(batch)
    rng, _ = jax.random.split(state.rng)  # carried for stochastic layers; none use it yet
    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, graphdef, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": loss,
      "tokens": tokens,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
    }
    for name, schedule in schedules.items():
      metrics[name] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state, rng), metrics

  return train_step


def make_eval_step(graphdef, prepare_batch=None):
  """``eval_step(params, batch) -> {"nll_sum", "correct", "tokens"}`` (sums over loss_mask
  positions: exact perplexity, and argmax accuracy, e.g. MQAR answers)."""

  def eval_step(params, batch):
    if prepare_batch is not None:
      batch = prepare_batch(batch)
    logits = forward(graphdef, params, batch)
    nll = token_nll(logits, batch["targets"])
    w = batch["loss_mask"].astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    return {"nll_sum": jnp.sum(nll * w), "correct": jnp.sum(hit * w), "tokens": jnp.sum(w)}

  return eval_step
