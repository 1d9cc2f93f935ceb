"""Stop on SIGTERM / SIGINT at a step boundary that every process agrees on.

The train loop asks ``should_stop(step)`` once per finished step; when it says yes, the loop
saves a checkpoint of that step, waits for it and exits with ``EXIT_PREEMPTED``.

* One process: Python handlers for SIGTERM and SIGINT set a flag.
* Several processes (``jax.distributed``): JAX's preemption service owns SIGTERM (it tells the
  coordinator, which picks one step for all processes); ``should_stop`` is Orbax's
  ``CheckpointManager.reached_preemption`` (``multihost_utils.reached_preemption_sync_point``)
  there. SIGINT is handed to that service by re-raising it as SIGTERM.

A second signal (SIGINT, or SIGTERM where our handler owns it) exits at once: the process dies
by that signal, and the last completed checkpoint is what a rerun resumes from (saves are
atomic).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import jax

log = logging.getLogger("parallax_jax")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped early, checkpoint saved, rerun resumes
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint of ``step``."""

  def __init__(self, signame: str, step: int):
    self.signame, self.step = signame, step
    super().__init__(
      f"preempted ({signame}) at step {step}; checkpoint saved; rerun the same command to resume"
    )


class StopSignal:
  """Context manager: installs the handlers on entry, restores the previous ones on exit."""

  def __init__(self, reached_sync_point: Callable[[int], bool]):
    self._reached_sync_point = reached_sync_point
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._multi = jax.process_count() > 1
    self._synced = self._multi and jax.config.jax_enable_preemption_service

  @property
  def signame(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  def __enter__(self) -> StopSignal:
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    if self._multi and not self._synced:
      log.warning(
        "jax_enable_preemption_service is off: SIGTERM/SIGINT stop this multi-process run "
        "without a checkpoint"
      )
      return self
    # With several processes JAX's preemption notifier owns SIGTERM: replacing it would
    # unhook the other processes.
    for signum in (signal.SIGINT,) if self._synced else SIGNALS:
      self._previous[signum] = signal.signal(signum, self._first)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      if handler is not None:  # None: a handler set outside Python (JAX's notifier)
        signal.signal(signum, handler)
    self._previous.clear()

  def _first(self, signum, frame) -> None:
    self.signum = signum
    for s in self._previous:
      signal.signal(s, _exit_now)
    print(
      f"parallax-jax: {signal.Signals(signum).name} received; stopping after this step and "
      "saving a checkpoint (signal again to exit at once, without one)",
      file=sys.stderr,
      flush=True,
    )
    if self._synced:  # hand it to JAX's preemption service, which syncs all processes
      signal.raise_signal(signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Call once per step on every process, with the same ``step``."""
    if self._synced:
      if not self._reached_sync_point(step):
        return False
      with contextlib.suppress(ValueError):  # not the main thread
        for s in SIGNALS:  # during the save, a second signal exits at once
          self._previous.setdefault(s, signal.signal(s, _exit_now))
      return True
    return self.signum is not None


def _exit_now(signum, frame) -> None:
  print(
    f"parallax-jax: second {signal.Signals(signum).name}; exiting now without a checkpoint",
    file=sys.stderr,
    flush=True,
  )
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)


__all__ = ["EXIT_PREEMPTED", "Preempted", "StopSignal"]
