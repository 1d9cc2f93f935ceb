"""The command line: one-line user errors (exit 2), --debug, overrides, `config`, --dry-run."""

import re
from pathlib import Path

import jax
import pytest
from cli_runner import one_line_error, run_cli

from parallax_jax import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.mark.parametrize(
  "override,match",
  [
    ("--config.nonexistent=1", "unknown config key 'nonexistent'"),
    ("--config.train.stepz=1", "unknown config key 'train.stepz'"),
    ("--config.train.steps=many", "config.train.steps: expected an int, got 'many'"),
    ("--config.model.num_kv_heads=3", "model.num_heads"),
    ("--config.data.source=/nonexistent/corpus.txt", "'/nonexistent/corpus.txt': no such file"),
    ("--config.data.tokenizer=/nonexistent/tok.json", "tokenizer: .* not found"),
    ("--config.data.source=builtn", "no such file .* named source: builtin, python_corpus"),
    ("--config.model.attention_impl=nonsense", "attention='parallax' takes None .* 'nonsense'"),
    ("--config.model.attention_impl=cudnn", "attention='parallax' takes None .* 'cudnn'"),
    # values that used to pass validation and then crash, diverge or do nothing in training
    ("--config.optimizer.adam_learning_rate=abc", "optimizer.adam_learning_rate must be"),
    ("--config.model.rope_theta=0", "model.rope_theta must be a finite number > 0"),
    ("--config.model.window_size=64.5", "model.window_size must be an int >= 1 or None"),
    ("--config.train.eval_batches=0", "set train.eval_every=0 to turn evals off"),
    ("--config.train.eval_every=None", "train.eval_every must be an int >= 0, got None"),
    ("--config.distributed.initialize=maybe", "distributed.initialize must be one of"),
    ("--config.sharding.rules.dp=foo", "config.sharding.rules.dp: it is a section"),
    (f"--config.train.compilation_cache_dir={TINY}", "compilation_cache_dir=.* existing file"),
    # an empty path (an unset shell variable) trained from scratch, as None does
    ("--config.checkpoint.init_from=", "init_from must be a checkpoint path or None, got ''"),
    pytest.param(
      "--config.model.attention_impl=pallas_mosaic_gpu",
      "attention_impl='pallas_mosaic_gpu' runs on gpu, not on this machine's 'cpu' backend",
      marks=pytest.mark.skipif(jax.default_backend() != "cpu", reason="names the CPU backend"),
    ),
  ],
)
def test_user_errors_are_one_line_and_leave_no_workdir(tmp_path, capsys, override, match):
  workdir = tmp_path / "w"
  code, _, err = run_cli(capsys, "train", "--config", TINY, "--workdir", str(workdir), override)
  assert code == 2 and re.search(match, one_line_error(err))
  assert not workdir.exists()


def test_empty_corpus_and_missing_config_file(tmp_path, capsys):
  (tmp_path / "blank.txt").write_text("  \n\n")
  workdir = tmp_path / "w"
  source = f"--config.data.source={tmp_path / 'blank.txt'}"
  code, _, err = run_cli(capsys, "train", "--config", TINY, "--workdir", str(workdir), source)
  assert code == 2 and "no documents" in one_line_error(err)
  code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "nope.py"), "--workdir", "x")
  assert code == 2 and "does not exist" in one_line_error(err)
  assert not workdir.exists() and not Path("x").exists()


@pytest.mark.parametrize(
  "overrides,match",
  [
    (["attention=softmax", "attention_impl=pallas_gpu"], "attention='softmax' takes None"),
    (["attention=lla", "attention_impl=xla"], "attention='lla' takes None only, got 'xla'"),
    (["attention=softmax", "decode_impl=pallas_gpu"], "model.decode_impl: attention='softmax'"),
  ],
)
def test_paths_are_checked_against_the_attention_kind(tmp_path, capsys, overrides, match):
  workdir = tmp_path / "w"
  flags = [f"--config.model.{o}" for o in overrides]
  code, _, err = run_cli(capsys, "train", "--config", TINY, "--workdir", str(workdir), *flags)
  assert code == 2 and re.search(match, one_line_error(err))
  assert not workdir.exists()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="names the CPU backend")
def test_dry_run_refuses_a_path_it_cannot_compile_but_config_accepts_it(capsys):
  """``config`` checks the config for any machine; the dry run compiles here."""
  gpu = "--config.model.attention_impl=pallas_gpu"
  code, out, err = run_cli(capsys, "train", "--dry-run", "--config", TINY, gpu)
  assert code == 2 and "runs on gpu" in one_line_error(err) and out == ""
  code, out, _ = run_cli(capsys, "train", "--dry-run", "--no-compile", "--config", TINY, gpu)
  assert code == 0 and "valid" in out
  code, out, _ = run_cli(capsys, "config", "--config", TINY, gpu)
  assert code == 0


def test_a_config_file_that_fails_to_import_is_one_line(tmp_path, capsys):
  for text, match in [
    ("def get_config(:\n", r"failed to import \(line 1\): SyntaxError"),
    ("import no_such_module_here\n", "failed to import: ModuleNotFoundError"),
    ("def get_config():\n  return 1 / 0\n", r"get_config\(\) raised ZeroDivisionError"),
    ("def get_config():\n  return {'model': {}}\n", "must return an .*ConfigDict.*got dict"),
    ("def get_config():\n  return None\n", "must return an .*ConfigDict.*got NoneType"),
  ]:
    path = tmp_path / "bad.py"
    path.write_text(text)
    code, out, err = run_cli(capsys, "config", "--config", str(path))
    assert code == 2 and out == "" and re.search(match, one_line_error(err)), err
  code, out, err = run_cli(capsys, "config", "--config", str(ROOT / "README.md"))
  assert code == 2 and out == "" and "is not a Python file" in one_line_error(err)
  # a directory (e.g. configs/ without the file's name) does exist: not "does not exist"
  code, out, err = run_cli(capsys, "config", "--config", str(ROOT / "configs"))
  assert code == 2 and out == "" and "is a directory; give a .py file" in one_line_error(err)


def test_a_config_without_a_section_takes_its_defaults(tmp_path, capsys):
  """As ``resolve`` does, ``distributed`` included (read first, to start jax.distributed)."""
  path = tmp_path / "partial.py"
  path.write_text(
    "from parallax_jax.train.defaults import base_config\n\n\ndef get_config():\n"
    "  cfg = base_config()\n  del cfg['distributed']\n  return cfg\n"
  )
  code, out, err = run_cli(capsys, "config", "--config", str(path))
  assert code == 0 and "valid for" in out, err


def test_several_processes_asked_for_but_none_started_is_one_line(tmp_path, capsys, monkeypatch):
  """Not a silent single-process run (``distributed.initialize='auto'`` without a coordinator)."""
  for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
  workdir = tmp_path / "w"
  for override in ("--config.distributed.num_processes=2", "--config.distributed.process_id=5"):
    code, _, err = run_cli(capsys, "train", "--config", TINY, "--workdir", str(workdir), override)
    assert code == 2 and "asks for several processes" in one_line_error(err)
    assert "distributed.coordinator_address" in err and not workdir.exists()


def test_eval_refuses_no_eval_batches(tmp_path, capsys):
  """Instead of printing only ``{"step": N}``."""
  workdir = str(tmp_path / "w")
  code, out, err = run_cli(
    capsys, "eval", "--config", TINY, "--workdir", workdir, "--config.train.eval_batches=0"
  )
  assert code == 2 and out == "" and "train.eval_batches" in one_line_error(err)
  code, out, err = run_cli(
    capsys,
    "eval",
    "--config",
    TINY,
    "--workdir",
    workdir,
    "--config.train.eval_every=0",
    "--config.train.eval_batches=0",
  )
  assert code == 2 and out == "" and "eval_batches=N with N >= 1" in one_line_error(err)
  # A run that held out nothing: not "raise data.eval_fraction", a key the run cannot change.
  code, out, err = run_cli(
    capsys, "eval", "--config", TINY, "--workdir", workdir, "--config.data.eval_fraction=0.0"
  )
  assert code == 2 and out == "" and "no held-out split to evaluate" in one_line_error(err)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
  argv = ["train", "--config", TINY, "--workdir", str(tmp_path / "w"), "--config.nonexistent=1"]
  with pytest.raises(ValueError, match="unknown config key"):
    cli.main(["--debug", *argv])
  with pytest.raises(ValueError, match="unknown config key"):
    cli.main([*argv, "--debug"])
  monkeypatch.setenv("PARALLAX_JAX_DEBUG", "1")
  with pytest.raises(ValueError, match="unknown config key"):
    cli.main(argv)
  monkeypatch.delenv("PARALLAX_JAX_DEBUG")

  def bug(*_):
    raise ValueError("an internal bug")

  monkeypatch.setattr("parallax_jax.train.config.load_config", bug)
  with pytest.raises(ValueError, match="an internal bug"):  # not a UserError: not caught
    cli.main(argv[:-1])


def test_space_form_overrides():
  overrides, rest = cli.split_overrides(
    ["train", "--config.train.steps", "5", "--config.mesh.data", "-1", "--config.x=1", "--debug"]
  )
  assert overrides == ["--config.train.steps=5", "--config.mesh.data=-1", "--config.x=1"]
  assert rest == ["train", "--debug"]


def test_config_prints_every_key_with_its_meaning(capsys):
  from parallax_jax.train.config_keys import KEYS, flatten
  from parallax_jax.train.defaults import base_config

  code, out, _ = run_cli(capsys, "config", "--config", TINY, "--config.train.steps", "7")
  assert code == 0
  rows = {line.split()[0]: line for line in out.splitlines()}
  for key in flatten(base_config().to_dict()):
    if key != "sharding.rules":
      assert KEYS[key][1] in rows[key], key
  assert rows["train.steps"].split()[1:3] == ["7", "safe"]
  assert rows["model.d_model"].split()[1:3] == ["128", "fixed"]
  assert f"valid for {jax.device_count()} device(s)" in out
  code, out, err = run_cli(capsys, "config", "--config", TINY, "--config.train.steps", "x")
  assert code == 2 and "expected an int" in one_line_error(err)
  code, out, err = run_cli(capsys, "config", "--config", TINY, "--config.train.steps", "0")
  assert code == 2 and "train.steps" in one_line_error(err) and out == ""  # no table first


def test_train_dry_run_reports_and_writes_nothing(tmp_path, capsys):
  from parallax_jax.train.config import load_config, resolve

  workdir = tmp_path / "w"
  code, out, _ = run_cli(capsys, "train", "--dry-run", "--config", TINY, "--workdir", str(workdir))
  assert code == 0 and not workdir.exists()
  m = resolve(load_config(TINY)).model
  assert f"parameters: {m.num_params():,}" in out
  assert f"model FLOPs per token (training, 3x forward): {m.flops_per_token(128):.4g}" in out
  assert f"mesh: data={jax.device_count()} x fsdp=1 x tensor=1 x sequence=1" in out
  # Strategy dp replicates the float32 params on every device.
  state = re.search(r"train state from its shardings: params (\S+) MiB", out)
  assert abs(float(state.group(1)) - m.num_params() * 4 / 2**20) < 0.01
  assert re.search(r"compiled train step .*: [\d.]+ MiB", out)
  assert f"workdir: {workdir} holds no run" in out


def test_no_compile_without_dry_run_is_refused_before_training(tmp_path, capsys):
  """``--no-compile`` only shapes the dry run: alone, it trained (and compiled) as if absent."""
  workdir = tmp_path / "w"
  argv = ["train", "--no-compile", "--config", TINY, "--workdir", str(workdir)]
  code, out, err = run_cli(capsys, *argv, "--config.train.steps=1")
  line = one_line_error(err)
  assert code == 2 and out == "" and "--no-compile applies only with --dry-run" in line
  assert not workdir.exists()


def test_config_with_a_trained_tokenizer_leaves_no_file(tmp_path, capsys, monkeypatch):
  """``config`` (and a dry run without --workdir) trains the BPE into a private temporary
  file, since worker processes reload it from there: it goes with the tokenizer."""
  import gc
  import tempfile

  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  code, out, _ = run_cli(
    capsys, "config", "--config", TINY, "--config.data.tokenizer=train:bpe:300"
  )
  assert code == 0 and "nothing compiled or written" in out and "parallax_tokenizer_" in out
  gc.collect()
  assert list(tmp_path.iterdir()) == []


def test_train_help_points_to_config_and_dry_run(capsys):
  code, out, _ = run_cli(capsys, "train", "--help")
  assert code == 0
  assert "parallax-jax config --config C" in out and "--dry-run" in out
  assert "--config.SECTION.KEY VALUE" in out


def test_every_subcommand_flag_says_what_it_does():
  """``sweep --help`` listed --workdir without a word on it."""
  import argparse

  (subparsers,) = [
    a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
  ]
  silent = [
    f"{name} {'/'.join(action.option_strings) or action.dest}"
    for name, sub in subparsers.choices.items()
    for action in sub._actions
    if not action.help
  ]
  assert silent == []


def test_one_document_corpus_advice(tmp_path, capsys):
  """Eval holds out whole documents and training keeps one: the error says so at the start
  (not at the first eval), and eval off with eval_fraction=0 trains."""
  (tmp_path / "one.txt").write_text("just one line of text\n")
  base = ["train", "--config", TINY, f"--config.data.source={tmp_path / 'one.txt'}"]
  base += ["--config.train.steps=2", "--config.train.progress_bar=false"]
  workdir = str(tmp_path / "w")
  code, _, err = run_cli(capsys, *base, "--workdir", workdir)
  line = one_line_error(err)
  assert code == 2 and "the source has 1 document:" in line and "train.eval_every=0" in line
  assert "positive eval_fraction" not in line  # the old advice: 0.01 is positive already
  code, _, err = run_cli(capsys, *base, "--workdir", workdir, "--config.data.eval_fraction=0.0")
  line = one_line_error(err)
  assert code == 2 and "data.eval_fraction=0 holds out no document" in line
  assert not Path(workdir).exists()
  code, out, _ = run_cli(
    capsys,
    *base,
    "--workdir",
    workdir,
    "--config.data.eval_fraction=0.0",
    "--config.train.eval_every=0",
    "--config.checkpoint.async_save=false",
  )
  assert code == 0 and "final_step=2" in out


def test_one_document_is_trained_on_whatever_the_eval_fraction():
  from parallax_jax.data.pipeline import split_documents

  for fraction in (0.0, 0.01, 0.5, 0.99):
    train, held_out = split_documents(1, fraction)
    assert train.tolist() == [0] and held_out.tolist() == [], fraction


@pytest.mark.parametrize(
  "argv,match",
  [
    (["--heads", "3", "--kv-heads", "2"], "--heads 3 must be a multiple of --kv-heads 2"),
    (["--length", "0"], "--length must be >= 1, got 0"),
    (["--implementation", "nonsense"], "--implementation must be one of reference, xla"),
    pytest.param(
      ["--implementation", "pallas_gpu"],
      "--implementation pallas_gpu runs on gpu, not on this machine's 'cpu'",
      marks=pytest.mark.skipif(jax.default_backend() != "cpu", reason="names the CPU backend"),
    ),
  ],
)
def test_demo_mistakes_are_one_line(capsys, argv, match):
  code, out, err = run_cli(capsys, "demo", *argv)
  assert code == 2 and out == "" and re.search(match, one_line_error(err))


def test_demo_runs_the_op(capsys):
  argv = ["demo", "--batch", "1", "--length", "16", "--implementation", "xla"]
  code, out, _ = run_cli(capsys, *argv)
  assert code == 0 and out.rstrip().endswith("OK") and "max rel err" in out


@pytest.mark.parametrize(
  "argv,match",
  [
    (["--strategies", "dp,zero3"], r"--strategies: unknown \['zero3'\]; known: dp, fsdp"),
    # 0 timed steps printed made-up timings; -1 failed with an IndexError, leaving the workdir.
    (["--steps", "0"], r"--steps must be >= 1 \(timed steps after the first\), got 0"),
    (["--steps", "-1"], "--steps must be >= 1 .*got -1"),
    # An empty list ran every strategy on all devices, as if --devices was not given.
    (["--devices", ""], "--devices must be a comma list of integers, got ''"),
  ],
  ids=["strategy", "steps-0", "steps-negative", "devices-empty"],
)
def test_compare_sharding_refuses_a_wrong_flag_before_running(tmp_path, capsys, argv, match):
  workdir = tmp_path / "cmp"
  base = ["compare-sharding", "--config", TINY, "--workdir", str(workdir), "--strategies", "dp"]
  code, out, err = run_cli(capsys, *base, *argv)  # the last --strategies counts
  assert code == 2 and out == "" and re.search(match, one_line_error(err))
  assert not workdir.exists()


@pytest.mark.parametrize(
  "present, match",
  [
    ("config.json", "holds a training run \\(config.json\\); compare-sharding writes its results"),
    ("sharding.csv", "already holds sharding.csv from an earlier comparison; pass a new folder"),
    ("sweep.json", "holds a sweep \\(sweep.json\\); compare-sharding writes its results"),
  ],
)
def test_compare_sharding_refuses_a_run_or_an_earlier_comparison(tmp_path, capsys, present, match):
  """compare-sharding wrote sharding.csv/png into whatever --workdir it got: into a training
  run's folder (which only train writes), a sweep's folder (which only sweep writes), or over an
  earlier comparison's results."""
  workdir = tmp_path / "cmp"
  workdir.mkdir()
  (workdir / present).write_text("kept\n")
  before = sorted(p.name for p in workdir.iterdir())
  argv = ["compare-sharding", "--config", TINY, "--workdir", str(workdir), "--strategies", "dp"]
  code, out, err = run_cli(capsys, *argv)
  assert code == 2 and re.search(match, one_line_error(err)), err
  assert sorted(p.name for p in workdir.iterdir()) == before
  assert (workdir / present).read_text() == "kept\n"


@pytest.mark.parametrize("text", ['{"config": ', "[1, 2]\n", '{"environment": {}}\n'])
def test_a_damaged_run_record_is_one_line_naming_it(tmp_path, capsys, text):
  """A config.json that is not the record ``train`` writes (cut, or edited by hand) crashed
  every command that reads the run with a JSONDecodeError / TypeError traceback."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text(text)
  before = sorted((p.name, p.stat().st_mtime_ns) for p in workdir.iterdir())
  for argv in (
    ["eval"],
    ["generate", "--prompt", "x"],
    ["export-hf", "--out", str(tmp_path / "hf")],
    ["train", "--config", TINY],
  ):
    code, out, err = run_cli(capsys, *argv, "--workdir", str(workdir))
    line = one_line_error(err)
    assert code == 2 and out == "" and f"{workdir / 'config.json'}' is not" in line, argv
    assert "restore the file" in line
  assert sorted((p.name, p.stat().st_mtime_ns) for p in workdir.iterdir()) == before
  assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
  "argv",
  [
    ["eval", "--workdir", "w", "--config"],  # ran the run's own config, as if not given
    ["import-hf", "--from", "hf", "--workdir", "w", "--config"],  # the defaults, as if not given
    ["train", "--workdir", "w", "--config"],  # "config file '.' does not exist"
    ["config", "--config"],
    ["sweep", "--workdir", "w", "--config"],
    ["compare-sharding", "--workdir", "w", "--config"],
    ["sweep", "--config", TINY, "--workdir", "w", "--collect"],  # "--collect .: no points/"
    ["import-hf", "--workdir", "w", "--from"],  # "--from '.' has no config.json"
    ["generate", "--workdir", "w", "--prompts-file"],
  ],
  ids=lambda argv: f"{argv[0]}{argv[-1]}",
)
def test_an_empty_input_path_is_refused_naming_the_argument(tmp_path, capsys, monkeypatch, argv):
  """An empty path (an unset shell variable) was read as the current directory, or, for an
  optional --config, as no config at all."""
  monkeypatch.chdir(tmp_path)
  code, out, err = run_cli(capsys, *argv, "")
  assert code == 2 and out == "" and "Traceback" not in err
  assert f"argument {argv[-1]}: '' is an empty path; name one" in err
  assert list(tmp_path.iterdir()) == []


def test_a_dry_run_checks_init_from_as_train_does(tmp_path, capsys):
  """A dry run said 'valid' for a checkpoint.init_from that train refuses before starting (a
  missing path here; not a params-only checkpoint or another model's params alike)."""
  missing = tmp_path / "no_params"
  argv = ["train", "--dry-run", "--no-compile", "--config", TINY]
  code, out, err = run_cli(capsys, *argv, f"--config.checkpoint.init_from={missing}")
  assert code == 2 and out == ""
  assert f"checkpoint.init_from={str(missing)!r} does not exist" in one_line_error(err)
