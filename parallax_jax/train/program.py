"""The jitted, sharded functions of one experiment on one mesh (shared by the trainer,
``compare-sharding`` and the benchmarks).

Parameters get shardings from their logical axis names and the strategy's rules, the optimizer
state from its structure (its params-shaped subtrees follow the params; see
``sharding.opt_state_shardings``); they are created already sharded (``init`` is jitted with
``out_shardings``: no full copy ever sits on one device). Every jitted function is traced
under ``sharding.use_rules`` so the layers see the mesh (attention ``shard_map``, activation
constraints).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from parallax_jax import sharding
from parallax_jax.train.config import Experiment
from parallax_jax.train.optimizer import make_optimizer
from parallax_jax.train.step import (
  TrainState,
  init_state,
  make_eval_step,
  make_loss_and_grads,
  make_train_step,
  model_graphdef,
)

log = logging.getLogger("parallax_jax")


class Program:
  def __init__(self, exp: Experiment, devices=None):
    self.exp = exp
    self.mesh = sharding.make_mesh(exp.mesh, devices)
    self.rules = sharding.make_rules(self.mesh, exp.sharding)
    idle = sharding.idle_axes(self.mesh, exp.sharding.table)
    if idle:  # said, not silent: right numbers, but those devices repeat each other's work
      log.warning(
        "mesh axes %s are in no rule of sharding.strategy=%r: the devices along them all do "
        "the same work; set them to 1 (--config.mesh.<axis>=1) or pick a strategy that uses them",
        ", ".join(f"{a}={n}" for a, n in idle.items()),
        exp.sharding.strategy,
      )
    unsplit = sharding.unsplit_rules(self.rules, exp.model.axes.batch)
    if unsplit and self.mesh.size > 1:  # said, not silent: fsdp on data=-1 replicated it all
      log.warning(
        "sharding.strategy=%r splits %s, but those mesh axes have size 1 here: every device "
        "holds them whole; size the axes (e.g. --config.mesh.data=1 --config.mesh.%s=-1) or "
        "pick a strategy without the split",
        exp.sharding.strategy,
        ", ".join(f"{k} over {'/'.join(v)}" for k, v in unsplit.items()),
        next(iter(unsplit.values()))[0],
      )
    self.tx, self.schedules = make_optimizer(exp.optimizer, exp.train.steps)
    self.graphdef, variables = model_graphdef(exp.model)
    model = exp.model
    self.abstract_state = jax.eval_shape(lambda: init_state(model, self.tx, 0))
    params = self.abstract_state.params
    param_sh = sharding.param_shardings(variables, self.rules)
    repl = sharding.replicated(self.mesh)
    self.state_sharding = TrainState(
      step=repl,
      params=param_sh,
      opt_state=sharding.opt_state_shardings(
        self.abstract_state.opt_state, params, param_sh, self.mesh
      ),
    )
    self.batch_sharding = sharding.batch_sharding(self.rules, model.axes.batch, model.axes.length)
    ax = model.axes  # attention's q and k/v [B, T, H, D] (shard_map or the ring)
    for heads in (ax.q_heads, ax.kv_heads):
      self.rules.check_distinct((ax.batch, ax.length, heads), "attention's q, k and v")
    sharding.check_rows_per_process(self.batch_sharding, exp.train.batch_size, exp.train.seq_len)
    prepare = sharding.sequence_layout(self.rules, model.uses_r, model.axes.length)
    if not model.uses_r and self.rules.axes(model.axes.length) is not None:
      log.warning(  # said, not silent: a cp comparison of softmax is not ring attention
        "model.attention=%s with the sequence sharded (%s): its attention gathers each "
        "row's whole sequence on every device; ring attention serves Parallax only "
        "(docs/design.md §9.1)",
        model.attention,
        exp.sharding.strategy,
      )
    self._init = jax.jit(
      lambda seed: init_state(model, self.tx, seed), out_shardings=self.state_sharding
    )
    self._opt_init = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)
    pieces = (exp.train.microbatches, self.batch_sharding)  # gradient accumulation
    self._train_step = jax.jit(
      make_train_step(self.graphdef, self.tx, self.schedules, prepare, *pieces),
      in_shardings=(self.state_sharding, self.batch_sharding),
      out_shardings=(self.state_sharding, repl),
      donate_argnums=(0,),
    )
    self._eval_step = jax.jit(
      make_eval_step(self.graphdef, prepare, *pieces),
      in_shardings=(self.state_sharding.params, self.batch_sharding),
      out_shardings=repl,
    )
    self._loss_and_grads = jax.jit(
      make_loss_and_grads(self.graphdef, prepare, *pieces),
      in_shardings=(self.state_sharding.params, self.batch_sharding),
      out_shardings=((repl, repl), self.state_sharding.params),
    )

  def _traced(self, fn, *args):
    with sharding.use_rules(self.rules):
      return fn(*args)

  def init(self, seed: int) -> TrainState:
    return self._traced(self._init, jnp.int32(seed))

  def opt_init(self, params):
    return self._traced(self._opt_init, params)

  def train_step(self, state: TrainState, batch: dict):
    return self._traced(self._train_step, state, batch)

  def eval_step(self, params, batch: dict):
    return self._traced(self._eval_step, params, batch)

  def loss_and_grads(self, params, batch: dict):
    """``(loss, grads)`` of ``params`` on a device batch, no update: what the strategies and
    meshes are compared by (tests, ``experiments/multi_gpu_check.py``)."""
    (loss, _), grads = self._traced(self._loss_and_grads, params, batch)
    return loss, grads

  def device_batch(self, local_batch: dict) -> dict:
    return sharding.global_batch(local_batch, self.batch_sharding)

  def lower_train_step(self, local_batch: dict):
    """``jax.stages.Lowered`` of the train step for the global batch of which ``local_batch``
    is this process's rows (as ``device_batch`` takes them; shapes only)."""
    abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      self.abstract_state,
      self.state_sharding,
    )
    processes = jax.process_count()  # each holds its own block of rows (check_rows_per_process)
    batch = {
      k: jax.ShapeDtypeStruct(
        (v.shape[0] * processes, *v.shape[1:]), v.dtype, sharding=self.batch_sharding
      )
      for k, v in local_batch.items()
    }
    return self._traced(self._train_step.lower, abstract, batch)
