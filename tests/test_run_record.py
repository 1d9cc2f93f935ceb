"""A run's record: config changes on resume (refused or recorded), readers that never write."""

import hashlib
import json
from pathlib import Path

import pytest
from cli_runner import run_cli

from parallax_jax import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
SMALL = [
  "--config.model.d_model=64",
  "--config.model.num_layers=1",
  "--config.model.mlp_dim=128",
  "--config.model.head_dim=16",
  "--config.train.seq_len=32",
  "--config.train.eval_every=0",
  "--config.train.eval_batches=1",
  "--config.train.progress_bar=false",
  "--config.checkpoint.every_steps=2",
  "--config.checkpoint.async_save=false",
]


def _snapshot(workdir: Path) -> dict:
  """Every path under workdir with a hash of its bytes (directories: None)."""
  return {
    str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    for p in sorted(workdir.rglob("*"))
  }


def _main(capsys, *argv):
  code = cli.main(list(argv))
  out = capsys.readouterr()
  return code, out.out, out.err


def _error(err: str) -> str:
  lines = [x for x in err.splitlines() if x.startswith("parallax-jax: error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _check_environment(record: dict) -> None:
  """A start's record of what it ran on, against JAX's and git's own answers."""
  import subprocess

  import jax
  import jaxlib

  assert record["devices"] == {
    "platform": jax.default_backend(),
    "kind": jax.devices()[0].device_kind,
    "count": jax.device_count(),
    "local_count": jax.local_device_count(),
    "processes": jax.process_count(),
  }
  assert record["versions"]["jax"] == jax.__version__
  assert record["versions"]["jaxlib"] == jaxlib.__version__
  if (ROOT / ".git").exists():  # a checkout (CI's is one): the commit the code is at
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    assert record["code"]["commit"] == head.stdout.decode().strip()


def test_readers_never_write_and_changed_configs_are_refused_or_recorded(tmp_path, capsys):
  w = tmp_path / "run"
  train = ["train", "--config", TINY, "--workdir", str(w), *SMALL]
  assert _main(capsys, *train, "--config.train.steps=4")[0] == 0
  config_bytes = (w / "config.json").read_bytes()
  _check_environment(json.loads(config_bytes)["environment"])
  before = _snapshot(w)

  # eval: the run's config, a safe override, then a config the run cannot take.
  code, out, _ = _main(capsys, "eval", "--workdir", str(w))
  at_4 = json.loads(out.splitlines()[-1])
  assert code == 0 and at_4["step"] == 4
  assert _main(capsys, "eval", "--workdir", str(w), "--config.train.eval_batches=2")[0] == 0
  code, _, err = _main(capsys, "eval", "--workdir", str(w), "--config", TINY)
  assert code == 2 and "model.d_model 64 -> 128" in _error(err)
  assert _snapshot(w) == before

  # analysis reads the run the same way.
  from experiments.attention_analysis import analyse

  assert analyse(w, min_row=1)["step"] == 4
  assert _snapshot(w) == before

  # A rerun that changes the model or the data stream: refused, every key listed, no write.
  code, _, err = _main(
    capsys, *train, "--config.train.steps=8", "--config.model.d_model=32", "--config.train.seed=1"
  )
  line = _error(err)
  assert code == 2 and "model.d_model 64 -> 32" in line and "train.seed 0 -> 1" in line
  assert "train.steps" not in line and "new --workdir" in line
  assert _snapshot(w) == before

  # A safe change resumes and is recorded next to, not over, the original record.
  code, out, _ = _main(capsys, *train, "--config.train.steps=6", "--config.train.log_every=2")
  assert code == 0 and "final_step=6" in out
  assert (w / "config.json").read_bytes() == config_bytes
  history = [json.loads(x) for x in (w / "config_history.jsonl").read_text().splitlines()]
  assert len(history) == 1 and history[0]["resumed_from_step"] == 4
  assert history[0]["changes"] == {"train.log_every": [10, 2], "train.steps": [4, 6]}
  _check_environment(history[0]["environment"])
  code, out, _ = _main(capsys, "eval", "--workdir", str(w))  # the run's current config
  at_6 = json.loads(out.splitlines()[-1])
  assert code == 0 and at_6["step"] == 6 and at_6["eval_loss"] != at_4["eval_loss"]

  # An older step on request (the numbers it gave as the latest), or one line if not held.
  before = _snapshot(w)
  code, out, _ = _main(capsys, "eval", "--workdir", str(w), "--step", "4")
  assert code == 0 and json.loads(out.splitlines()[-1]) == at_4
  code, _, err = _main(capsys, "eval", "--workdir", str(w), "--step", "5")
  assert code == 2 and "--step 5:" in _error(err) and "[4, 6]" in _error(err)
  code, _, err = _main(capsys, "eval", "--workdir", str(w), "--step", "-1")
  assert code == 2 and "--step must be an int >= 0" in _error(err)  # as export-hf says it
  assert _snapshot(w) == before


def test_a_second_process_training_the_same_workdir_is_refused(tmp_path, capsys):
  """Another process's lock (a separate open file: flock is per open file) refuses the start in
  one line naming the holder, before anything is written; once released, training goes on."""
  import fcntl

  w = tmp_path / "run"
  train = ["train", "--config", TINY, "--workdir", str(w), *SMALL]
  assert _main(capsys, *train, "--config.train.steps=2")[0] == 0
  before = _snapshot(w)
  with open(w / ".lock", "a+") as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the trainer released it when done
    code, _, err = _main(capsys, *train, "--config.train.steps=4")
    assert code == 2 and "is being trained by pid " in _error(err)
    assert "wait for it to finish or stop it" in _error(err)
    assert _snapshot(w) == before
  code, out, _ = _main(capsys, *train, "--config.train.steps=4")
  assert code == 0 and "final_step=4" in out


def test_a_file_system_without_flock_trains_unlocked_saying_so(
  tmp_path, capsys, monkeypatch, caplog
):
  """Some FUSE mounts of object stores refuse flock: the run trains, and says it is unlocked."""
  import errno
  import fcntl
  import logging

  def unsupported(f, op):
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")

  monkeypatch.setattr(fcntl, "flock", unsupported)
  w = tmp_path / "run"
  with caplog.at_level(logging.WARNING, logger="parallax_jax"):
    argv = ["train", "--config", TINY, "--workdir", str(w), *SMALL, "--config.train.steps=2"]
    code, out, _ = _main(capsys, *argv)
  assert code == 0 and "final_step=" in out
  assert "does not support flock" in caplog.text and "without the one-trainer lock" in caplog.text


@pytest.mark.parametrize(
  "argv",
  [
    ["train", "--config", TINY],
    ["eval"],
    ["sweep", "--config", "configs/sweeps/smoke.py"],
    ["export-hf", "--workdir", "runs/x", "--out"],
  ],
  ids=["train", "eval", "sweep", "export-out"],
)
def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, argv):
  """``gs://bucket/run`` used to become a local directory ``gs:/bucket/run`` (then a traceback
  from the TensorBoard writer); every --workdir / --out is a path of this machine."""
  monkeypatch.chdir(tmp_path)
  if argv[-1] != "--out":
    argv = [*argv, "--workdir"]
  with pytest.raises(SystemExit) as exit_:
    cli.main([*argv, "gs://bucket/run"])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "'gs://bucket/run' is a URL" in err and "Traceback" not in err
  assert list(tmp_path.iterdir()) == []


SMOKE = str(ROOT / "configs" / "sweeps" / "smoke.py")
# Every command's directory argument (the last flag), and plot's file --out.
_DIR_ARGS = {
  "train": ["train", "--config", TINY, *SMALL, "--config.train.steps=2", "--workdir"],
  "dry-run": ["train", "--dry-run", "--no-compile", "--config", TINY, "--workdir"],
  "eval": ["eval", "--workdir"],
  "generate": ["generate", "--prompt", "x", "--workdir"],
  "sweep": ["sweep", "--config", SMOKE, "--workdir"],
  "compare": ["compare-sharding", "--config", TINY, "--strategies", "dp", "--workdir"],
  "import-hf": ["import-hf", "--from", "hf/x", "--workdir"],
  "export-out": ["export-hf", "--workdir", "runs/x", "--out"],
  "convert-out": ["convert-softmax", "--workdir", "runs/x", "--out"],
  "plot-workdir": ["plot", "--workdir"],
}
_BAD_PATHS = {  # what the path is, and the refusal it gets
  "empty": ("", "'' is an empty path; name one"),
  "under-a-file": ("afile/sub", "'afile/sub' lies under 'afile', which is a file, not a dir"),
  "a-file": ("afile", "'afile' is a file, not a directory"),
}


@pytest.mark.parametrize(
  "argv,path,match",
  [
    *[
      pytest.param(argv, path, match, id=f"{name}-{kind}")
      for name, argv in _DIR_ARGS.items()
      for kind, (path, match) in _BAD_PATHS.items()
    ],
    # A file --out may be an existing file (it is replaced), not under one.
    pytest.param(
      ["plot", "--workdir", "runs/x", "--out"], "", "'' is an empty path", id="plot-out-empty"
    ),
    pytest.param(
      ["plot", "--workdir", "runs/x", "--out"],
      "afile/p.png",
      "'afile/p.png' lies under 'afile', which is a file",
      id="plot-out-under-a-file",
    ),
  ],
)
def test_an_empty_path_or_one_under_a_file_is_refused_before_anything_is_written(
  tmp_path, capsys, monkeypatch, argv, path, match
):
  """``--workdir ""`` trained into the current directory; a path under a file ended in
  NotADirectoryError / FileExistsError tracebacks (or a dry run saying it would train there)."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "afile").write_text("a file\n")
  code, out, err = run_cli(capsys, *argv, path)
  assert code == 2 and out == "" and match in err and "Traceback" not in err, err
  assert [p.name for p in tmp_path.iterdir()] == ["afile"]
  assert (tmp_path / "afile").read_text() == "a file\n"


def test_a_finished_run_dry_run_predicts_nothing_and_convert_softmax_refusals(tmp_path, capsys):
  """The dry run said a finished run would resume (and record config changes) where training
  does nothing; convert-softmax ended in Orbax / FileNotFoundError tracebacks."""
  w = tmp_path / "run"
  train = ["train", "--config", TINY, "--workdir", str(w), *SMALL, "--config.train.steps=2"]
  train += ["--config.model.attention=softmax"]
  assert _main(capsys, *train)[0] == 0
  before = _snapshot(w)
  code, out, _ = _main(capsys, *train, "--config.train.log_every=1")
  assert code == 0 and "already finished at step 2" in out and "nothing to do" in out
  dry = [*train, "--dry-run", "--no-compile", "--config.train.log_every=1"]
  code, out, _ = _main(capsys, *dry)
  line = next(x for x in out.splitlines() if x.startswith("workdir: "))
  assert code == 0 and line == (
    f"workdir: {w} holds a run finished at step 2 (train.steps 2): training would do nothing "
    "and record nothing; raise --config.train.steps to train further"
  )
  code, out, _ = _main(capsys, *dry, "--config.train.steps=3")
  assert code == 0 and "training would resume it" in out and "train.steps 2 -> 3" in out
  assert _snapshot(w) == before

  convert = ["convert-softmax", "--workdir", str(w), "--out"]
  code, _, err = _main(capsys, *convert, str(tmp_path / "p"), "--step", "3")
  assert code == 2 and "--step 3:" in _error(err) and "holds steps [2]" in _error(err)
  (tmp_path / "taken").mkdir()
  code, _, err = _main(capsys, *convert, str(tmp_path / "taken"))
  assert code == 2 and f"--out {str(tmp_path / 'taken')!r} already exists" in _error(err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]
  assert list((tmp_path / "taken").iterdir()) == []
  assert _snapshot(w) == before


def test_eval_of_a_missing_or_empty_workdir_is_one_line_and_creates_nothing(tmp_path, capsys):
  missing = tmp_path / "missing"
  for argv in (["--workdir", str(missing)], ["--workdir", str(missing), "--config", TINY]):
    code, _, err = _main(capsys, "eval", *argv)
    assert code == 2 and "does not exist" in _error(err)
  assert not missing.exists()
  empty = tmp_path / "empty"
  empty.mkdir()
  for argv in (["--workdir", str(empty)], ["--workdir", str(empty), "--config", TINY]):
    code, _, err = _main(capsys, "eval", *argv)
    assert code == 2 and str(empty) in _error(err)
  assert list(empty.iterdir()) == []


def test_runs_and_sweeps_keep_out_of_each_others_workdirs(tmp_path, capsys):
  """A run trained (or read) in a sweep's directory, or a sweep in a run's, is refused before
  anything is written."""
  w = tmp_path / "run"
  assert (
    _main(capsys, "train", "--config", TINY, "--workdir", str(w), *SMALL, "--config.train.steps=2")[
      0
    ]
    == 0
  )
  s = tmp_path / "sweep"
  s.mkdir()
  (s / "sweep.json").write_text("{}")
  before = _snapshot(tmp_path)
  smoke = str(ROOT / "configs" / "sweeps" / "smoke.py")
  for argv, says in [
    (["train", "--config", TINY, "--workdir", str(s), *SMALL], "holds a sweep"),
    (["eval", "--workdir", str(s)], "holds a sweep"),
    (["sweep", "--config", smoke, "--workdir", str(w)], "holds a run"),
    (["sweep", "--config", smoke, "--workdir", str(w), "--dry-run"], "holds a run"),
  ]:
    code, _, err = _main(capsys, *argv)
    assert code == 2 and says in _error(err), argv
  assert _snapshot(tmp_path) == before


def test_key_table_covers_the_config():
  from parallax_jax.train.config_keys import KEYS, flatten
  from parallax_jax.train.defaults import base_config

  assert set(flatten(base_config().to_dict())) == set(KEYS)
  assert all(rule in ("fixed", "toggle", "safe") and meaning for rule, meaning in KEYS.values())


# Keys the table marks safe (or toggle, within "on") that could plausibly touch the state.
SAFE_CHANGES = [
  ("model.remat", "full"),
  ("model.logits_chunk", 16),
  ("model.attention_impl", "xla"),
  ("optimizer.learning_rate", 1e-4),
  ("optimizer.schedule", "wsd"),
  ("optimizer.warmup_steps", 0),
  ("optimizer.weight_decay", 0.0),
  ("optimizer.decay_embeddings", True),
  ("optimizer.b2", 0.5),
  ("optimizer.clip_norm", 0.5),
  ("train.steps", 7),
]
MUON_SAFE_CHANGES = [
  ("optimizer.adam_learning_rate", 1e-3),
  ("optimizer.muon_beta", 0.5),
  ("optimizer.muon_ns_steps", 2),
  ("optimizer.weight_decay", 0.0),
]


def _abstract_state(*overrides):
  import jax

  from parallax_jax.train.config import load_config, resolve
  from parallax_jax.train.optimizer import make_optimizer
  from parallax_jax.train.step import init_state

  exp = resolve(load_config(TINY, [*SMALL, *overrides]))
  tx, _ = make_optimizer(exp.optimizer, exp.train.steps)
  state = jax.eval_shape(lambda: init_state(exp.model, tx, 0))
  return jax.tree.structure(state), [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("base", [[], ["--config.optimizer.name=muon"]], ids=["adamw", "muon"])
def test_safe_keys_keep_the_checkpoint_tree_and_fixed_ones_do_not(base):
  """The resume rules of config_keys against the state's actual tree (shapes and dtypes)."""
  from parallax_jax.train.config import load_config
  from parallax_jax.train.config_keys import flatten, refused_on_resume

  current = flatten(load_config(TINY, [*SMALL, *base]).to_dict())
  reference = _abstract_state(*base)
  for key, value in SAFE_CHANGES + (MUON_SAFE_CHANGES if base else []):
    assert not refused_on_resume(key, current[key], value), key
    assert _abstract_state(*base, f"--config.{key}={value}") == reference, key
  for key, value in [
    ("optimizer.clip_norm", None),
    ("optimizer.name", "muon" if not base else "adamw"),
    ("model.d_model", 32),
  ]:
    assert refused_on_resume(key, current[key], value), key
    assert _abstract_state(*base, f"--config.{key}={value}") != reference, key


def test_a_dry_run_a_workdir_refuses_prints_only_the_refusal(tmp_path, capsys):
  """``train --dry-run`` on a run that cannot take the change: one line on stderr and nothing on
  stdout (the whole config table came first)."""
  from cli_runner import run_cli

  from parallax_jax.train.config import load_config

  (tmp_path / "config.json").write_text(
    json.dumps({"config": load_config(TINY).to_dict()}, default=str)
  )
  argv = ["train", "--dry-run", "--no-compile", "--config", TINY, "--workdir", str(tmp_path)]
  code, out, err = run_cli(capsys, *argv, "--config.model.d_model=32")
  assert code == 2 and out == "" and "cannot take these config changes" in err, (out, err)
  assert "Traceback" not in err


def test_a_run_recorded_before_an_added_key_ran_with_its_earlier_value(tmp_path):
  """A run whose record lacks ``model.tied_head_scale`` (recorded before the key existed) ran
  with the scaled head if its head was tied: resuming it with today's default (the unscaled
  head) is refused, naming the override that restores its value, not taken for a new key. An
  untied head was never scaled: its earlier value is today's."""
  from parallax_jax.train import run_record
  from parallax_jax.train.defaults import base_config

  old = base_config().to_dict()
  del old["model"]["tied_head_scale"]
  (tmp_path / "config.json").write_text(json.dumps({"config": old}, default=str))
  assert run_record.current_config(tmp_path)["model"]["tied_head_scale"] == "rsqrt_d"
  new = base_config()
  assert new.model.tied_head_scale == "one"
  with pytest.raises(
    run_record.ConfigMismatchError,
    match="model.tied_head_scale 'rsqrt_d' -> 'one'.*--config.model.tied_head_scale=rsqrt_d",
  ):
    run_record.check(tmp_path, new.to_dict())
  new.model.tied_head_scale = "rsqrt_d"  # the override the message names
  assert run_record.check(tmp_path, new.to_dict()) == {}
  untied = tmp_path / "untied"
  untied.mkdir()
  old["model"]["tie_embeddings"] = False
  (untied / "config.json").write_text(json.dumps({"config": old}, default=str))
  assert run_record.current_config(untied)["model"]["tied_head_scale"] == "one"


@pytest.mark.parametrize("cut", [0.5, "}"], ids=["halfway", "after_a_brace"])
def test_a_start_killed_mid_append_leaves_a_history_later_starts_can_read(tmp_path, cut):
  """A start killed while appending its history entry leaves a cut line (which may end in an
  inner "}"); it is skipped, and the next start's entry goes on a line of its own."""
  from parallax_jax.train import run_record
  from parallax_jax.train.defaults import base_config

  config = base_config().to_dict()
  run_record.record_start(tmp_path, config, {"devices": 1})
  run_record.record_resume(tmp_path, config, {"devices": 1}, {}, resumed_from_step=2)
  path = tmp_path / run_record.HISTORY
  line = path.read_text()
  end = len(line) // 2 if cut == 0.5 else line.index("}") + 1
  path.write_text(line + line[:end])  # a third start, killed mid-append
  assert [e["resumed_from_step"] for e in run_record.read_history(tmp_path)] == [2]
  config["train"]["steps"] = 7
  run_record.record_resume(tmp_path, config, {"devices": 1}, {}, resumed_from_step=4)
  assert [e["resumed_from_step"] for e in run_record.read_history(tmp_path)] == [2, 4]
  assert run_record.current_config(tmp_path)["train"]["steps"] == 7


def test_a_history_line_without_a_config_leaves_the_latest_one_that_has_one(tmp_path):
  """A history entry edited outside parallax-jax (no "config" key): the run's config is the
  latest entry's that has one, not a KeyError traceback."""
  from parallax_jax.train import run_record
  from parallax_jax.train.defaults import base_config

  config = base_config().to_dict()
  run_record.record_start(tmp_path, config, {"devices": 1})
  config["train"]["steps"] = 9
  run_record.record_resume(tmp_path, config, {"devices": 1}, {}, resumed_from_step=2)
  with open(tmp_path / run_record.HISTORY, "a") as f:
    f.write(json.dumps({"resumed_from_step": 5}) + "\n")
  assert run_record.current_config(tmp_path)["train"]["steps"] == 9


def test_a_run_recorded_before_the_corpus_pin_can_be_read_with_one(tmp_path):
  """``data.source_sha256`` came after runs were recorded: such a run's config takes the pin as
  an override (``eval``/``generate --workdir W --config.data.source_sha256=...``, the run's
  own config) instead of refusing it as an unknown key, and the pinned read is a safe change."""
  from parallax_jax.train import run_record
  from parallax_jax.train.config import apply_overrides
  from parallax_jax.train.defaults import base_config

  old = base_config().to_dict()
  del old["data"]["source_sha256"]
  (tmp_path / "config.json").write_text(json.dumps({"config": old}, default=str))
  cfg = apply_overrides(run_record.load_run_config(tmp_path), ["data.source_sha256=a55c363d"])
  assert cfg.data.source_sha256 == "a55c363d"
  changed = run_record.check(tmp_path, cfg.to_dict(), reading=True)
  assert changed == {"data.source_sha256": ("", "a55c363d")}


def test_a_damaged_record_costs_only_its_own_start_s_environment(tmp_path):
  """A damaged config.json (cut by a bad block) or a history line that is JSON but no entry:
  ``environments`` (read for every point of a sweep's table) gives None for that start instead
  of raising (the old code: JSONDecodeError for the record, AttributeError for the line)."""
  from parallax_jax.sweeps.report import _hardware
  from parallax_jax.train import run_record
  from parallax_jax.train.defaults import base_config

  config = base_config().to_dict()
  env = {"device_kind": "cpu", "device_count": 1}
  run_record.record_start(tmp_path, config, {"devices": 1, "environment": env})
  run_record.record_resume(tmp_path, config, {"environment": env}, {}, resumed_from_step=2)
  record = tmp_path / run_record.CONFIG
  record.write_text(record.read_text()[:40])
  with open(tmp_path / run_record.HISTORY, "a") as f:
    f.write("7\n")
  assert run_record.environments(tmp_path) == [None, env]
  assert [e["resumed_from_step"] for e in run_record.read_history(tmp_path)] == [2]
  _hardware(tmp_path)  # the sweep table's column: no exception


def test_a_fixed_key_the_record_lacks_is_compared_with_its_default(tmp_path):
  """A run recorded before ``model.input_dim`` existed ran at its default, 0: resuming it with
  another value is refused like any fixed key (it was taken for a new key and passed, neither
  checked nor recorded); a safe one is recorded against its default."""
  from parallax_jax.train import run_record
  from parallax_jax.train.defaults import base_config

  old = base_config().to_dict()
  del old["model"]["input_dim"], old["model"]["logits_chunk"]
  (tmp_path / "config.json").write_text(json.dumps({"config": old}, default=str))
  new = base_config()
  assert run_record.check(tmp_path, new.to_dict()) == {}
  new.model.input_dim = 9
  with pytest.raises(run_record.ConfigMismatchError, match="model.input_dim 0 -> 9"):
    run_record.check(tmp_path, new.to_dict())
  new.model.input_dim, new.model.logits_chunk = 0, 64
  assert run_record.check(tmp_path, new.to_dict()) == {"model.logits_chunk": (0, 64)}
