"""Unreadable checkpoints: restore falls back to the newest readable step, moves the bad ones
aside byte for byte (never deletes), and with none readable names the directory."""

import logging
import shutil
from pathlib import Path

import pytest
from train_configs import ROOT, SMALL_MODEL

from parallax_jax.train.checkpoint import CheckpointError
from parallax_jax.train.config import load_config
from parallax_jax.train.loop import Trainer, evaluate, train
from parallax_jax.train.metrics import read_metrics

SMALL = [
  *SMALL_MODEL,
  "--config.train.eval_batches=1",
  "--config.checkpoint.every_steps=10",
  "--config.checkpoint.keep=3",
  "--config.checkpoint.async_save=false",
]


def _cfg(steps):
  return load_config(ROOT / "configs" / "tiny.py", [*SMALL, f"--config.train.steps={steps}"])


@pytest.fixture(scope="module")
def run30(tmp_path_factory):
  """A run with checkpoints 10, 20, 30 (copied per test, then damaged)."""
  workdir = tmp_path_factory.mktemp("run30")
  train(_cfg(30), workdir)
  return workdir


def _files(directory: Path) -> dict[str, bytes]:
  return {
    str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
  }


def _truncate_data(step_dir: Path) -> None:
  """Cuts the largest array data file of the OCDBT store in half."""
  largest = max(
    (step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size
  )
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _delete_metadata(step_dir: Path) -> None:
  (step_dir / "state" / "_METADATA").unlink()


def _change_stored_value(step_dir: Path) -> None:
  """Changes one stored number of ``params.embed`` through the store itself, leaving a valid
  store that Orbax restores without error as a different number: what a partial overwrite or a
  bad block under a chunk may leave. (Flipping a raw byte is not that: the chunks are
  zstd-compressed, so a flipped byte may as well make the chunk undecodable, which is the
  ``_truncate_data`` case.)"""
  import tensorstore as ts

  array = ts.open(
    {
      "driver": "zarr",
      "kvstore": {
        "driver": "ocdbt",
        "base": f"file://{step_dir / 'state'}",
        "path": "params.embed/",
      },
    }
  ).result()
  array[0, 0].write(array[0, 0].read().result() + 1.0).result()


def _wrong_params_checksum(step_dir: Path) -> None:
  """Changes the saved checksum of one params array (a damaged record refuses the step too)."""
  import json

  path = step_dir / "checksums" / "metadata"
  record = json.loads(path.read_text())
  key = next(k for k in sorted(record["leaves"]) if k.startswith("['params']"))
  record["leaves"][key] = (record["leaves"][key] + 1) % 2**32
  path.write_text(json.dumps(record))


def _drop_checksums_and_change_value(step_dir: Path) -> None:
  """A changed number with the checksums that would catch it gone: not an older checkpoint
  (saved without checksums) to restore unchecked."""
  shutil.rmtree(step_dir / "checksums")
  _change_stored_value(step_dir)


def _drop_checksums_and_metadata_and_change_value(step_dir: Path) -> None:
  """As above with Orbax's step metadata (which names the items saved) gone too: the older
  steps' checksums still say the step was saved with them."""
  _drop_checksums_and_change_value(step_dir)
  (step_dir / "_CHECKPOINT_METADATA").unlink()


def _drop_data_state(step_dir: Path) -> None:
  shutil.rmtree(step_dir / "data")


def _change_data_state(step_dir: Path) -> None:
  """Moves the saved data position on by one (``next_index``): valid JSON that restores without
  error and would resume from another place in the data stream."""
  import json

  path = step_dir / "data" / "metadata"
  state = json.loads(path.read_text())
  state["parent_state"]["next_index"] += 1
  path.write_text(json.dumps(state))


@pytest.mark.parametrize(
  "damage, reason",
  [
    (_truncate_data, ""),
    (_delete_metadata, ""),
    (_change_stored_value, "differ from the checksums saved with them"),
    (_drop_checksums_and_change_value, "checksums/ is missing, though the step was saved with it"),
    (_drop_checksums_and_metadata_and_change_value, "checksums/ is missing, though the older step"),
    (_drop_data_state, "would restart the data stream"),
    (_change_data_state, "the data iterator's state differs from the checksum saved with it"),
  ],
)
def test_unreadable_latest_is_moved_aside_and_the_previous_step_resumes(
  tmp_path, run30, damage, reason, caplog
):
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  damage(workdir / "checkpoints" / "30")
  damaged = _files(workdir / "checkpoints" / "30")

  trainer = Trainer(_cfg(30), workdir)
  with caplog.at_level(logging.INFO, logger="parallax_jax"):
    state = trainer.initial_state()
  trainer.checkpointer.close()
  assert int(state.step) == 20
  assert f"checkpoint step 30 in {workdir / 'checkpoints'} is unreadable: " in caplog.text
  assert reason in caplog.text
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20"]
  (aside,) = (workdir / "checkpoints_corrupt").iterdir()
  assert aside.name.startswith("30.") and _files(aside) == damaged  # moved, byte for byte

  # The run continues from step 20 exactly as it first went (losses of steps 21..30).
  first = {r["step"]: r["loss"] for r in read_metrics(run30)}
  train(_cfg(30), workdir)
  again = {r["step"]: r["loss"] for r in read_metrics(workdir)}
  assert again == first
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20", "30"]


@pytest.mark.parametrize(
  "damage", [_delete_metadata, _wrong_params_checksum, _drop_checksums_and_change_value]
)
def test_reading_a_run_falls_back_without_moving_anything(tmp_path, run30, damage):
  from parallax_jax.inference.loading import load_run

  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  damage(workdir / "checkpoints" / "30")
  before = _files(workdir)
  assert evaluate(workdir)["step"] == 20  # the whole state
  assert load_run(workdir).step == 20  # the params alone (generate, export-hf)
  assert _files(workdir) == before


def test_no_readable_checkpoint_is_one_error_naming_the_directory(tmp_path, run30):
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  for step in (10, 20):
    _delete_metadata(workdir / "checkpoints" / str(step))
  _truncate_data(workdir / "checkpoints" / "30")
  before = _files(workdir / "checkpoints")
  trainer = Trainer(_cfg(30), workdir)
  with pytest.raises(CheckpointError) as info:
    trainer.initial_state()
  trainer.checkpointer.close()
  message = str(info.value)
  assert f"no readable checkpoint in {workdir / 'checkpoints'}" in message
  assert "step 30: " in message and "step 20: " in message and "step 10: " in message
  assert "\n" not in message
  assert _files(workdir / "checkpoints") == before  # nothing moved
  assert not (workdir / "checkpoints_corrupt").exists()


OLD_DATA_STATE = {"next_index": 7}


def _old_format_checkpoint(directory: Path, extra: dict):
  """A step-7 checkpoint as pre-2026-12-02 code wrote it: ``state`` with extra fields, the
  data state, no checksums."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from parallax_jax.train.step import TrainState

  state = TrainState(
    step=jnp.int32(7),
    params={"w": jnp.arange(12.0).reshape(3, 4)},
    opt_state={"mu": jnp.full((3, 4), 0.5), "count": jnp.int32(7)},
  )
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  saved = {**state._asdict(), **extra}
  items = {"state": ocp.args.StandardSave(saved), "data": ocp.args.JsonSave(OLD_DATA_STATE)}
  manager.save(7, args=ocp.args.Composite(**items), force=True)
  manager.wait_until_finished()
  manager.close()
  return state, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_checkpoint_with_retired_rng_restores_exactly(tmp_path):
  import jax
  import numpy as np

  from parallax_jax.train.checkpoint import Checkpointer
  from parallax_jax.train.config import CheckpointConfig

  rng = np.asarray(jax.random.PRNGKey(3))  # the old TrainState.rng: raw uint32[2]
  state, abstract = _old_format_checkpoint(tmp_path / "ck", {"rng": rng})
  ckpt = Checkpointer(tmp_path / "ck", CheckpointConfig(async_save=False))  # to resume
  step, restored, data = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 7 and data == OLD_DATA_STATE
  assert set(restored._asdict()) == {"step", "params", "opt_state"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_with_an_unknown_extra_field_is_not_read_partially(tmp_path):
  import numpy as np

  from parallax_jax.train.checkpoint import Checkpointer
  from parallax_jax.train.config import CheckpointConfig

  _, abstract = _old_format_checkpoint(tmp_path / "ck", {"ema": np.zeros((3, 4), np.float32)})
  ckpt = Checkpointer(tmp_path / "ck", CheckpointConfig(async_save=False), read_only=True)
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    ckpt.restore_latest(abstract)  # a field that may matter is never dropped quietly
  ckpt.close()


def test_a_finished_run_with_a_damaged_final_checkpoint_trains_it_again(tmp_path, run30):
  """The rerun of a finished run checks its final params; damaged ones are not "finished": the
  run resumes from step 20 (the history says so), as it first went, to step 30."""
  import json

  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  assert train(_cfg(30), workdir)["already_finished"]  # intact: nothing to do
  _wrong_params_checksum(workdir / "checkpoints" / "30")
  summary = train(_cfg(30), workdir)
  assert not summary.get("already_finished") and summary["start_step"] == 20
  assert summary["final_step"] == 30
  first = {r["step"]: r["loss"] for r in read_metrics(run30)}
  assert {r["step"]: r["loss"] for r in read_metrics(workdir)} == first
  history = (workdir / "config_history.jsonl").read_text().splitlines()
  assert json.loads(history[-1])["resumed_from_step"] == 20
  (aside,) = (workdir / "checkpoints_corrupt").iterdir()
  assert aside.name.startswith("30.")


def test_a_newer_step_saved_by_another_process_count_is_refused_not_moved_aside(tmp_path, run30):
  """The newest step's data state was saved by two processes (what a two-process run writes),
  the older ones by one: resuming with one process is the user's mistake, refused in one line
  naming both counts, and nothing is moved (it used to be passed over as unreadable, moved to
  checkpoints_corrupt/, and the run went on from step 20)."""
  import json

  from parallax_jax.errors import UserError
  from parallax_jax.train import checksums
  from parallax_jax.train.data_states import BY_PROCESS

  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  (item,) = [
    p
    for p in (workdir / "checkpoints" / "30" / "data").iterdir()
    if p.is_file() and p.name != "commit_success.txt"
  ]
  state = json.loads(item.read_text())
  item.write_text(json.dumps({BY_PROCESS: [state, state]}))
  record_path = workdir / "checkpoints" / "30" / "checksums" / "metadata"
  record = json.loads(record_path.read_text())  # the digest such a save records with it
  record["data"] = checksums.data_digest({BY_PROCESS: [state, state]})
  record_path.write_text(json.dumps(record))
  before = _files(workdir / "checkpoints")

  trainer = Trainer(_cfg(30), workdir)
  with pytest.raises(
    UserError,
    match=r"checkpoint step 30 in .*: its data state was saved by 2 process\(es\) and this "
    r"run has 1",
  ):
    trainer.initial_state()
  trainer.checkpointer.close()
  assert _files(workdir / "checkpoints") == before
  assert not (workdir / "checkpoints_corrupt").exists()


def test_a_run_that_cannot_restore_gives_its_workdir_back(tmp_path, run30):
  """``train`` refused at the restore (no readable step) leaves the workdir unlocked: the fix
  can be run at once, from this process (a notebook) or another one."""
  import fcntl

  from parallax_jax.train import workdir_lock

  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  for step in (10, 20, 30):
    _delete_metadata(workdir / "checkpoints" / str(step))
  with pytest.raises(CheckpointError):
    train(_cfg(40), workdir)
  with open(workdir / ".lock", "a") as f:  # another open file: conflicts with any flock held
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  assert str(workdir.resolve()) not in workdir_lock._held


def test_a_damaged_metrics_file_refuses_the_resume_in_one_line_and_records_nothing(tmp_path, run30):
  """A line in the middle of metrics.jsonl that is not JSON (edited by hand, a bad block): the
  resume stops on it naming the line, before its history entry is written."""
  from parallax_jax.errors import UserError

  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  metrics.write_text("".join([lines[0], "not json\n", *lines[1:]]))
  before = _files(workdir)
  with pytest.raises(UserError, match="metrics.jsonl: line 2 is not JSON"):
    train(_cfg(40), workdir)
  assert _files(workdir) == before


def test_an_unfinished_save_is_cleared_by_the_next_start_and_left_by_readers(tmp_path, run30):
  """A save killed before Orbax's final rename leaves ``<step>.orbax-checkpoint-tmp*`` (a copy of
  step 30's files stands in for it): no step; eval leaves it, the next training start removes
  it (disk, not data) and resumes from step 30."""
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  tmp = workdir / "checkpoints" / "40.orbax-checkpoint-tmp-1733400000"
  shutil.copytree(workdir / "checkpoints" / "30", tmp)
  (tmp / "commit_success.txt").unlink()
  evaluate(workdir)
  assert tmp.is_dir()
  trainer = Trainer(_cfg(40), workdir)
  state = trainer.initial_state()
  trainer.close()
  assert int(state.step) == 30 and not tmp.exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20", "30"]


def test_a_resume_logs_no_orbax_metadata_noise(tmp_path, run30, caplog):
  """Resuming probes the saved state's fields through Orbax's item metadata, which looked for a
  step-level file one folder down and warned 'Metadata file does not exist' on every resume."""
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  with caplog.at_level(logging.WARNING):
    assert train(_cfg(31), workdir)["final_step"] == 31
  assert "Metadata file does not exist" not in caplog.text


def test_a_process_ending_right_after_building_a_checkpointer_prints_no_traceback(tmp_path):
  """Orbax deletes unfinished saves in a thread its ``close()`` does not wait for: a process
  ending at once (a one-line error, a preemption in setup) printed that thread's traceback
  ("cannot schedule new futures after interpreter shutdown"). Twenty unfinished saves keep the
  thread busy past the exit: the old code failed every such process (30 of 30)."""
  import subprocess
  import sys

  script = (
    "import sys\n"
    "from parallax_jax.train.checkpoint import Checkpointer\n"
    "from parallax_jax.train.config import CheckpointConfig\n"
    "Checkpointer(sys.argv[1], CheckpointConfig()).close()\n"
  )
  for attempt in range(2):
    directory = tmp_path / f"checkpoints{attempt}"
    for step in range(20):
      (directory / f"{step}.orbax-checkpoint-tmp-1733400000" / "state").mkdir(parents=True)
    run = subprocess.run(
      [sys.executable, "-c", script, str(directory)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not any(directory.iterdir())  # the cleanup ended before the process did


def test_eval_of_a_damaged_given_step_names_the_step_and_the_fix(tmp_path, run30):
  """``eval --step 30`` of a damaged step 30 (steps 10 and 20 intact): one line naming --step
  and the step's reason, not "no readable checkpoint" (the old message, as if the whole run
  were unreadable); nothing in the workdir changes."""
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  _delete_metadata(workdir / "checkpoints" / "30")
  before = _files(workdir)
  with pytest.raises(CheckpointError) as info:
    evaluate(workdir, step=30)
  message = str(info.value)
  assert message.startswith(f"checkpoint step 30 in {workdir / 'checkpoints'} is unreadable (")
  assert "give another --step" in message and "\n" not in message
  assert _files(workdir) == before
  assert evaluate(workdir, step=20)["step"] == 20


def test_a_failed_restore_s_late_reads_print_nothing(tmp_path, run30, monkeypatch):
  """A step whose OCDBT manifest is empty fails at its first array read; the other reads
  finish later in TensorStore's threads, on the restore's closed event loop, and the old code
  let each print "RuntimeError: Event loop is closed" with a traceback after the one-line
  error (2 runs of 3 of ``eval --step 30``). They go to the debug log now; other unraisable
  errors still reach the hook."""
  import sys
  import time

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  workdir = tmp_path / "run"
  shutil.copytree(run30, workdir)
  (workdir / "checkpoints" / "30" / "state" / "manifest.ocdbt").write_bytes(b"")
  for _ in range(3):
    with pytest.raises(CheckpointError, match="checkpoint step 30 .* is unreadable"):
      evaluate(workdir, step=30)
  time.sleep(1.0)  # the abandoned reads finish
  assert [str(e) for e in seen] == []
  sys.unraisablehook(type("U", (), {"exc_value": ValueError("other")})())
  assert [str(e) for e in seen] == ["other"]
