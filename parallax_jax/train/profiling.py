"""A JAX profiler trace of a few train steps (``train.profile_steps``), for TensorBoard / XProf.

Each start of a run that asks for one traces ``profile_steps`` steps after its first
``profile_skip_steps`` (the first step compiles; a trace of compilation says little about the
step). The trace goes to ``<workdir>/tensorboard/plugins/profile/<date_time>/``, beside the
scalars, so ``tensorboard --logdir <workdir>/tensorboard`` (with the profile plugin, or
``xprof``) opens both; every start writes its own folder, named by the second it started
tracing, so none is overwritten (a start takes longer than that to compile).
Every step, traced or not, runs inside a ``StepTraceAnnotation("train", step_num=n)`` (a
no-op without a trace; ``n`` numbers steps as ``metrics.jsonl`` does, the steps taken once it
is done), so the profile viewer splits the trace by step. Process 0 traces its own
devices. The step times logged for an interval that holds traced steps include the tracer's cost.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax

log = logging.getLogger("parallax_jax")


class StepProfiler:
  """Starts the trace before step ``first + skip`` and stops it after ``steps`` steps."""

  def __init__(self, logdir: str | Path, first_step: int, *, skip: int, steps: int):
    self.logdir = Path(logdir)
    self.begin = first_step + skip
    self.end = self.begin + steps  # exclusive
    self.enabled = steps > 0 and jax.process_index() == 0
    self.active = False

  @contextlib.contextmanager
  def step(self, step: int):
    """Wraps the step that starts with ``step`` steps taken (its dispatch and the host read
    that waits for it)."""
    if self.enabled and step == self.begin:
      jax.profiler.start_trace(str(self.logdir))
      self.active = True
      log.info("profiling steps %d to %d into %s", self.begin + 1, self.end, self.logdir)
    with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
      yield
    if self.active and step + 1 == self.end:
      self.stop()

  def stop(self) -> None:
    """Ends the trace (if one runs) and writes it; a run that stops early keeps what it traced."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
