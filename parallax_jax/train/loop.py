"""``train(config, workdir)``: the end-to-end loop (resume, steps, eval, checkpoints, metrics)."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import jax
import ml_collections

from parallax_jax import environment
from parallax_jax.errors import UserError
from parallax_jax.files import lies_in
from parallax_jax.train import data_io, run_record, workdir_lock
from parallax_jax.train.checkpoint import (
  Checkpointer,
  CheckpointError,
  abstract_like,
  check_init_from_at_start,
  check_step,
  load_params,
  restore_run_params,
)
from parallax_jax.train.compile_cache import use_compilation_cache
from parallax_jax.train.config import CheckpointConfig, resolve
from parallax_jax.train.metrics import MetricsWriter, mfu_fields
from parallax_jax.train.plots import plot_runs
from parallax_jax.train.preemption import Preempted, StopSignal, check_setup
from parallax_jax.train.profiling import StepProfiler
from parallax_jax.train.program import Program
from parallax_jax.train.step import TrainState, eval_metrics
from parallax_jax.train.timings import PhaseTimer

log = logging.getLogger("parallax_jax")


class NonFiniteLossError(RuntimeError):
  pass


def _progress(total: int, initial: int, enabled: bool):
  """A tqdm bar on a terminal; None elsewhere (a log file gets plain lines, see ``run``)."""
  if not enabled or jax.process_index() != 0 or not sys.stderr.isatty():
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


class Trainer:
  """One run: its ``Program`` (compiled steps, mesh, shardings: ``trainer.program``), data,
  checkpoints and metrics."""

  def __init__(
    self, cfg: ml_collections.ConfigDict, workdir: str | Path, *, read_only: bool = False
  ):
    """``read_only``: read a run (eval, analysis) and write nothing to its workdir."""
    self.timer = PhaseTimer()  # where the run's wall time goes (``timings.PHASES``)
    with self.timer.phase("setup"):
      self._setup(cfg, workdir, read_only)

  def _setup(self, cfg: ml_collections.ConfigDict, workdir: str | Path, read_only: bool):
    self.exp = exp = resolve(cfg, jax.device_count())
    exp.model.check_paths(jax.default_backend())  # an explicit path this backend cannot run
    self.workdir, self.read_only, self._locked = Path(workdir), read_only, False
    # Checked before anything is written: a config the run cannot take changes nothing.
    changed = run_record.check(self.workdir, exp.raw.to_dict(), reading=read_only)
    if read_only:
      run_record.require_checkpoints(self.workdir)
    cache = exp.train.compilation_cache_dir
    if read_only and cache and lies_in(cache, self.workdir):  # a reader writes nothing there
      log.info("train.compilation_cache_dir %s lies inside the run read: not used", cache)
      cache = ""
    use_compilation_cache(cache)  # before anything compiles
    self.program = Program(exp)
    if not read_only:
      # Before the data setup: a wrong path must not leave a run that refuses the fix, nor its
      # files (a trained or copied tokenizer) that a retry with another data.tokenizer reads.
      params = self.program.abstract_state.params
      check_init_from_at_start(exp.checkpoint.init_from, self.workdir, params)
    self.data = data_io.TrainData(exp, self.workdir, read_only=read_only)
    # A signal during the data setup (``cli train``): stop before the run is recorded or locked.
    check_setup()
    self._resume_record = None
    if not read_only:  # the workdir is created only now: config and data are valid
      extra = {
        "data": self.data.describe(),
        "num_params": exp.model.num_params(),
        "devices": jax.device_count(),
        "environment": environment.describe(),
      }
      if run_record.holds_run(self.workdir):  # recorded once the step it resumes from is known
        self._lock()
        self._resume_record = (exp.raw.to_dict(), extra, changed)
      else:
        run_record.record_start(self.workdir, exp.raw.to_dict(), extra)
        self._lock()
    self.checkpointer = Checkpointer(
      self.workdir / "checkpoints", exp.checkpoint, read_only=read_only
    )

  def _lock(self) -> None:
    """One training process per workdir (``workdir_lock``); process 0 holds it for the job."""
    self._locked = jax.process_index() == 0
    if self._locked:
      workdir_lock.acquire(self.workdir)

  def close(self) -> None:
    """Completes an async save in flight, closes the checkpointer and gives back the workdir
    lock (training's end, or a start refused after the lock was taken)."""
    self.checkpointer.close()
    if self._locked:
      workdir_lock.release(self.workdir)
      self._locked = False

  def initial_state(self) -> TrainState:
    """Latest checkpoint of the workdir, else ``checkpoint.init_from`` params, else fresh."""
    abstract = abstract_like(self.program.abstract_state, self.program.state_sharding)
    restored = self.checkpointer.restore_latest(abstract)  # falls back past unreadable steps
    if restored is not None:
      step, state, data_state = restored
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

  def read_params(self, step: int | None = None) -> tuple[int, dict]:
    """``(step, params)`` of ``step`` (default: the newest readable checkpoint) with the
    program's shardings; the optimizer and data states stay on disk, nothing is moved (the
    readers: eval, the attention analysis)."""
    abstract = abstract_like(self.program.abstract_state, self.program.state_sharding)
    return self.checkpointer.restore_params(abstract.params, step)

  def evaluate(self, params) -> dict:
    """Held-out metrics (`step.eval_metrics`): perplexity and accuracy, or MSE and baselines."""
    sums: dict[str, float] = {}
    for batch in self.data.eval_batches():
      out = self.program.eval_step(params, self.program.device_batch(batch))
      for key, value in jax.device_get(out).items():
        sums[key] = sums.get(key, 0.0) + float(value)
    return eval_metrics(sums)

  def run(self) -> dict:
    """Trains to ``train.steps``; raises ``Preempted`` after saving a checkpoint on SIGTERM /
    SIGINT (``preemption.py``)."""
    exp, timer = self.exp, self.timer
    tcfg = exp.train
    try:
      with timer.phase("init"):
        state = self.initial_state()
      start = int(state.step)
      # Before the history entry: a damaged metrics.jsonl refuses the start unrecorded.
      metrics_out = MetricsWriter(self.workdir, resume_step=start)
      if self._resume_record is not None:
        run_record.record_resume(self.workdir, *self._resume_record, resumed_from_step=start)
    except BaseException:  # refused at the restore: the workdir is free for the fix
      self.close()
      raise
    bar = _progress(tcfg.steps, start, tcfg.progress_bar)
    log_lines = tcfg.progress_bar and bar is None and jax.process_index() == 0
    flops_per_token = exp.model.flops_per_token(tcfg.seq_len)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    last_log_time, last_log_step, compiled = time.perf_counter(), start, False
    summary = {"start_step": start}
    profiler = StepProfiler(
      metrics_out.tensorboard_dir, start, skip=tcfg.profile_skip_steps, steps=tcfg.profile_steps
    )

    def save(step: int, state) -> None:
      # The records before it made durable first: a resume re-logs only the steps after it.
      metrics_out.sync()
      self.checkpointer.save(step, state, self.data.state())

    with StopSignal(self.checkpointer.reached_preemption) as stop:
      try:
        if stop.stopped_in_setup():  # the state is the restored or initial one: nothing to save
          raise Preempted(stop.signame, None)
        for step in range(start, tcfg.steps):
          with timer.phase("input"):
            batch = self.program.device_batch(self.data.next_train())
          with timer.phase("first_step" if step == start else "steps"), profiler.step(step):
            state, m = self.program.train_step(state, batch)
            loss = float(m["loss"])  # one host read per step: catch a non-finite loss at once
          done = step + 1
          if not math.isfinite(loss):
            latest = self.checkpointer.latest_step()
            saved = "none was saved yet" if latest is None else f"the newest is step {latest}"
            raise NonFiniteLossError(
              f"non-finite loss ({loss}) at step {done}; stopping. Checkpoints are in "
              f"{self.checkpointer.directory}: {saved} (this run started from step {start})."
            )
          if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
          last = done == tcfg.steps
          evals = bool(tcfg.eval_every) and (done % tcfg.eval_every == 0 or last)
          if done % tcfg.log_every == 0 or last or evals:  # an eval step is recorded too
            now = time.perf_counter()
            scalars = {k: float(v) for k, v in jax.device_get(m).items()}
            if not exp.model.output_dim:  # a regression loss is an MSE, not an NLL
              scalars["perplexity"] = math.exp(min(loss, 50.0))
            if compiled:  # the first interval holds compilation: no throughput for it
              dt = (now - last_log_time) / (done - last_log_step)
              scalars.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt)
              scalars.update(mfu_fields(flops_per_token * tokens_per_step, dt, jax.device_count()))
            compiled = True
            last_log_time, last_log_step = now, done
            if evals:
              with timer.phase("eval"):
                scalars.update(self.evaluate(state.params))
              last_log_time = time.perf_counter()  # eval time is not step time
            metrics_out.write(done, scalars)
            summary.update({k: v for k, v in scalars.items() if v is not None})
            if log_lines:
              rate = (
                f", {scalars['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in scalars else ""
              )
              log.info("step %d/%d: loss=%.4f%s", done, tcfg.steps, loss, rate)
          saved = done % exp.checkpoint.every_steps == 0 or done == tcfg.steps
          if saved:
            saving = time.perf_counter()
            with timer.phase("checkpoint"):
              save(done, state)
            # A save's blocking part is not step time (as eval's is not): the next interval's
            # tokens/s and MFU measure the steps alone; time_checkpoint_s keeps the save's cost.
            last_log_time += time.perf_counter() - saving
          if done < tcfg.steps and stop.should_stop(done):  # every process, every step
            with timer.phase("checkpoint"):
              if not saved:
                save(done, state)
              self.checkpointer.wait()  # complete on disk before we exit
            raise Preempted(stop.signame, done)
      finally:
        profiler.stop()  # a run that ends inside the traced steps keeps their trace
        with timer.phase("checkpoint"):  # an async save in flight completes here
          self.close()
        metrics_out.close()
        if bar is not None:
          bar.close()
    summary["final_step"] = int(state.step)
    if jax.process_index() == 0:
      with timer.phase("plot"):
        summary["plot"] = str(plot_runs({self.workdir.name: self.workdir}, self.plot_path))
    summary.update(timer.summary())
    log.info("%s", timer.line())
    return summary

  @property
  def plot_path(self) -> Path:
    """The run's own curves, written at the end of training."""
    return self.workdir / "plots" / "curves.png"


def train(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (or resumes) the run in ``workdir``. A run already at ``train.steps`` whose final
  params read back intact (checksums included) returns ``already_finished`` without building
  or writing anything; if they do not, the run resumes from its newest readable step (the
  damaged one moved aside) and trains to ``train.steps`` again."""
  resolve(cfg)  # an invalid config: refused before anything is read or written
  run_record.check(workdir, cfg.to_dict())  # a config the run cannot take: refused first
  latest = finished_step(cfg, workdir)
  if latest is not None:
    return {"start_step": latest, "final_step": latest, "already_finished": True}
  check_setup()  # a signal so far (``cli train``): stop before the workdir is written
  return Trainer(cfg, workdir).run()


def finished_step(cfg: ml_collections.ConfigDict, workdir: str | Path) -> int | None:
  """The step of ``workdir``'s run if it is finished for ``cfg``: its newest checkpoint at
  ``train.steps`` or beyond, with params that read back intact (checksums included); else None
  (``train`` trains). Reads only; ``train --dry-run`` predicts with it."""
  with Checkpointer(Path(workdir) / "checkpoints", CheckpointConfig(), read_only=True) as ckpt:
    latest = ckpt.latest_step()
  if latest is None or latest < cfg.train.steps:
    return None
  try:
    restore_run_params(workdir, resolve(cfg), latest)
  except CheckpointError:  # the restore that follows logs the reason, without a --step
    log.error("the finished run's final checkpoint, step %d, is damaged; training again", latest)
    return None
  return latest


def evaluate(
  workdir: str | Path, cfg: ml_collections.ConfigDict | None = None, step: int | None = None
) -> dict:
  """Held-out metrics (loss/perplexity, or MSE) of checkpoint ``step`` in ``workdir`` (default:
  the newest readable one), and ``"step"``. Reads the params only; writes nothing."""
  workdir = Path(workdir)
  check_step(step)
  if cfg is None:
    cfg = run_record.load_run_config(workdir)
  exp = resolve(cfg)
  if exp.train.eval_batches < 1:  # (train.eval_batches=0 with evals off is valid)
    raise UserError(
      "train.eval_batches=0: an eval reads no batch and would report nothing; give "
      "--config.train.eval_batches=N with N >= 1"
    )
  if exp.data.eval_fraction == 0 and not exp.data.is_task:
    raise UserError(  # (the data split's advice, raise data.eval_fraction, is a fixed key here)
      f"--workdir {str(workdir)!r}: the run holds out no documents (data.eval_fraction=0, fixed "
      "for a run: the split decides what it trained on), so it has no held-out split to evaluate"
    )
  trainer = Trainer(cfg, workdir, read_only=True)
  try:
    step, params = trainer.read_params(step)
  finally:
    trainer.checkpointer.close()
  return {**trainer.evaluate(params), "step": step}


__all__ = ["NonFiniteLossError", "Preempted", "Trainer", "evaluate", "train"]
