"""``train.compilation_cache_dir``: a training process writes its compiled executables there, and
the next process of the same computation loads every one of them instead of compiling (JAX's
persistent cache). Both runs are subprocesses: this process's in-memory caches (earlier tests
compiled the same tiny model) must not decide what reaches the disk."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
from train_configs import ROOT, SMALL_MODEL, TINY

from parallax_jax.train.compile_cache import use_compilation_cache


def test_empty_setting_leaves_jax_alone():
  before = jax.config.jax_compilation_cache_dir
  assert use_compilation_cache("") == before and jax.config.jax_compilation_cache_dir == before


def _train(workdir, cache):
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cache every compile
  cmd = [sys.executable, "-m", "parallax_jax.cli", "train", "--config", str(TINY)]
  cmd += ["--workdir", str(workdir), *SMALL_MODEL, "--config.train.steps=2"]
  cmd += [f"--config.train.compilation_cache_dir={cache}"]
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  return {p.relative_to(cache) for p in cache.rglob("*") if p.is_file()}


def test_the_next_process_loads_every_compiled_step(tmp_path):
  cache = tmp_path / "xla cache"
  first = _train(tmp_path / "a", cache)
  assert first, "nothing was written to the cache"
  # a miss would compile and write a new entry; every compile of the second process hits
  assert _train(tmp_path / "b", cache) == first


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path):
  import pytest

  from parallax_jax.errors import UserError

  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="compilation_cache_dir=.*cannot create the directory"):
    use_compilation_cache(str(tmp_path / "file" / "cache"))


def test_a_reader_adds_nothing_to_a_cache_inside_the_run(tmp_path):
  """A run whose compilation cache lies inside its workdir: eval (a reader, which compiles an
  eval step the training process may not have cached) writes nothing into the run."""
  run = tmp_path / "run"
  _train(run, run / "jaxcache")
  before = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*") if p.is_file())
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  cmd = [sys.executable, "-m", "parallax_jax.cli", "eval", "--workdir", str(run)]
  cmd += ["--config.train.eval_batches=3"]  # another eval shape than training's: a new compile
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  after = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*") if p.is_file())
  assert after == before
