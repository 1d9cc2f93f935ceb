"""The pure train and eval steps, and model/state initialisation.

``train_step(state, batch) -> (state, metrics)`` is a pure function of the train state (params,
optimizer state, step) and a batch; the mesh code jits it with explicit shardings. The NNX
model is split once into a ``graphdef`` and merged with the (pure-dict) params inside the step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.model.cross_entropy import chunked_cross_entropy, chunked_eval_sums, eval_sums
from parallax_jax.train.microbatch import sum_over_microbatches


class TrainState(NamedTuple):
  """Everything a step reads and writes; checkpointed whole. No layer is stochastic (no
  dropout): the state holds no random key."""

  step: jax.Array  # int32 scalar: steps taken
  params: dict  # pure dict of arrays (nnx.to_pure_dict layout)
  opt_state: optax.OptState


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
  )


def squared_error(pred_BTK, targets) -> jax.Array:
  """Per-position squared error summed over the ``K`` outputs, float32 ``[B, T]``
  (``targets``: ``[B, T]`` when ``K = 1``, else ``[B, T, K]``)."""
  diff = pred_BTK.astype(jnp.float32) - targets.astype(jnp.float32).reshape(pred_BTK.shape)
  return jnp.sum(diff * diff, axis=-1)


def check_batch(batch: dict) -> None:
  """Trace-time shape checks of a batch: ``inputs`` ``[B, T]`` token ids or ``[B, T, F]``
  vectors; ``targets`` ``[B, T]`` or ``[B, T, K]``; ``loss_mask``, ``positions`` and
  ``segment_ids`` (when given) ``[B, T]``."""
  mask = batch["loss_mask"]
  chex.assert_rank(mask, 2)
  chex.assert_rank(batch["inputs"], {2, 3})
  chex.assert_rank(batch["targets"], {2, 3})
  row_arrays = [batch[k] for k in ("positions", "segment_ids") if batch.get(k) is not None]
  chex.assert_equal_shape([mask, *row_arrays])
  chex.assert_equal_shape_prefix([mask, batch["inputs"], batch["targets"]], 2)


def loss_sum_fn(params, graphdef, batch):
  """``(total, tokens)``: the loss summed over ``loss_mask`` positions, and their count. The
  loss is the NLL, or the squared error when the model has a regression head
  (``model.output_dim > 0``). ``model.logits_chunk > 0`` fuses the LM head into a chunked
  cross-entropy instead of materialising the logits."""
  model = nnx.merge(graphdef, params)
  check_batch(batch)
  weights = batch["loss_mask"].astype(jnp.float32)
  tokens = jnp.sum(weights)
  if model.cfg.output_dim:
    pred = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    total = jnp.sum(squared_error(pred, batch["targets"]) * weights)
  elif model.cfg.logits_chunk:
    x = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
    w, scale = model.lm_head()
    total = chunked_cross_entropy(
      x, w, batch["targets"], weights, scale=scale, chunk=model.cfg.logits_chunk
    )
  else:
    logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    total = jnp.sum(nll * weights)
  return total, tokens


def loss_fn(params, graphdef, batch):
  """Mean loss over ``loss_mask`` positions, and their count (``loss_sum_fn``)."""
  total, tokens = loss_sum_fn(params, graphdef, batch)
  return total / jnp.maximum(tokens, 1.0), tokens


def make_loss_and_grads(graphdef, prepare_batch=None, microbatches=1, batch_sharding=None):
  """Builds ``loss_and_grads(params, batch) -> ((loss, tokens), grads)``: the train step's
  forward and backward without the update. ``prepare_batch`` (e.g. the zigzag reordering of
  context parallelism) runs first, on each microbatch.

  ``microbatches > 1`` (``train.microbatches``): gradient accumulation over that many pieces of
  the batch (``microbatch.py``); the result is the whole batch's mean loss and its gradient.
  ``batch_sharding``: the batch's sharding, kept on each piece.
  """

  def prepared(batch):
    return batch if prepare_batch is None else prepare_batch(batch)

  if microbatches == 1:

    def loss_and_grads(params, batch: dict):
      return jax.value_and_grad(loss_fn, has_aux=True)(params, graphdef, prepared(batch))

    return loss_and_grads

  def summed(params, piece):
    (total, tokens), grads = jax.value_and_grad(loss_sum_fn, has_aux=True)(
      params, graphdef, prepared(piece)
    )
    return total, tokens, grads

  def accumulated(params, batch: dict):
    total, tokens, grads = sum_over_microbatches(
      lambda piece: summed(params, piece), batch, microbatches, batch_sharding
    )
    count = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grads, params)
    return (total / count, tokens), grads

  return accumulated


def make_train_step(
  graphdef, tx, schedules, prepare_batch=None, microbatches=1, batch_sharding=None
):
  """Builds ``train_step(state, batch) -> (state, metrics)`` (``make_loss_and_grads``, then
  the optimizer update)."""
  loss_and_grads = make_loss_and_grads(graphdef, prepare_batch, microbatches, batch_sharding)

  def train_step(state: TrainState, batch: dict):
    (loss, tokens), grads = loss_and_grads(state.params, batch)
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
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(graphdef, prepare_batch=None, microbatches=1, batch_sharding=None):
  """``eval_step(params, batch) -> sums over loss_mask positions`` (see `eval_metrics`);
  ``microbatches > 1`` adds them up over that many pieces of the batch, as the train step does.

  LM head: ``{"nll_sum", "correct", "tokens"}`` (exact perplexity, and argmax accuracy, e.g.
  MQAR answers); with ``model.logits_chunk`` chunk by chunk (the same numbers), so the
  ``[B, T, V]`` logits are never held. Regression head: ``{"sq_err_sum",
  "sq_err_sum_baseline_zero", "tokens"}`` plus ``sq_err_sum_<key>`` for every ``baseline_*``
  prediction in the batch (``[B, T]``, e.g. the least-squares and Bayes predictions of the
  regression tasks).
  """

  def sums(params, batch):
    if prepare_batch is not None:
      batch = prepare_batch(batch)
    model = nnx.merge(graphdef, params)
    check_batch(batch)
    w = batch["loss_mask"].astype(jnp.float32)
    targets = batch["targets"]
    if model.cfg.logits_chunk and not model.cfg.output_dim:  # the dense head's sums, chunked
      x = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
      head, scale = model.lm_head()
      nll, correct = chunked_eval_sums(
        x, head, targets, w, scale=scale, chunk=model.cfg.logits_chunk
      )
      return {"nll_sum": nll, "correct": correct, "tokens": jnp.sum(w)}
    out = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    if model.cfg.output_dim:
      sums = {"sq_err_sum": squared_error(out, targets)}
      sums["sq_err_sum_baseline_zero"] = squared_error(jnp.zeros_like(out), targets)
      for key in sorted(k for k in batch if k.startswith("baseline_")):
        sums[f"sq_err_sum_{key}"] = squared_error(batch[key].reshape(out.shape), targets)
      return {"tokens": jnp.sum(w), **{k: jnp.sum(v * w) for k, v in sums.items()}}
    nll, correct = eval_sums(out, targets, w)
    return {"nll_sum": nll, "correct": correct, "tokens": jnp.sum(w)}

  if microbatches == 1:
    return sums

  def eval_step(params, batch):
    return sum_over_microbatches(
      lambda piece: sums(params, piece), batch, microbatches, batch_sharding
    )

  return eval_step


def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
  """Summed `make_eval_step` outputs (over all eval batches) -> the logged ``eval_*`` metrics.

  LM head: ``eval_loss`` (mean NLL), ``eval_perplexity``, ``eval_accuracy``. Regression head:
  ``eval_loss`` = ``eval_mse`` (mean squared error of the model), and ``eval_mse_baseline_*``
  of the reference predictions (``_zero``: predicting 0, i.e. ``E[y^2]``). Both:
  ``eval_tokens``, the positions the means are over (``loss_mask``; fewer than the batches
  hold once the held-out split runs out and its last batches are padding).
  """
  tokens = sums.get("tokens", 0.0)
  if not tokens:
    return {}
  out = {"eval_tokens": int(tokens)}
  if "nll_sum" in sums:
    loss = sums["nll_sum"] / tokens
    out["eval_loss"] = loss
    out["eval_perplexity"] = math.exp(min(loss, 50.0))
    out["eval_accuracy"] = sums["correct"] / tokens  # argmax accuracy on loss_mask positions
    return out
  out["eval_loss"] = sums["sq_err_sum"] / tokens
  for key, value in sums.items():
    if key.startswith("sq_err_sum"):
      out["eval_mse" + key.removeprefix("sq_err_sum")] = value / tokens
  return out
