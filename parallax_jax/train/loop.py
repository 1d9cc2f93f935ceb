"""``train(config, workdir)``: the end-to-end loop (resume, steps, eval, checkpoints, metrics)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import jax
import ml_collections

from parallax_jax.train import data_io
from parallax_jax.train.checkpoint import Checkpointer, abstract_like, load_params
from parallax_jax.train.config import Experiment, resolve
from parallax_jax.train.metrics import MetricsWriter, mfu
from parallax_jax.train.program import Program
from parallax_jax.train.step import TrainState, eval_metrics

log = logging.getLogger("parallax_jax")


class NonFiniteLossError(RuntimeError):
  pass


def _progress(total: int, initial: int, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def save_resolved_config(exp: Experiment, workdir: Path, extra: dict) -> None:
  record = {"config": exp.raw.to_dict(), **extra}
  (workdir / "config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


class Trainer:
  """One run: its ``Program`` (compiled steps, mesh, shardings: ``trainer.program``), data,
  checkpoints and metrics."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path):
    self.exp = exp = resolve(cfg, jax.device_count())
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.program = Program(exp)
    self.data = data_io.TrainData(exp)
    save_resolved_config(
      exp,
      self.workdir,
      {
        "data": self.data.describe(),
        "num_params": exp.model.num_params(),
        "devices": jax.device_count(),
      },
    )
    self.checkpointer = Checkpointer(self.workdir / "checkpoints", exp.checkpoint)

  def initial_state(self) -> TrainState:
    """Latest checkpoint of the workdir, else ``checkpoint.init_from`` params, else fresh."""
    abstract = abstract_like(self.program.abstract_state, self.program.state_sharding)
    step = self.checkpointer.latest_step()
    if step is not None:
      state, data_state = self.checkpointer.restore(abstract, step)
      self.data.restore(data_state)
      log.info("resumed from %s at step %d", self.checkpointer.directory, step)
      return state
    state = self.program.init(self.exp.train.seed)
    if self.exp.checkpoint.init_from:
      params = load_params(self.exp.checkpoint.init_from, abstract.params)
      state = state._replace(
        params=params,
        opt_state=self.program.opt_init(params),
      )
      log.info("initialised params from %s", self.exp.checkpoint.init_from)
    return state

  def evaluate(self, params) -> dict:
    """Held-out metrics (`step.eval_metrics`): perplexity and accuracy, or MSE and baselines."""
    sums: dict[str, float] = {}
    for batch in self.data.eval_batches():
      out = self.program.eval_step(params, self.program.device_batch(batch))
      for key, value in jax.device_get(out).items():
        sums[key] = sums.get(key, 0.0) + float(value)
    return eval_metrics(sums)

  def run(self) -> dict:
    exp = self.exp
    tcfg = exp.train
    state = self.initial_state()
    start = int(state.step)
    metrics_out = MetricsWriter(self.workdir, resume_step=start)
    bar = _progress(tcfg.steps, start, tcfg.progress_bar)
    flops_per_token = exp.model.flops_per_token(tcfg.seq_len)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    last_log_time, last_log_step, compiled = time.perf_counter(), start, False
    summary = {"start_step": start}
    try:
      for step in range(start, tcfg.steps):
        batch = self.program.device_batch(self.data.next_train())
        state, m = self.program.train_step(state, batch)
        done = step + 1
        loss = float(m["loss"])  # one host read per step: catch a non-finite loss at once
        if not math.isfinite(loss):
          latest = self.checkpointer.latest_step()
          raise NonFiniteLossError(
            f"non-finite loss ({loss}) at step {done}; stopping. The last good checkpoint is "
            f"step {latest} in {self.checkpointer.directory}."
          )
        if bar is not None:
          bar.update(1)
          bar.set_postfix(loss=f"{loss:.4f}")
        if done % tcfg.log_every == 0 or done == tcfg.steps:
          now = time.perf_counter()
          scalars = {k: float(v) for k, v in jax.device_get(m).items()}
          if not exp.model.output_dim:  # a regression loss is an MSE, not an NLL
            scalars["perplexity"] = math.exp(min(loss, 50.0))
          if compiled:  # the first interval holds compilation: no throughput for it
            dt = (now - last_log_time) / (done - last_log_step)
            scalars.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt)
            utilisation = mfu(flops_per_token * tokens_per_step, dt, jax.device_count())
            if utilisation is not None:  # None: no known peak (CPU)
              scalars["mfu"] = utilisation
          compiled = True
          last_log_time, last_log_step = now, done
          if tcfg.eval_every and (done % tcfg.eval_every == 0 or done == tcfg.steps):
            scalars.update(self.evaluate(state.params))
            last_log_time = time.perf_counter()  # eval time is not step time
          metrics_out.write(done, scalars)
          summary.update(scalars)
        if done % exp.checkpoint.every_steps == 0 or done == tcfg.steps:
          self.checkpointer.save(done, state, self.data.state())
    finally:
      self.checkpointer.close()
      metrics_out.close()
      if bar is not None:
        bar.close()
    summary["final_step"] = int(state.step)
    return summary


def train(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  return Trainer(cfg, workdir).run()


def evaluate(workdir: str | Path, cfg: ml_collections.ConfigDict | None = None) -> dict:
  """Held-out metrics (loss/perplexity, or MSE) of the latest checkpoint in ``workdir``."""
  workdir = Path(workdir)
  if cfg is None:
    record = json.loads((workdir / "config.json").read_text())
    cfg = ml_collections.ConfigDict(record["config"])
  trainer = Trainer(cfg, workdir)
  if trainer.checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'} to evaluate")
  state = trainer.initial_state()
  out = trainer.evaluate(state.params)
  out["step"] = int(state.step)
  trainer.checkpointer.close()
  return out


__all__ = ["NonFiniteLossError", "Trainer", "evaluate", "train"]
