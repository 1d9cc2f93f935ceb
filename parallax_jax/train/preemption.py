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

Setup (config, data or a tokenizer trained on it, model init, restoring a checkpoint) runs before
the loop's handlers: ``train`` holds ``SetupSignal`` from its start, so a first signal there stops
the run at the next safe point (``check_setup``: before the ``Trainer`` is built, after its data
setup; then before the first step, after the init or restore) with ``Preempted`` and exit 75
too, nothing to save. A run that starts ``jax.distributed`` gives SIGTERM and SIGINT back first
(``hand_over_setup``): JAX's preemption service owns SIGTERM from there on, as without this
handler. A sweep starts its points with both signals blocked, which ``SetupSignal`` unblocks once
its handler is in place, so a signal passed on while a point's interpreter starts waits for it
instead of killing it. A plain ``train`` signalled in its first second or two (the interpreter
importing JAX, before ``SetupSignal``) still dies by the signal, having written nothing.
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
  """The run stopped on a signal after saving a checkpoint of ``step``; ``step=None``: during
  setup, before any step ran (nothing to save)."""

  def __init__(self, signame: str, step: int | None):
    self.signame, self.step = signame, step
    if step is None:
      super().__init__(
        f"preempted ({signame}) during setup, before training; nothing to save; rerun the same "
        "command to start (or resume) the run"
      )
    else:
      super().__init__(
        f"preempted ({signame}) at step {step}; checkpoint saved; rerun the same command to resume"
      )


class SetupSignal:
  """Context manager over a run's setup (``cli train``): a first SIGTERM / SIGINT is remembered
  (``check_setup`` raises ``Preempted`` at the next safe point, ``StopSignal`` inherits it), a
  second exits at once. Restores the previous handlers on exit. Touches no JAX backend: it is
  entered before ``jax.distributed`` starts."""

  active: SetupSignal | None = None  # the one entered, until its exit or ``hand_over_setup``

  def __init__(self):
    self.signum: int | None = None
    self.trained = False  # set when the training loop ends (``StopSignal``): only its epilogue left
    self._previous: dict[int, object] = {}

  def __enter__(self) -> SetupSignal:
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._first)
    SetupSignal.active = self
    # A sweep starts its points with these blocked (``sweeps.runner``): one sent meanwhile is
    # delivered now, to the handler above, instead of killing the half-started interpreter.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return self

  def __exit__(self, *exc) -> None:
    self.restore()

  def restore(self) -> None:
    if SetupSignal.active is self:
      SetupSignal.active = None
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _first(self, signum, frame) -> None:
    self.signum = signum
    for s in self._previous:
      signal.signal(s, _exit_now)
    what = (
      "after training (saved); finishing the run's plots"
      if self.trained
      else "during setup; stopping before training"
    )
    print(
      f"parallax-jax: {signal.Signals(signum).name} received {what} (signal again to exit at once)",
      file=sys.stderr,
      flush=True,
    )


def check_setup() -> None:
  """A safe point of setup: raises ``Preempted`` (nothing saved) if a signal arrived."""
  guard = SetupSignal.active
  if guard is not None and guard.signum is not None:
    raise Preempted(signal.Signals(guard.signum).name, None)


def hand_over_setup() -> None:
  """Before ``jax.distributed.initialize``: gives SIGTERM / SIGINT back, so JAX's preemption
  service installs its own and a multi-process run stops as it did without ``SetupSignal``; one
  already received is re-raised to die by it, as it would have without the handler."""
  guard = SetupSignal.active
  if guard is None:
    return
  guard.restore()
  if guard.signum is not None:
    signal.signal(guard.signum, signal.SIG_DFL)
    os.kill(os.getpid(), guard.signum)


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
    # A signal setup took (one process; read once ours are in place, so none falls between):
    # the run stops before its first step, and the next signal exits at once.
    setup = SetupSignal.active
    if setup is not None and not self._multi and setup.signum is not None:
      self.signum = setup.signum
      for signum in self._previous:
        signal.signal(signum, _exit_now)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      if handler is not None:  # None: a handler set outside Python (JAX's notifier)
        signal.signal(signum, handler)
    self._previous.clear()
    if SetupSignal.active is not None:  # its handler is back: for the epilogue now
      SetupSignal.active.trained = True

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

  def stopped_in_setup(self) -> bool:
    """Did a signal arrive before the first step (one process: nothing to save yet)?"""
    return not self._synced and self.signum is not None

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


__all__ = [
  "EXIT_PREEMPTED",
  "Preempted",
  "SetupSignal",
  "StopSignal",
  "check_setup",
  "hand_over_setup",
]
