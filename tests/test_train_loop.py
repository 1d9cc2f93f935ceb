"""End-to-end training: falling loss, exact resume after kill -9, non-finite stop, conversion."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_configs import FAST_LR, ROOT, SMALL_MODEL

from parallax_jax.errors import UserError
from parallax_jax.train.config import load_config
from parallax_jax.train.loop import NonFiniteLossError, Trainer, evaluate, train
from parallax_jax.train.metrics import MetricsWriter, mfu_fields, read_metrics

SMALL = [*SMALL_MODEL, *FAST_LR]


def _cfg(*extra):
  return load_config(ROOT / "configs" / "tiny.py", [*SMALL, *extra])


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def test_metrics_are_made_durable_before_each_checkpoint(tmp_path, monkeypatch):
  """Each checkpoint save comes after an fsync of metrics.jsonl holding every record up to its
  step: a resume re-logs only the steps after the checkpoint, so records lost to a power cut
  before it would stay lost."""
  from parallax_jax.train.checkpoint import Checkpointer

  events = []
  real_fsync, real_save = os.fsync, Checkpointer.save

  def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
      events.append(("fsync", max(r["step"] for r in read_metrics(tmp_path))))
    real_fsync(fd)

  def save(self, step, *args, **kwargs):
    events.append(("save", step))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(Checkpointer, "save", save)
  steps = ("--config.train.steps=6", "--config.train.log_every=1")
  train(_cfg(*steps, "--config.checkpoint.every_steps=3"), tmp_path)
  saves = [i for i, e in enumerate(events) if e[0] == "save"]
  assert [events[i][1] for i in saves] == [3, 6]
  for i in saves:
    assert i > 0 and events[i - 1] == ("fsync", events[i][1]), events


def test_loss_falls_and_outputs_are_written(tmp_path):
  cfg = _cfg(
    "--config.train.steps=40",
    "--config.train.eval_every=20",
    "--config.checkpoint.every_steps=20",
  )
  summary = train(cfg, tmp_path)
  losses = _losses(tmp_path)
  assert summary["final_step"] == 40 and sorted(losses) == list(range(1, 41))
  assert np.mean([losses[s] for s in range(36, 41)]) < losses[1] - 1.0
  record = read_metrics(tmp_path)[-1]
  for key in (
    "loss",
    "perplexity",
    "tokens_per_s",
    "step_time_s",
    "grad_norm",
    "lr",
    "eval_perplexity",
  ):
    assert key in record, key
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["config"]["train"]["steps"] == 40 and config["data"]["source"]["sha256"]
  assert any((tmp_path / "tensorboard").iterdir())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20", "40"]
  assert evaluate(tmp_path)["step"] == 40
  # eval_tokens: the held-out positions the eval's means are over, counted from its batches
  from parallax_jax.train.config import resolve
  from parallax_jax.train.data_io import TrainData

  batches = TrainData(resolve(cfg, jax.device_count())).eval_batches()
  assert record["eval_tokens"] == int(sum(b["loss_mask"].sum() for b in batches)) > 0
  # MFU is logged with the peak it used; CPU has no known peak, and the record says so.
  assert record["mfu"] is None and record["peak_flops_per_device"] is None
  assert record["mfu_note"] == f"no peak known for {jax.devices()[0].device_kind!r}"
  assert (tmp_path / "plots" / "curves.png").read_bytes().startswith(b"\x89PNG")  # end of run


def test_evals_come_every_eval_every_steps_whatever_log_every(tmp_path):
  """An eval step is recorded even when it is not a log step (it once waited for one)."""
  cfg = _cfg("--config.train.steps=10", "--config.train.log_every=4", "--config.train.eval_every=3")
  train(cfg, tmp_path)
  records = read_metrics(tmp_path)
  assert [m["step"] for m in records if "eval_loss" in m] == [3, 6, 9, 10]
  assert [m["step"] for m in records] == [3, 4, 6, 8, 9, 10]
  assert all("loss" in m for m in records)


def test_mfu_divides_by_the_peak_it_reports():
  class H200:
    device_kind = "NVIDIA H200"

  fields = mfu_fields(4 * 989e12, 2.0, num_devices=2, device=H200())
  assert fields == {"mfu": 1.0, "peak_flops_per_device": 989e12}


def test_the_loop_divides_mfu_by_every_device(tmp_path, monkeypatch):
  """With a peak known for this device kind, each logged MFU is the model FLOPs of its
  tokens/s over the peak of all ``jax.device_count()`` devices (8 fake ones in the tests)."""
  from parallax_jax.train import metrics
  from parallax_jax.train.config import resolve

  kind = jax.devices()[0].device_kind
  monkeypatch.setitem(metrics.PEAK_FLOPS, kind, 1e12)
  cfg = _cfg("--config.train.steps=4", "--config.train.log_every=1", "--config.train.eval_every=0")
  train(cfg, tmp_path)
  flops_per_token = resolve(cfg).model.flops_per_token(cfg.train.seq_len)
  timed = [m for m in read_metrics(tmp_path) if "tokens_per_s" in m]
  assert len(timed) == 3 and jax.device_count() > 1
  for m in timed:
    want = flops_per_token * m["tokens_per_s"] / (1e12 * jax.device_count())
    assert m["mfu"] == pytest.approx(want, rel=1e-9) and m["peak_flops_per_device"] == 1e12


def test_step_time_leaves_out_the_checkpoint_saves(tmp_path, monkeypatch):
  """A save that blocks for 1 s after every step is the checkpoint phase's time, not step time:
  tokens/s measures the steps (it once counted each save into the next interval)."""
  from parallax_jax.train.checkpoint import Checkpointer

  save = Checkpointer.save

  def slow_save(self, *args, **kwargs):
    time.sleep(1.0)
    return save(self, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, "save", slow_save)
  cfg = _cfg(
    "--config.train.steps=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.checkpoint.every_steps=1",
  )
  summary = train(cfg, tmp_path)
  timed = [m["step_time_s"] for m in read_metrics(tmp_path) if "step_time_s" in m]
  assert len(timed) == 3 and max(timed) < 0.5, timed
  assert summary["time_checkpoint_s"] >= 4.0


def test_log_file_gets_plain_lines_and_a_finished_run_is_left_alone(tmp_path):
  steps = ["--config.train.steps=4", "--config.train.progress_bar=true"]
  proc = _run_cli(tmp_path, "--config.train.log_every=2", *steps)
  out = proc.communicate(timeout=600)[0].decode()
  assert proc.returncode == 0, out[-2000:]
  assert "\r" not in out and "step 4/4: loss=" in out  # stdout/stderr are a pipe, not a TTY
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

  again = _run_cli(tmp_path, "--config.train.log_every=2", *steps)
  out = again.communicate(timeout=600)[0].decode()
  assert again.returncode == 0, out
  assert out.splitlines()[-1] == (
    f"parallax-jax: {tmp_path} is already finished at step 4 (train.steps); nothing to do. "
    "Raise --config.train.steps to train further."
  )
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def _run_cli(workdir, *extra):
  cmd = [
    sys.executable,
    "-m",
    "parallax_jax.cli",
    "train",
    "--config",
    str(ROOT / "configs" / "tiny.py"),
    "--workdir",
    str(workdir),
    *SMALL,
    *extra,
  ]
  return subprocess.Popen(
    cmd,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
  steps = ["--config.train.steps=24", "--config.checkpoint.every_steps=5"]
  full = _run_cli(tmp_path / "full", *steps)
  assert full.wait(timeout=600) == 0, full.stdout.read().decode()[-2000:]

  killed = _run_cli(tmp_path / "killed", *steps)
  deadline = time.time() + 600
  path = tmp_path / "killed" / "metrics.jsonl"
  while time.time() < deadline:  # kill -9 once step 13 is logged (between checkpoints)
    lines = path.read_text().splitlines() if path.exists() else []
    if any(line.endswith("}") and json.loads(line)["step"] >= 13 for line in lines):
      break
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert max(_losses(tmp_path / "killed")) < 24

  resumed = _run_cli(tmp_path / "killed", *steps)
  assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode()[-2000:]
  assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  trainer = Trainer(
    _cfg(
      "--config.train.steps=12",
      "--config.checkpoint.every_steps=4",
      "--config.checkpoint.async_save=false",
    ),
    tmp_path,
  )
  step_fn = trainer.program.train_step

  def poisoned(state, batch):
    state, m = step_fn(state, batch)
    return state, {**m, "loss": jax.numpy.where(state.step == 7, np.nan, m["loss"])}

  trainer.program.train_step = poisoned
  with pytest.raises(
    NonFiniteLossError, match=r"at step 7.*the newest is step 4 \(this run started from step 0\)"
  ):
    trainer.run()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]


def test_convert_softmax_checkpoint_then_train_parallax(tmp_path, capsys):
  train(
    _cfg(
      "--config.model.attention=softmax",
      "--config.train.steps=6",
      "--config.checkpoint.every_steps=6",
    ),
    tmp_path / "soft",
  )
  soft_loss = evaluate(
    tmp_path / "soft", _cfg("--config.model.attention=softmax", "--config.train.eval_batches=2")
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "parallax_jax.cli",
      "convert-softmax",
      "--workdir",
      str(tmp_path / "soft"),
      "--out",
      str(tmp_path / "plx"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  # --out inside the run it reads is refused (under checkpoints/ it became the run's newest
  # step, which readers then skipped with an error), and nothing is written there.
  from parallax_jax import cli

  before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "soft").rglob("*"))
  for inside in ("checkpoints/99", "params"):
    code = cli.main(
      [
        "convert-softmax",
        "--workdir",
        str(tmp_path / "soft"),
        "--out",
        str(tmp_path / "soft" / inside),
      ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "lies inside the run it reads (--workdir" in err, err
  assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "soft").rglob("*")) == before
  # Zero W_R: the Parallax model starts as exactly the softmax model.
  trainer = Trainer(
    _cfg(
      f"--config.checkpoint.init_from={tmp_path / 'plx'}",
      "--config.train.eval_batches=2",
      "--config.train.steps=2",
    ),
    tmp_path / "par",
  )
  state = trainer.initial_state()
  r = state.params["blocks"][0]["attn"]["r_proj"]["kernel"]
  assert not np.any(np.asarray(r))
  par_loss = trainer.evaluate(state.params)
  assert abs(par_loss["eval_loss"] - soft_loss["eval_loss"]) < 1e-5

  # A wrong init_from is one line before the workdir is written (it used to leave a run whose
  # recorded init_from then refused the corrected path).
  for init_from, extra, says in [
    (tmp_path / "none", [], "does not exist"),
    # before the data setup, which would leave its trained tokenizer for a retry to read
    (tmp_path / "none", ["--config.data.tokenizer=train:bpe:300"], "does not exist"),
    (tmp_path / "soft", [], "is not a params-only checkpoint"),  # a run's workdir
    (tmp_path / "plx", ["--config.model.attention=softmax"], "not in the model: blocks/0/attn/r_"),
    (tmp_path / "plx", ["--config.model.mlp_dim=96"], "other shapes: blocks/0/mlp/"),
  ]:
    w = tmp_path / "refused"
    code = cli.main(
      ["train", "--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(w), *SMALL]
      + [f"--config.checkpoint.init_from={init_from}", *extra]
    )
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("parallax-jax: error: checkpoint.init_")]
    assert code == 2 and len(lines) == 1 and says in lines[0] and not w.exists(), err


def test_read_metrics_skips_an_unfinished_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  # A resumed run (checkpoint at step 1) drops the later records and the cut line.
  MetricsWriter(tmp_path, resume_step=1, tensorboard=False).close()
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
  path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(UserError, match="line 2 is not JSON.*delete that line"):  # one CLI line
    read_metrics(tmp_path)
  assert read_metrics(tmp_path / "none", missing_ok=True) == []
  with pytest.raises(FileNotFoundError):
    read_metrics(tmp_path / "none")


def test_a_kill_during_the_resume_rewrite_of_metrics_keeps_the_old_records(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  old = "".join(f'{{"step": {s}, "loss": {1.0 / s}}}\n' for s in range(1, 200))
  path.write_text(old)

  def killed(fd):  # the process dies halfway through writing the new file, before the rename
    os.ftruncate(fd, os.fstat(fd).st_size // 2)
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "fsync", killed)
  with pytest.raises(KeyboardInterrupt):
    MetricsWriter(tmp_path, resume_step=150, tensorboard=False)
  monkeypatch.undo()
  assert path.read_text() == old  # a rerun truncates them again
  MetricsWriter(tmp_path, resume_step=150, tensorboard=False).close()
  assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 151))


def test_wall_time_is_accounted_by_phase(tmp_path, caplog):
  """The summary splits the run's wall time into `timings.PHASES` (no second counted twice):
  every phase that ran is timed, the time outside every phase is a small share of the total,
  and the first step, which compiles, takes longer than a later one."""
  from parallax_jax.train.timings import PHASES

  t0 = time.perf_counter()
  with caplog.at_level("INFO", logger="parallax_jax"):
    summary = train(
      _cfg(
        "--config.train.steps=6",
        "--config.train.eval_every=3",
        "--config.checkpoint.every_steps=3",
      ),
      tmp_path,
    )
  wall = time.perf_counter() - t0
  times = {k[len("time_") : -len("_s")]: v for k, v in summary.items() if k.startswith("time_")}
  assert set(times) == {*PHASES, "other", "total"}
  assert all(times[p] > 0 for p in PHASES), times  # every phase ran in this run
  assert times["other"] >= -0.01 and times["total"] <= wall
  # the phases account for the run: time outside them (4% here on 2 cores) stays a small share
  assert times["other"] < 0.25 * times["total"], times
  assert times["first_step"] > times["steps"] / 5  # five later steps, none compiling
  assert any(r.getMessage().startswith("wall time ") for r in caplog.records)


def test_phase_timer_refuses_nested_and_unknown_phases():
  from parallax_jax.train.timings import PhaseTimer

  timer = PhaseTimer()
  with pytest.raises(RuntimeError, match="do not nest"):
    with timer.phase("steps"), timer.phase("input"):
      pass
  with pytest.raises(ValueError, match="phase='compile'"):
    with timer.phase("compile"):
      pass
  with timer.phase("eval"):  # usable again after a refusal
    time.sleep(0.01)
  assert timer.summary()["time_eval_s"] >= 0.01


def test_microbatched_run_trains_like_the_whole_batch(tmp_path):
  """``train.microbatches`` reaches the loop's step (losses equal the whole batch's to float32
  summation order), and a run may change it when it resumes (a layout, not the function)."""
  whole, pieces = tmp_path / "whole", tmp_path / "pieces"
  rows = "--config.train.batch_size=32"  # 4 pieces of 8 rows, one per device of the 8
  train(_cfg(rows, "--config.train.steps=2"), whole)  # both stop at 2 (train.steps shapes
  train(_cfg(rows, "--config.train.steps=3"), whole)  # the LR schedule) and resume to 3
  train(_cfg(rows, "--config.train.steps=2", "--config.train.microbatches=4"), pieces)
  train(_cfg(rows, "--config.train.steps=3", "--config.train.microbatches=2"), pieces)
  a, b = _losses(whole), _losses(pieces)
  assert sorted(a) == sorted(b) == [1, 2, 3]
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])


def _traced_steps(workdir):
  """Per trace folder (one per start that traced), the step numbers its step annotations hold."""
  import glob
  import gzip

  out = []
  for path in sorted(glob.glob(str(workdir / "tensorboard/plugins/profile/*/*.trace.json.gz"))):
    events = json.load(gzip.open(path))["traceEvents"]
    out.append(sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train"))
  return out


@pytest.mark.slow  # ~20 s on 2 cores: three runs and the profiler's trace files
def test_profiler_traces_the_asked_steps_of_each_start(tmp_path):
  """A trace of ``profile_steps`` steps after ``profile_skip_steps`` of each start, numbered as
  metrics.jsonl numbers steps; a start that ends inside its window keeps what it traced; no
  trace unless asked."""
  plain = tmp_path / "plain"
  train(_cfg("--config.train.steps=2"), plain)
  assert not (plain / "tensorboard" / "plugins").exists()
  prof = ["--config.train.profile_steps=2", "--config.train.profile_skip_steps=1"]
  train(_cfg("--config.train.steps=4", *prof), tmp_path)
  assert _traced_steps(tmp_path) == [[2, 3]]
  time.sleep(1.1)  # the profiler names its folder by the second
  train(_cfg("--config.train.steps=6", *prof), tmp_path)  # resumes at 4: traces 6, then ends
  assert _traced_steps(tmp_path) == [[2, 3], [6]]
  assert sorted(_losses(tmp_path)) == list(range(1, 7))


def _tensorboard_events(logdir: Path) -> list:
  """Every event of the TFRecord event files under ``logdir``, file by file in write order (a
  reader of the record format: length, crc, payload, crc)."""
  import struct

  from tensorboardX.proto import event_pb2

  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
    data, at = path.read_bytes(), 0
    while at + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[at : at + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[at + 12 : at + 12 + length])
      events.append(event)
      at += 12 + length + 4
  return events


@pytest.mark.parametrize(
  "resume_step, redone",
  [(2, [3]), (0, [1])],  # a resume from step 2; a restart of a run killed before a checkpoint
  ids=["resume", "restart-from-0"],
)
def test_a_new_start_tells_tensorboard_to_drop_the_steps_it_redoes(tmp_path, resume_step, redone):
  """A run resumed from step 2 logs steps 3.. again, and one killed before its first checkpoint
  starts from 0 and logs 1.. again: its event file starts with TensorBoard's purge marker (a
  START session log at the first redone step), so the earlier start's steps from there are
  hidden rather than drawn twice (a restart from 0 wrote no marker before)."""
  first = MetricsWriter(tmp_path)
  for step in (1, 2, 3, 4):
    first.write(step, {"loss": 1.0 / step})
  first.close()
  time.sleep(1.1)  # a later file (its name holds the time in seconds)
  again = MetricsWriter(tmp_path, resume_step=resume_step)
  again.write(resume_step + 1, {"loss": 0.5})
  again.close()
  events = _tensorboard_events(tmp_path / "tensorboard")
  starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
  assert [e.step for e in events if e.summary.value] == [1, 2, 3, 4, *redone]  # the reader reads
  assert starts == redone
