"""The experiments that read a config file: a missing one (or a bad override) is one line naming
``--config`` (exit 2), before anything is built or written."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
  "bench",
  ["bench_train", "bench_generate", "lowering_cost", "check_model_grads", "multi_gpu_check"],
)
def test_a_missing_config_is_one_line_and_writes_nothing(tmp_path, capsys, bench):
  module = importlib.import_module(f"experiments.{bench}")
  missing, out = tmp_path / "no_such_config.py", tmp_path / "out"
  with pytest.raises(SystemExit) as exit_:
    module.main(["--config", str(missing), "--out-dir", str(out)])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err
  assert f"config file {str(missing)!r} does not exist" in err.strip().splitlines()[-1]
  assert not out.exists()


def test_a_bad_override_is_one_line():
  from experiments import lowering_cost

  with pytest.raises(SystemExit) as exit_:
    lowering_cost.main(["--config", "configs/tiny.py", "--config.model.no_such_key=1"])
  assert exit_.value.code == 2


def _one_line_error(tmp_path, capsys, bench: str, argv: list[str], flag: str) -> str:
  """Runs ``experiments.<bench>`` (on configs/tiny.py unless ``--smoke``): exit 2, no traceback,
  nothing written, and a last line naming ``flag``; returns that line."""
  module = importlib.import_module(f"experiments.{bench}")
  out = tmp_path / "out"
  config = [] if "--smoke" in argv else ["--config", "configs/tiny.py"]
  with pytest.raises(SystemExit) as exit_:
    module.main([*config, *argv, "--out-dir", str(out)])
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert exit_.value.code == 2 and "Traceback" not in err and not out.exists()
  assert f"error: {flag}: " in last, last
  return last


@pytest.mark.parametrize(
  ("bench", "argv", "flag"),
  [
    ("bench_generate", ["--smoke", "--attention", "parallax,foo"], "--attention"),
    ("lowering_cost", ["--attention", "foo"], "--attention"),
    ("lowering_cost", ["--implementation", "foo"], "--implementation"),
    ("check_model_grads", ["--impls", "default,foo"], "--impls"),
    ("check_model_grads", ["--dtypes", "foo"], "--dtypes"),
    ("bench_train", ["--attention", "softmax,parallax@foo"], "--attention"),
    ("bench_train", ["--remat", "foo"], "--remat"),
    ("lowering_cost", ["--platform", "cdua"], "--platform"),
  ],
)
def test_an_unknown_choice_is_one_line_naming_the_choices(tmp_path, capsys, bench, argv, flag):
  """An unknown attention kind, implementation, dtype or remat policy was a ValueError traceback
  (check_model_grads' after compiling the reference); now one line naming the flag and the
  valid choices (exit 2), before anything is written."""
  assert "choose from" in _one_line_error(tmp_path, capsys, bench, argv, flag)


@pytest.mark.parametrize(
  ("bench", "argv", "flag"),
  [
    ("bench_train", ["--steps", "-1"], "--steps"),
    ("bench_train", ["--seq-len", "0"], "--seq-len"),
    ("bench_train", ["--batches", "4,0"], "--batches"),
    ("bench_train", ["--warmup", "-1"], "--warmup"),
    ("lowering_cost", ["--seq-len", "0"], "--seq-len"),
    ("lowering_cost", ["--batch", "-2"], "--batch"),
    ("lowering_cost", ["--layers", "2,x"], "--layers"),
    ("check_model_grads", ["--batch", "0"], "--batch"),
    ("check_model_grads", ["--seq-len", "-8"], "--seq-len"),
    ("check_model_grads", ["--seed", "-1"], "--seed"),  # numpy's generator raised, after the config
    ("bench_generate", ["--smoke", "--new-tokens", "0"], "--new-tokens"),
    ("bench_generate", ["--smoke", "--prompt-lens", "-16"], "--prompt-lens"),
    ("multi_gpu_check", ["--steps", "0"], "--steps"),
    ("multi_gpu_check", ["--equal-len", "-64"], "--equal-len"),
    ("multi_gpu_check", ["--lengths", "64,0"], "--lengths"),
  ],
)
def test_a_non_positive_size_is_one_line_and_writes_nothing(tmp_path, capsys, bench, argv, flag):
  """A size below its minimum was a traceback, was ignored (--seq-len 0 in check_model_grads:
  the config's), or ran (bench_train --steps -1 wrote a result file of error rows, exit 0);
  now one line naming the flag (exit 2) before anything is built or written."""
  _one_line_error(tmp_path, capsys, bench, argv, flag)
