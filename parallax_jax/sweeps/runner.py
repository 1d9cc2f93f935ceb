"""Runs a sweep: each point is ``python -m parallax_jax.cli train`` in ``W/points/<name>/``.

Points run in subprocesses (a crash in one cannot take down the sweep), one after another or
``parallel`` at a time. With several accelerators each concurrent point gets its own device
(``CUDA_VISIBLE_DEVICES``, or the ``TPU_VISIBLE_CHIPS`` family on TPU); with one point at a
time the point uses every device, like a plain ``train``. Points beyond the GPU count share
GPUs (no memory preallocation); a TPU chip serves one process, so ``parallel`` above the chip
count is refused. On CPU ``parallel`` processes share the cores.

``W/points/<name>/status.json`` records each point (status "finished", "failed",
"preempted" or "running", steps, final step, error, command, timings, the config
fingerprint); its ``train.log`` holds the subprocess output. A point started more than once
(resumed after a stop, retried after a failure) keeps each earlier start in ``attempts``
(``ATTEMPT_KEYS``; one left "running" was cut short by a sweep killed outright), and its
``wall_s`` is the sum over all its starts: the time its result cost. A rerun skips finished
points (final step == train.steps and the same config) and reruns the others, which resume
from their own checkpoints; failed points are retried. A point trained with another config is
not rerun and its record is left as it is: the table shows it failed, with the reason.

Stopping: each point runs in its own session, so a signal meant for the sweep (SIGTERM from a
scheduler or ``timeout``, Ctrl-C, to the sweep alone or to its process group) reaches the
points once, through the sweep: it passes SIGTERM / SIGINT on to every running point (each
saves a checkpoint and exits 75, "preempted"), starts no new point, writes the report and
raises ``SweepStopped``; a second signal is passed on too (the points then exit at once,
unsaved, as ``train`` does). A point still in its setup stops before training, exit 75 too
(started with the signals blocked until its handler is in place). Rerunning the same command
resumes them. A point left running by a sweep killed outright (SIGKILL) keeps its workdir's
lock (``train.workdir_lock``), so a rerun records that point as failed instead of training it
twice at once.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.files import write_text_atomic
from parallax_jax.sweeps import report as sweep_report
from parallax_jax.sweeps.config import Point, Sweep, describe, write_inline_base
from parallax_jax.sweeps.point_files import point_records, read_status_file
from parallax_jax.train.preemption import EXIT_PREEMPTED
from parallax_jax.train.run_record import SWEEP

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
STOPS = (signal.SIGTERM, signal.SIGINT)
# How long the sweep's main thread waits at a time for its points: a signal that lands just as
# it starts a blocking wait runs its Python handler only when that wait ends (CPython), which
# would be when a point ends, its training done instead of stopped.
WAIT_SLICE_S = 0.5
_ERROR_LINE = re.compile(
  r"^(parallax-jax: error: |error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)"
)


# What ``status.json``'s ``attempts`` keeps of each earlier start of a point.
# (``wall_s`` there is that start's own time, ``attempt_wall_s`` in the point's record.)
ATTEMPT_KEYS = ("status", "started", "ended", "returncode", "final_step", "wall_s", "error")


def point_dir(workdir: Path, point: Point) -> Path:
  return Path(workdir) / "points" / point.name


def read_status(workdir: Path, point: Point) -> dict | None:
  """The point's ``status.json``, None for none; a damaged one is a ``UserError`` naming it."""
  return read_status_file(point_dir(workdir, point))


def _write_status(workdir: Path, point: Point, status: dict) -> None:
  path = point_dir(workdir, point) / "status.json"
  write_text_atomic(path, json.dumps(status, indent=2, default=str) + "\n")


def write_description(sweep: Sweep, workdir: Path) -> None:
  """``W/sweep.json``: the sweep as run (``config.describe``), beside its points."""
  write_text_atomic(
    Path(workdir) / SWEEP, json.dumps(describe(sweep), indent=2, default=str) + "\n"
  )


def earlier_attempts(old: dict | None) -> list[dict]:
  """The starts a point's status records before the one beginning now, oldest first: ``old``'s
  own ``attempts`` and ``old`` itself (``ATTEMPT_KEYS``); none for a point never started."""
  if not old:
    return []
  last = {k: old.get(k) for k in ATTEMPT_KEYS}
  # A record written before ``attempt_wall_s`` existed had one start: its wall_s is that start's
  last["wall_s"] = old.get("attempt_wall_s", old.get("wall_s"))
  return [*old.get("attempts", []), last]


def triage(workdir: Path, point: Point) -> tuple[str, str]:
  """What a sweep run does with ``point`` given what ``workdir`` holds, and why: ``("skip",
  "finished earlier, skipped")``, ``("skip", "not rerun: <reason>")`` for a point trained with
  another config (its record is left as it is: the table shows it failed, with the reason; a
  finished one rewritten as failed would be trained again, from scratch where it holds no
  checkpoints, a collected point, once the config is restored), ``("new", "new point")`` for
  one the workdir holds nothing of, or ``("train", <what the point's record says>)`` for one
  that resumes from its checkpoints or is retried."""
  try:
    old = read_status(workdir, point)
  except UserError as e:  # not known to be finished, nor safe to train over: left as it is
    return "skip", f"not rerun: {e}"
  if (changed := sweep_report.stale_reason(old, point, point_dir(workdir, point))) is not None:
    return "skip", f"not rerun: {changed}"
  if is_finished(old, point):
    return "skip", "finished earlier, skipped"
  if old is None:
    return "new", "new point"
  state = old.get("status")
  step = old.get("final_step")
  at = "before its first step" if step is None else f"at step {step}"
  if state == "running":  # no end recorded: a sweep killed outright, or one running now
    return "train", f"left running {at} (a sweep killed outright, or one still running)"
  if state == "failed":
    return "train", f"failed {at} ({old.get('error')}); retried, from its checkpoints if any"
  return "train", f"{state} {at}; resumes from its checkpoint"


def is_finished(status: dict | None, point: Point) -> bool:
  return (
    status is not None
    and status.get("status") == "finished"
    and (status.get("final_step") or 0) >= point.steps
    and status.get("fingerprint") == point.fingerprint()
  )


def last_step(directory: Path) -> int | None:
  """The last logged step, None for none or a damaged metrics.jsonl (the point's run then
  failed on it and its log's error says so)."""
  records, _ = point_records(directory)
  return max((r.get("step", 0) for r in records), default=None)


def error_summary(log_text: str, returncode: int) -> str:
  """The exception line of a failed run's output (else its last line), with the exit code (a
  negative one, a signal's, by the signal's name)."""
  lines = [line.strip() for line in log_text.splitlines() if line.strip()]
  hits = [line for line in lines if _ERROR_LINE.match(line)]
  line = hits[-1] if hits else (lines[-1] if lines else "no output")
  if returncode < 0:
    try:
      return f"killed by {signal.Signals(-returncode).name}; last output: {line[:500]}"
    except ValueError:  # not a known signal number
      pass
  return f"exit {returncode}: {line[:500]}"


def train_command(sweep: Sweep, point: Point, directory: Path) -> list[str]:
  cmd = [sys.executable, "-m", "parallax_jax.cli", "train", "--config", str(sweep.base_path)]
  cmd += ["--workdir", str(directory)]
  cmd += [f"--config.{o}" for o in point.overrides]
  if not any(o.startswith("train.progress_bar=") for o in point.overrides):
    cmd.append("--config.train.progress_bar=false")  # logs, not a terminal
  return cmd


def _accelerators(env: dict) -> tuple[str, list[str]]:
  """("gpu", ids) / ("tpu", ids) of this host's accelerators, without initialising JAX."""
  visible = env.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    ids = [d for d in visible.split(",") if d.strip()]
    return ("gpu", ids) if ids else ("cpu", [])
  if shutil.which("nvidia-smi"):
    try:
      out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
      n = sum(line.startswith("GPU ") for line in out.stdout.splitlines())
      if n:
        return "gpu", [str(i) for i in range(n)]
    except (OSError, subprocess.SubprocessError):
      pass
  chips = sorted(Path("/dev").glob("accel*")) or sorted(Path("/dev/vfio").glob("[0-9]*"))
  if chips:
    return "tpu", [str(i) for i in range(len(chips))]
  return "cpu", []


def slot_environments(parallel: int, base_env: dict | None = None) -> list[dict]:
  """One environment per concurrent slot; slot ``i`` sees accelerator ``i`` (round robin)."""
  env = dict(os.environ if base_env is None else base_env)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
  if parallel == 1:
    return [env]
  kind, ids = _accelerators(env)
  if kind == "tpu" and parallel > len(ids):  # a second process on a chip fails to start
    raise UserError(
      f"--parallel {parallel}: this host has {len(ids)} TPU chip(s) and each concurrent point "
      f"needs one of its own (a chip serves one process); use --parallel {len(ids)} or less"
    )
  envs = []
  for i in range(parallel):
    e = dict(env)
    if kind == "gpu":
      e["CUDA_VISIBLE_DEVICES"] = ids[i % len(ids)]
      if parallel > len(ids):  # several points share a GPU: do not preallocate its memory
        e["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    elif kind == "tpu":  # one chip per process (the usual multi-process single-chip recipe)
      e.update(
        TPU_VISIBLE_CHIPS=ids[i % len(ids)],
        TPU_CHIPS_PER_PROCESS_BOUNDS="1,1,1",
        TPU_PROCESS_BOUNDS="1,1,1",
        TPU_PROCESS_PORT=str(8476 + i),
        TPU_PROCESS_ADDRESSES=f"localhost:{8476 + i}",
        CLOUD_TPU_TASK_ID="0",
      )
    envs.append(e)
  return envs


class SweepStopped(Exception):
  """A signal stopped the sweep; its running points were asked to save and stop."""

  def __init__(self, signame: str, preempted: list[str]):
    self.signame, self.preempted = signame, preempted
    saved = ", ".join(preempted) if preempted else "none was running"
    super().__init__(
      f"sweep stopped by {signame}: points saved and stopped: {saved}; rerun the same command "
      "to resume them"
    )


class _Children:
  """The running points' processes, and the signal that stops the sweep (``run_sweep``)."""

  def __init__(self):
    self.lock = threading.RLock()  # the handler may run again inside itself (a second signal)
    self.procs: set[subprocess.Popen] = set()
    self.signame: str | None = None

  def handle(self, signum, frame) -> None:
    """Signal handler (main thread): remember the first signal, pass each one on."""
    with self.lock:
      if self.signame is None:
        self.signame = signal.Signals(signum).name
      for proc in self.procs:
        proc.send_signal(signum)


def _block_stops() -> None:
  """A worker thread's start: SIGTERM / SIGINT are then delivered to the main thread, whose
  handler (``_Children.handle``) passes them on; a worker taking one would leave it pending
  until the main thread's wait ends."""
  signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)


def run_point(sweep: Sweep, point: Point, workdir: Path, env: dict, children: _Children) -> dict:
  """Trains one point to completion (resuming its checkpoints); returns its status."""
  directory = point_dir(workdir, point)
  directory.mkdir(parents=True, exist_ok=True)
  cmd = train_command(sweep, point, directory)
  attempts = earlier_attempts(read_status(workdir, point))
  status = {
    "name": point.name,
    "values": point.values,
    "overrides": list(point.overrides),
    "steps": point.steps,
    "fingerprint": point.fingerprint(),
    "command": cmd,
    "device": env.get("CUDA_VISIBLE_DEVICES") or env.get("TPU_VISIBLE_CHIPS"),
    "status": "running",
    "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "attempts": attempts,
  }
  _write_status(workdir, point, status)
  t0 = time.perf_counter()
  log_path = directory / "train.log"
  with log_path.open("a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    # Its own session: a signal to the sweep's process group reaches it only through the
    # sweep (``_Children.handle``), once. Started with SIGTERM / SIGINT blocked (a child inherits
    # the mask): one passed on before the point's handler is in place waits for it (``train``'s
    # ``SetupSignal`` unblocks them) instead of killing the point as "failed".
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
      proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
      )
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    with children.lock:
      children.procs.add(proc)
      if children.signame is not None:  # stopped while this point was starting
        proc.send_signal(signal.Signals[children.signame])
    rc = proc.wait()
    with children.lock:
      children.procs.discard(proc)
  final = last_step(directory)
  done = rc == 0 and final is not None and final >= point.steps
  preempted = rc == EXIT_PREEMPTED
  status.update(
    status="finished" if done else ("preempted" if preempted else "failed"),
    returncode=rc,
    final_step=final,
    attempt_wall_s=round(time.perf_counter() - t0, 2),
    ended=time.strftime("%Y-%m-%dT%H:%M:%S"),
    error=None,
  )
  status["wall_s"] = round(
    status["attempt_wall_s"] + sum(a.get("wall_s") or 0.0 for a in attempts), 2
  )
  if preempted:
    at = "before its first step" if final is None else f"at step {final}, checkpoint saved"
    status["error"] = f"stopped by a signal {at}; a rerun resumes"
  elif not done:
    text = log_path.read_text(errors="replace")
    status["error"] = (
      error_summary(text[-20000:], rc)
      if rc
      else f"exited 0 at step {final}, expected train.steps={point.steps}"
    )
  _write_status(workdir, point, status)
  return status


def run_sweep(
  sweep: Sweep,
  workdir: str | Path,
  *,
  parallel: int = 1,
  log: Callable[[str], None] = print,
  env: dict | None = None,
  only: Iterable[str] | None = None,
) -> list[dict]:
  """Runs every unfinished point (``only``: of these names, ``--points``), then writes
  results.csv/.md and the plots of every point; returns rows."""
  if not isinstance(parallel, int) or parallel < 1:
    raise ValueError(f"parallel must be an int >= 1, got {parallel!r}")
  workdir = Path(workdir).resolve()
  (workdir / "points").mkdir(parents=True, exist_ok=True)
  write_inline_base(sweep)
  write_description(sweep, workdir)
  only = None if only is None else set(only)
  todo = []
  for point in sweep.points:
    if only is not None and point.name not in only:
      continue
    action, why = triage(workdir, point)
    if action == "skip":
      log(f"[sweep] {point.name}: {why}")
    else:
      todo.append(point)
  slots: queue.Queue = queue.Queue()
  for e in slot_environments(min(parallel, max(len(todo), 1)), env):
    slots.put(e)
  lock = threading.Lock()
  children = _Children()
  preempted: list[str] = []

  def job(point: Point) -> dict | None:
    slot_env = slots.get()
    try:
      if children.signame is not None:  # stopping: start nothing new
        return None
      with lock:
        log(f"[sweep] {point.name}: training ({' '.join(point.overrides) or 'base'})")
      status = run_point(sweep, point, workdir, slot_env, children)
    finally:
      slots.put(slot_env)
    with lock:
      msg = status["error"]
      if status["status"] == "finished":
        msg = f"{status['attempt_wall_s']:.0f}s"
        if status["attempts"]:
          msg += f"; {status['wall_s']:.0f}s over {len(status['attempts']) + 1} starts"
      log(f"[sweep] {point.name}: {status['status']} ({msg})")
      if status["status"] == "preempted":
        preempted.append(point.name)
      sweep_report.write_tables(sweep, workdir)
    return status

  main = threading.current_thread() is threading.main_thread()  # handlers: main thread only
  previous = {sig: signal.signal(sig, children.handle) for sig in STOPS} if main else {}
  try:
    with ThreadPoolExecutor(max_workers=parallel, initializer=_block_stops) as pool:
      futures = [pool.submit(job, point) for point in todo]
      while wait(futures, timeout=WAIT_SLICE_S).not_done:  # short waits: see WAIT_SLICE_S
        pass
      for future in futures:
        future.result()  # a job's exception, as pool.map raised it
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  rows = sweep_report.write_all(sweep, workdir)
  if children.signame is not None:
    raise SweepStopped(children.signame, preempted)
  return rows


__all__ = [
  "SweepStopped",
  "is_finished",
  "point_dir",
  "read_status",
  "run_point",
  "run_sweep",
  "write_description",
]
