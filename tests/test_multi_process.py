"""Training as two ``jax.distributed`` processes of 4 CPU devices each (the multi-host case of a
TPU pod or GPU hosts, here over gloo on one machine), started the way the README says
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``): a preempted run
resumes exactly, its held-out numbers are the same evaluated by one process, and resuming under
another process count is refused in one line."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import pytest
from run_watch import wait_for_step
from train_configs import FAST_LR, ROOT, SMALL_MODEL

from parallax_jax.train.metrics import read_metrics
from parallax_jax.train.preemption import EXIT_PREEMPTED

ARGS = [
  *SMALL_MODEL,
  *FAST_LR,
  "--config.train.steps=24",
  "--config.train.eval_every=12",  # (SMALL_MODEL's 0 overridden: the later key wins)
  "--config.train.eval_batches=2",
  "--config.checkpoint.every_steps=100",  # only the preemption's and the final save
  "--config.mesh.data=2",
  "--config.mesh.fsdp=4",  # batch rows over both processes' devices, params over 4
  # A BPE trained at the start (on 1 MiB): process 0 saves it in the run, the other keeps it in
  # a private file; both must be the same tokenizer.
  "--config.data.tokenizer=train:bpe:384:1",
]
DEVICES = 8  # in all: 2 processes x 4, or 1 x 8


def _env(processes: int, index: int, address: str) -> dict:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  flags.append(f"--xla_force_host_platform_device_count={DEVICES // processes}")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  if processes > 1:
    env.update(
      JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index)
    )
  return env


def _start(
  command: str, workdir, processes: int, *extra: str, cwds=None, own=None
) -> list[subprocess.Popen]:
  """``own``: process index -> arguments of that process alone."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  cmd = [sys.executable, "-m", "parallax_jax.cli", command, "--workdir", str(workdir), *extra]
  return [
    subprocess.Popen(
      [*cmd, *(own or {}).get(i, [])],
      cwd=ROOT if cwds is None else cwds[i],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=_env(processes, i, address),
    )
    for i in range(processes)
  ]


def _train(workdir, processes: int = 2, *extra: str) -> list[subprocess.Popen]:
  return _start("train", workdir, processes, "--config", "configs/tiny.py", *ARGS, *extra)


def _finish(procs, timeout_s: float = 600) -> tuple[list[int], list[str]]:
  try:
    outs = [p.communicate(timeout=timeout_s)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], outs


def _curve(workdir) -> dict:
  """Every logged number by step (train loss, held-out loss), as process 0 wrote them."""
  return {
    (m["step"], key): m[key]
    for m in read_metrics(workdir)
    for key in ("loss", "eval_loss")
    if key in m
  }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_processes")
  codes, outs = _finish(_train(workdir))
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  return workdir, _curve(workdir)


def test_a_preempted_two_process_run_resumes_exactly_and_only_as_two(tmp_path, uninterrupted):
  """Each process holds its own data-iterator state (its share of the documents); the
  checkpoint keeps every process's, so the resumed run is the uninterrupted one, step for step.
  One process cannot continue that stream: refused before anything is written."""
  workdir = tmp_path / "run"
  procs = _train(workdir)
  wait_for_step(workdir, 5, procs)  # before the final save
  for p in procs:
    p.send_signal(signal.SIGTERM)
  codes, outs = _finish(procs)
  assert codes == [EXIT_PREEMPTED] * 2, outs[0][-3000:] + outs[1][-3000:]
  saved = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert len(saved) == 1 and 5 <= int(saved[0]) < 24

  codes, outs = _finish(_train(workdir, processes=1))
  errors = [line for line in outs[0].splitlines() if line.startswith("parallax-jax: error:")]
  assert codes == [2] and len(errors) == 1 and "Traceback" not in outs[0], outs[0][-3000:]
  assert "saved by 2 process(es) and this run has 1" in errors[0]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == saved  # nothing moved

  codes, outs = _finish(_train(workdir))
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert f"resumed from {workdir / 'checkpoints'} at step {saved[0]}" in outs[0]
  assert _curve(workdir) == uninterrupted[1]


def test_held_out_numbers_do_not_depend_on_the_process_count(uninterrupted):
  """The run's own eval at its last step (two processes) against ``parallax-jax eval`` of the
  same checkpoint by one process of 8 devices: the same held-out rows, so the same loss up to
  float32 summation order."""
  workdir, curve = uninterrupted
  codes, outs = _finish(_start("eval", workdir, 1))
  assert codes == [0], outs[0][-3000:]
  result = json.loads(outs[0].strip().splitlines()[-1])
  assert result["step"] == 24
  assert result["eval_loss"] == pytest.approx(curve[(24, "eval_loss")], rel=1e-6)


def test_a_mesh_that_does_not_split_the_rows_over_the_processes_is_refused(tmp_path):
  """The ring over all 8 devices keeps every row on both processes, which read different rows:
  refused before anything is written (it trained on rows glued along the sequence)."""
  workdir = tmp_path / "run"
  mesh = ["--config.sharding.strategy=cp", "--config.mesh.data=1", "--config.mesh.fsdp=1"]
  mesh.append("--config.mesh.sequence=8")
  codes, outs = _finish(_train(workdir, 2, *mesh))
  for out in outs:
    errors = [line for line in out.splitlines() if line.startswith("parallax-jax: error:")]
    assert len(errors) == 1 and "over 2 processes: each process reads its own rows" in errors[0]
  assert codes == [2, 2] and not workdir.exists()


# slow (35 s on 2 cores): two processes each compile every strategy; each strategy's numerics
# against one device are in test_sharding.py, and two processes are in the default suite above
@pytest.mark.slow
def test_compare_sharding_over_two_processes(tmp_path):
  """Every strategy's mesh keeps its tensor and sequence axes within a process, lowers the
  global batch and sees the same first-step loss; process 0 alone writes the table."""
  strategies = "dp,fsdp_tp,cp"
  args = ["--config", "configs/tiny.py", "--strategies", strategies, "--steps", "1", *SMALL_MODEL]
  codes, outs = _finish(_start("compare-sharding", tmp_path / "cmp", 2, *args))
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  with open(tmp_path / "cmp" / "sharding.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["strategy"] for r in rows] == strategies.split(",") and not any(
    r["error"] for r in rows
  )
  assert {r["mesh"] for r in rows} == {"data=8", "fsdp=4 tensor=2", "data=2 sequence=4"}
  losses = [float(r["first_step_loss"]) for r in rows]
  assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)


def test_hosts_that_read_different_data_are_refused(tmp_path):
  """The same relative ``data.source`` names different files on the two "hosts" (their working
  directories): same paragraph count, other bytes. Each process would take its share of its
  own documents; refused on both before anything is written."""
  cwds = [tmp_path / "host0", tmp_path / "host1"]
  for i, cwd in enumerate(cwds):
    cwd.mkdir()
    paragraphs = [f"document {k} " + "words " * (20 + i) for k in range(40)]
    (cwd / "corpus.txt").write_text("\n\n".join(paragraphs))
  data = ["--config.data.source=corpus.txt", "--config.data.text_split=paragraph"]
  workdir = tmp_path / "run"
  args = ["--config", str(ROOT / "configs" / "tiny.py"), *ARGS, *data]
  codes, outs = _finish(_start("train", workdir, 2, *args, cwds=cwds))
  for out in outs:
    errors = [line for line in out.splitlines() if line.startswith("parallax-jax: error:")]
    assert len(errors) == 1 and "processes [1] read other data than process 0" in errors[0], out
  assert codes == [2, 2] and not workdir.exists()


def test_a_process_given_another_config_is_refused(tmp_path):
  """Process 1 alone gets another seed (say, a host's launch script out of date): it would
  initialise its shards of the params and shuffle its documents under it, while the run record
  shows process 0's. Refused on both before anything is written."""
  workdir = tmp_path / "run"
  args = ["--config", "configs/tiny.py", *ARGS]
  own = {1: ["--config.train.seed=7"]}
  codes, outs = _finish(_start("train", workdir, 2, *args, own=own))
  for out in outs:
    errors = [line for line in out.splitlines() if line.startswith("parallax-jax: error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "processes [1] were given another config than process 0" in errors[0]
    assert "train.seed=0 vs 7" in errors[0]
  assert codes == [2, 2] and not workdir.exists()


def test_a_data_file_missing_on_one_host_stops_every_process_in_one_line(tmp_path):
  """Process 1's host lacks the corpus: it stops with its own error, and process 0, at the
  cross-process data check, stops there too (it waited at that collective for ever, while
  process 1 waited for it at exit)."""
  cwds = [tmp_path / "host0", tmp_path / "host1"]
  for cwd in cwds:
    cwd.mkdir()
  (cwds[0] / "corpus.txt").write_text(
    "\n\n".join(f"document {k} " + "words " * 20 for k in range(40))
  )
  data = ["--config.data.source=corpus.txt", "--config.data.text_split=paragraph"]
  workdir = tmp_path / "run"
  args = ["--config", str(ROOT / "configs" / "tiny.py"), *ARGS, *data]
  codes, outs = _finish(_start("train", workdir, 2, *args, cwds=cwds), timeout_s=120)
  errors = [
    [line for line in out.splitlines() if line.startswith("parallax-jax: error:")] for out in outs
  ]
  assert [len(e) for e in errors] == [1, 1] and "Traceback" not in outs[0] + outs[1], outs
  assert "processes [1] stopped with an error before the data check" in errors[0][0]
  assert "'corpus.txt': no such file or directory" in errors[1][0]
  assert codes == [2, 2] and not workdir.exists()


def test_every_process_describes_the_same_trained_tokenizer(tmp_path, monkeypatch):
  """Process 0 trains the BPE and saves it in the run; another process that starts first trains
  its own into a private file. What the processes compare must be the same for both (the
  tokenizer's bytes, not its path). In one process, as process 0 and then as process 1."""
  from parallax_jax.train import data_io
  from parallax_jax.train.config import load_config, resolve

  cfg = load_config(ROOT / "configs" / "tiny.py", [a.removeprefix("--config.") for a in ARGS])
  exp = resolve(cfg, 8)
  compared = {0: [], 1: []}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for index in (1, 0):  # process 1 first: it finds no saved tokenizer and trains its own
    monkeypatch.setattr(jax, "process_index", lambda i=index: i)
    monkeypatch.setattr(
      data_io, "_same_on_every_process", lambda kind, what, i=index: compared[i].append(what)
    )
    data_io.TrainData(exp, tmp_path / "run")
  assert "tokenizer" in compared[0][-1] and compared[0] == compared[1]


@pytest.mark.slow  # the survivor waits ~90 s for JAX's coordination service to call it off
def test_a_process_killed_outright_takes_the_job_down_and_the_rerun_resumes_exactly(
  tmp_path, uninterrupted
):
  """kill -9 of one process (a lost host): no checkpoint of that moment, the other process
  aborts once the coordination service misses its peer, and the rerun resumes from the newest
  complete checkpoint to the uninterrupted run's numbers."""
  workdir = tmp_path / "run"
  procs = _train(workdir, 2, "--config.checkpoint.every_steps=5")
  wait_for_step(workdir, 7, procs)
  procs[1].kill()
  codes, outs = _finish(procs, timeout_s=300)
  assert codes[0] != 0 and codes[1] == -signal.SIGKILL, outs[0][-3000:]
  codes, outs = _finish(_train(workdir, 2, "--config.checkpoint.every_steps=5"))
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "resumed from" in outs[0]
  assert _curve(workdir) == uninterrupted[1]
