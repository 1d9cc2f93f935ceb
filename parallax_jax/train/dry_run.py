"""What a config would run, without training: ``parallax-jax config`` and ``train --dry-run``.

``config_lines``: every key with its value, resume rule and meaning (``config_keys``).
``validate``: the config resolved for this host's devices and its data opened (both splits
built), as a training start does, without tracing or compiling the model.
``dry_run_lines``: adds the parameter count, FLOPs per token, the mesh, per-device memory (the
train state's bytes per device from its shardings, exact; and, with ``compile``, XLA's memory
analysis of the compiled train step: arguments + outputs + temporaries) and what would happen
in the workdir. Nothing here writes to a workdir.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import ml_collections

from parallax_jax.train import config_keys, run_record
from parallax_jax.train.config import Experiment, resolve


def _format(value) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def config_lines(cfg: ml_collections.ConfigDict) -> list[str]:
  """``key  value  rule  meaning`` for every key (a rules table one line per strategy)."""
  rows, order = [], {k: i for i, k in enumerate(config_keys.KEYS)}
  flat = config_keys.flatten(cfg.to_dict())
  for key, value in sorted(flat.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
    rule, meaning = config_keys.entry(key) or ("?", "(not a documented key)")
    if isinstance(value, dict):  # sharding.rules: one line per strategy
      rows += [(f"{key}.{k}", _format(v), rule, meaning) for k, v in value.items()]
    else:
      rows.append((key, _format(value), rule, meaning))
  kw = max(len(r[0]) for r in rows)
  vw = min(max(len(r[1]) for r in rows), 24)
  head = [f"{'key':<{kw}}  {'value':<{vw}}  {'resume':<6}  meaning"]
  return head + [f"{k:<{kw}}  {v:<{vw}}  {r:<6}  {m}" for k, v, r, m in rows]


def validate(cfg: ml_collections.ConfigDict):
  """``(exp, data)``: resolved for ``jax.device_count()`` devices, data source opened."""
  from parallax_jax.train.data_io import TrainData

  exp = resolve(cfg, jax.device_count())
  return exp, TrainData(exp)


def _bytes(n: float) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def state_bytes_per_device(program) -> dict[str, int]:
  """Bytes of params and optimizer state that one device holds under the state shardings."""

  def per_device(tree, shardings):
    sizes = jax.tree.map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize, tree, shardings
    )
    return int(sum(jax.tree.leaves(sizes)))

  st, sh = program.abstract_state, program.state_sharding
  return {
    "params": per_device(st.params, sh.params),
    "opt_state": per_device(st.opt_state, sh.opt_state),
  }


def _compiled_memory(program, exp: Experiment, data) -> tuple[int | None, float]:
  from parallax_jax.train.metrics import compiled_memory_bytes

  t0 = time.perf_counter()
  compiled = program.lower_train_step(data.next_train()).compile()
  return compiled_memory_bytes(compiled), time.perf_counter() - t0


def workdir_line(workdir: str | Path, cfg: ml_collections.ConfigDict) -> str:
  """What ``train`` would do in ``workdir`` (a ``UserError`` if it would refuse)."""
  workdir = Path(workdir)
  diff = run_record.check(workdir, cfg.to_dict())
  if not run_record.holds_run(workdir):
    return f"workdir: {workdir} holds no run: training would start one there"
  from parallax_jax.train.loop import finished_step

  if (done := finished_step(cfg, workdir)) is not None:  # what `train` checks first
    return (
      f"workdir: {workdir} holds a run finished at step {done} (train.steps "
      f"{cfg.train.steps}): training would do nothing and record nothing; raise "
      "--config.train.steps to train further"
    )
  step = run_record.latest_step(workdir)
  changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "none"
  return (
    f"workdir: {workdir} holds a run (latest checkpoint: step {step}); training would resume "
    f"it; config changes to record: {changed}"
  )


def dry_run_lines(exp: Experiment, data, *, compile: bool = True, program=None) -> list[str]:
  """``program``: ``exp``'s ``Program`` where the caller built one (None: built here)."""
  from parallax_jax.train.program import Program

  m, t = exp.model, exp.train
  program = Program(exp) if program is None else program
  lines = [
    f"parameters: {m.num_params():,} ({m.num_params(embedding=False):,} without embeddings)",
  ]
  try:
    fpt = m.flops_per_token(t.seq_len)
    lines.append(
      f"model FLOPs per token (training, 3x forward): {fpt:.4g}; per step: "
      f"{fpt * t.batch_size * t.seq_len:.4g}"
    )
  except ValueError as e:  # a kind parallax_jax.flops has no count for
    lines.append(f"model FLOPs per token: n/a ({e})")
  sizes = dict(program.mesh.shape)
  lines.append(
    f"mesh: {' x '.join(f'{k}={v}' for k, v in sizes.items())} on {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s), sharding.strategy={exp.sharding.strategy!r}"
  )
  state = state_bytes_per_device(program)
  lines.append(
    f"memory per device, train state from its shardings: params {_bytes(state['params'])} + "
    f"optimizer state {_bytes(state['opt_state'])} = {_bytes(sum(state.values()))}"
  )
  if compile:
    peak, seconds = _compiled_memory(program, exp, data)
    lines.append(
      "memory per device, compiled train step (XLA memory analysis: arguments + outputs + "
      f"temporaries): {_bytes(peak) if peak is not None else 'n/a on this backend'} "
      f"(compiled in {seconds:.1f} s)"
    )
  return lines
