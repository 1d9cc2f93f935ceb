"""SIGTERM / SIGINT: the step in flight finishes, a checkpoint of it is saved, the run exits 75
and resumes exactly; a second signal exits at once; several processes stop at one step. A signal
during setup (config, data, init, restore) stops the run before training, exit 75 too."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from run_watch import wait_for_step
from train_configs import FAST_LR, ROOT, SMALL_MODEL

from parallax_jax.train.metrics import read_metrics
from parallax_jax.train.preemption import (
  EXIT_PREEMPTED,
  SetupSignal,
  StopSignal,
  hand_over_setup,
)

SMALL = [
  *SMALL_MODEL,
  *FAST_LR,
  "--config.train.steps=30",
  "--config.checkpoint.every_steps=20",
]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _train(workdir, *overrides):
  cmd = [sys.executable, "-m", "parallax_jax.cli", "train", "--config", "configs/tiny.py"]
  return subprocess.Popen(
    [*cmd, "--workdir", str(workdir), *SMALL, *overrides],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=ENV,
  )


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def _lock_is_free(workdir) -> bool:
  with open(workdir / ".lock", "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
  return True


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """A finished run of ``SMALL`` (30 steps; checkpoints 20 and 30): read it, or copy it."""
  workdir = tmp_path_factory.mktemp("full")
  full = _train(workdir)
  out = full.communicate(timeout=600)[0]
  assert full.returncode == 0, out[-3000:]
  return workdir


@pytest.fixture(scope="module")
def uninterrupted(full_run):
  return _losses(full_run)


# SIGINT takes the same handler as SIGTERM: it runs under -m slow (suite time).
@pytest.mark.parametrize(
  "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_signal_saves_the_step_it_stopped_at_and_resume_is_exact(tmp_path, signum, uninterrupted):
  run = _train(tmp_path / "run")
  wait_for_step(tmp_path / "run", 5, run)  # before the first checkpoint (step 20)
  run.send_signal(signum)
  out = run.communicate(timeout=300)[0]
  assert run.returncode == EXIT_PREEMPTED, out[-3000:]
  stopped = max(_losses(tmp_path / "run"))
  assert 5 <= stopped < 20
  line = f"parallax-jax: preempted ({signum.name}) at step {stopped}; checkpoint saved"
  assert line in out and "Traceback" not in out, out[-3000:]
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert steps == [stopped]  # complete: no Orbax temporary directory left

  resumed = _train(tmp_path / "run")
  out = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, out[-3000:]
  assert f"at step {stopped}" in out
  assert _losses(tmp_path / "run") == uninterrupted


SECOND_SIGNAL = """
import os, signal, sys, time
from parallax_jax.train.preemption import StopSignal
with StopSignal(lambda step: False) as stop:
  os.kill(os.getpid(), signal.{name})
  time.sleep(0.2)
  print("first handled, stop =", stop.should_stop(1), flush=True)
  os.kill(os.getpid(), signal.{name})
  time.sleep(5)
  print("survived the second signal", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_at_once(signum):
  code = SECOND_SIGNAL.format(name=signum.name)
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120
  )
  assert out.stdout == "first handled, stop = True\n", out.stdout + out.stderr
  assert out.returncode == -signum, out.stderr  # died by the signal, as without a handler
  assert f"second {signum.name}; exiting now without a checkpoint" in out.stderr


# `train` with a SIGTERM sent to itself when setup reaches `target` (module:attribute), as a
# scheduler's signal would arrive there.
SIGNAL_AT = """
import importlib, os, signal, sys
module, name = sys.argv[1].split(":")
owner = importlib.import_module(module)
*path, name = name.split(".")
for part in path:
  owner = getattr(owner, part)
original = getattr(owner, name)
def signalled(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return original(*args, **kwargs)
setattr(owner, name, signalled)
from parallax_jax.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _train_signalled_at(target, workdir, *overrides):
  cmd = [sys.executable, "-c", SIGNAL_AT, target, "train", "--config", "configs/tiny.py"]
  cmd += ["--workdir", str(workdir), *SMALL, *overrides]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)


SETUP_LINE = "parallax-jax: preempted (SIGTERM) during setup, before training; nothing to save"


@pytest.mark.parametrize(
  "target",
  [
    "parallax_jax.train.config:load_config",  # before anything is written
    "parallax_jax.train.data_io:TrainData.__init__",  # the corpus (or a tokenizer trained on it)
    "parallax_jax.train.program:Program.init",  # the model's init
  ],
)
def test_a_signal_during_setup_stops_before_training_with_exit_75(tmp_path, target):
  run = _train_signalled_at(target, tmp_path / "run")
  out = run.stdout + run.stderr
  assert run.returncode == EXIT_PREEMPTED, out[-3000:]
  assert SETUP_LINE in out and "Traceback" not in out, out[-3000:]
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  if (tmp_path / "run").exists():  # the workdir's record and an empty checkpoint directory
    assert not any((tmp_path / "run" / "checkpoints").iterdir())
    assert _lock_is_free(tmp_path / "run")


def test_a_signal_during_the_restore_stops_before_training_and_the_rerun_resumes(
  tmp_path, full_run
):
  workdir = tmp_path / "run"
  shutil.copytree(full_run, workdir)
  more = "--config.train.steps=32"
  run = _train_signalled_at(
    "parallax_jax.train.checkpoint:Checkpointer.restore_latest", workdir, more
  )
  out = run.stdout + run.stderr
  assert run.returncode == EXIT_PREEMPTED, out[-3000:]
  assert SETUP_LINE in out and "Traceback" not in out, out[-3000:]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [20, 30]
  assert max(_losses(workdir)) == 30 and _lock_is_free(workdir)

  rerun = _train(workdir, more)
  out = rerun.communicate(timeout=600)[0]
  assert rerun.returncode == 0, out[-3000:]
  assert f"resumed from {workdir / 'checkpoints'} at step 30" in out
  assert max(_losses(workdir)) == 32


def _python(code: str) -> subprocess.CompletedProcess:
  """Runs ``code`` in a fresh interpreter (its signals are its own), output captured."""
  cmd = [sys.executable, "-c", code]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)


SETUP_SECOND_SIGNAL = """
import os, signal, time
from parallax_jax.train.preemption import Preempted, SetupSignal, check_setup
with SetupSignal():
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.2)
  try:
    check_setup()
  except Preempted as e:
    print("first handled:", e.step, flush=True)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(5)
  print("survived the second signal", flush=True)
"""


def test_a_second_signal_during_setup_exits_at_once():
  out = _python(SETUP_SECOND_SIGNAL)
  assert out.stdout == "first handled: None\n", out.stdout + out.stderr
  assert out.returncode == -signal.SIGTERM, out.stderr
  assert "second SIGTERM; exiting now without a checkpoint" in out.stderr


def test_setup_handlers_step_aside_for_jax_distributed():
  """``hand_over_setup`` (before ``jax.distributed.initialize``) restores the previous handlers,
  so JAX's preemption service takes SIGTERM as it did without ``SetupSignal``."""
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with SetupSignal():
    assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    hand_over_setup()
    assert {s: signal.getsignal(s) for s in before} == before
    hand_over_setup()  # once only: nothing left to hand over
  assert {s: signal.getsignal(s) for s in before} == before


HAND_OVER_AFTER_A_SIGNAL = """
import os, signal, time
from parallax_jax.train.preemption import SetupSignal, hand_over_setup
with SetupSignal():
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.2)
  hand_over_setup()
  print("survived", flush=True)
"""


def test_a_signal_before_jax_distributed_starts_kills_as_without_the_handler():
  out = _python(HAND_OVER_AFTER_A_SIGNAL)
  assert out.returncode == -signal.SIGTERM and "survived" not in out.stdout, out.stderr


SETUP_TO_LOOP = """
import signal
from parallax_jax.train.preemption import SetupSignal, StopSignal
with SetupSignal():
  stop = StopSignal(lambda step: False)
  signal.raise_signal(signal.SIGTERM)  # between the loop's handler's creation and its entry
  with stop:
    print("stopped in setup:", stop.stopped_in_setup(), flush=True)
with SetupSignal():
  with StopSignal(lambda step: False):
    pass
  signal.raise_signal(signal.SIGTERM)  # after the loop: the run's plots
  print("epilogue finished", flush=True)
"""


def test_the_loop_takes_over_a_setup_signal_and_one_after_training_says_so():
  """A signal the setup handler took just before the loop's handler was entered still stops
  the run before its first step (it was read at creation, so such a signal was lost and the run
  trained on); one after the loop is not reported as 'during setup'."""
  out = _python(SETUP_TO_LOOP)
  assert out.returncode == 0, out.stderr
  assert out.stdout == "stopped in setup: True\nepilogue finished\n", out.stdout + out.stderr
  assert "SIGTERM received after training (saved); finishing the run's plots" in out.stderr


def test_handlers_are_restored_after_the_run():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with StopSignal(lambda step: False) as stop:
    assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
    assert not stop.should_stop(3)
  assert {s: signal.getsignal(s) for s in before} == before


MULTI_PROCESS = """
import sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jax.experimental import multihost_utils
from parallax_jax.train.preemption import StopSignal
with StopSignal(multihost_utils.reached_preemption_sync_point) as stop:
  print("ready", flush=True)
  for step in range(1, 3000):
    time.sleep(0.01 * (1 + int(sys.argv[2])))  # processes at different speeds
    if stop.should_stop(step):
      print("stopped at", step, flush=True)
      break
"""


def test_processes_agree_on_the_stop_step():
  """SIGINT to one of two ``jax.distributed`` processes: both stop at the same step (JAX's
  preemption sync point), so the checkpoint save is collective."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", MULTI_PROCESS, address, str(i)],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
      env=ENV,
    )
    for i in range(2)
  ]
  try:
    for p in procs:
      assert p.stdout.readline() == "ready\n"
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGINT)
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs
  stops = [out.split()[-1] for out in outs]
  assert outs[0].startswith("stopped at") and stops[0] == stops[1], outs


def test_a_signalled_sweep_stops_its_point_once_and_a_rerun_resumes_it_exactly(
  tmp_path, uninterrupted
):
  """SIGTERM to the sweep process alone (as a scheduler sends it): the running point gets it
  once through the sweep (its own session), saves and stops ("preempted"); no new point starts;
  the sweep exits 75 and leaves no process behind. The rerun resumes the point exactly."""
  overrides = dict(arg.removeprefix("--config.").split("=", 1) for arg in SMALL)
  spec = {"base": "configs/tiny.py", "overrides": overrides, "axes": {"train.seed": [0, 1]}}
  sweep_file = tmp_path / "sweep.py"
  sweep_file.write_text(f"def get_config():\n  return {spec!r}\n")
  cmd = [sys.executable, "-m", "parallax_jax.cli", "sweep", "--config", str(sweep_file)]
  cmd += ["--workdir", str(tmp_path / "w")]
  first, second = tmp_path / "w" / "points" / "seed=0", tmp_path / "w" / "points" / "seed=1"
  sweep = subprocess.Popen(
    cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
  )
  wait_for_step(first, 5, sweep)
  sweep.send_signal(signal.SIGTERM)
  out = sweep.communicate(timeout=300)[0]
  assert sweep.returncode == EXIT_PREEMPTED, out[-3000:]
  assert "sweep stopped by SIGTERM: points saved and stopped: seed=0;" in out, out[-3000:]
  status = json.loads((first / "status.json").read_text())
  stopped = max(_losses(first))
  assert status["status"] == "preempted" and status["returncode"] == EXIT_PREEMPTED
  assert status["final_step"] == stopped and 5 <= stopped < 20
  assert sorted(int(p.name) for p in (first / "checkpoints").iterdir()) == [stopped]
  assert not second.exists()  # nothing new started
  with open(first / ".lock", "a+") as lock:  # no process still trains the point
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

  rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert f"at step {stopped}" in (first / "train.log").read_text()
  assert _losses(first) == uninterrupted  # seed 0: the same run as the plain train
  assert json.loads((second / "status.json").read_text())["status"] == "finished"
  status = json.loads((first / "status.json").read_text())  # the stop is kept, not overwritten
  (stop,) = status["attempts"]
  assert stop["status"] == "preempted" and stop["final_step"] == stopped
  assert status["status"] == "finished" and status["wall_s"] > stop["wall_s"] > 0


def test_a_sweep_signalled_while_its_point_starts_records_it_preempted_and_the_rerun_trains_it(
  tmp_path,
):
  """SIGTERM to the sweep just after it started a point (its interpreter still importing): the
  point gets the signal once its setup handler is in place and stops before training, exit 75:
  "preempted", not "failed" (killed by SIGTERM). The rerun trains it."""
  overrides = dict(arg.removeprefix("--config.").split("=", 1) for arg in SMALL)
  overrides["train.steps"] = "3"
  spec = {"base": "configs/tiny.py", "overrides": overrides, "axes": {"train.seed": [0]}}
  sweep_file = tmp_path / "sweep.py"
  sweep_file.write_text(f"def get_config():\n  return {spec!r}\n")
  cmd = [sys.executable, "-m", "parallax_jax.cli", "sweep", "--config", str(sweep_file)]
  cmd += ["--workdir", str(tmp_path / "w")]
  point = tmp_path / "w" / "points" / "seed=0"
  sweep = subprocess.Popen(
    cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
  )
  deadline = time.time() + 120
  while not (point / "status.json").exists() and sweep.poll() is None and time.time() < deadline:
    time.sleep(0.005)  # written just before the point's process starts
  # At once: the point's interpreter is still importing, and the sweep's main thread may be just
  # starting its wait (which it does in short slices: sweeps.runner.WAIT_SLICE_S).
  sweep.send_signal(signal.SIGTERM)
  out = sweep.communicate(timeout=300)[0]
  assert sweep.returncode == EXIT_PREEMPTED, out[-3000:]
  assert "points saved and stopped: seed=0;" in out, out[-3000:]
  status = json.loads((point / "status.json").read_text())
  assert status["status"] == "preempted" and status["returncode"] == EXIT_PREEMPTED, status
  assert status["final_step"] is None and "before its first step" in status["error"]
  assert SETUP_LINE in (point / "train.log").read_text()

  rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  status = json.loads((point / "status.json").read_text())
  assert status["status"] == "finished" and status["final_step"] == 3
