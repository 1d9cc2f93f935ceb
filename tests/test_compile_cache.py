"""``train.compilation_cache_dir``: a training process writes its compiled executables there, and
a restarted one (in-memory caches cleared) loads them instead of compiling (JAX's persistent
cache)."""

from __future__ import annotations

import jax
import pytest
from cli_runner import run_cli
from train_configs import SMALL_MODEL, TINY

from parallax_jax.train.compile_cache import use_compilation_cache


@pytest.fixture
def restore_jax_cache():
  old_dir = jax.config.jax_compilation_cache_dir
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  yield
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update("jax_compilation_cache_dir", old_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
  compilation_cache.reset_cache()


def test_empty_setting_leaves_jax_alone(restore_jax_cache):
  before = jax.config.jax_compilation_cache_dir
  assert use_compilation_cache("") == before and jax.config.jax_compilation_cache_dir == before


def test_a_restarted_run_loads_its_compiled_steps(tmp_path, capsys, restore_jax_cache):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache every compile
  cache = tmp_path / "xla cache"
  run = ["train", "--config", str(TINY), "--workdir", str(tmp_path / "run"), *SMALL_MODEL]
  run += [f"--config.train.compilation_cache_dir={cache}"]
  code, _, err = run_cli(capsys, *run, "--config.train.steps=2")
  assert code == 0, err
  assert jax.config.jax_compilation_cache_dir == str(cache)
  assert [p for p in cache.rglob("*") if p.is_file()], "nothing was written to the cache"

  hits = []
  listener = lambda event, **kw: hits.append(event) if "cache_hits" in event else None  # noqa: E731
  jax.monitoring.register_event_listener(listener)
  try:
    jax.clear_caches()  # as a new process: only the directory remembers
    code, _, err = run_cli(capsys, *run, "--config.train.steps=4")  # resumes at step 2
    assert code == 0, err
  finally:
    from jax._src import monitoring

    monitoring.unregister_event_listener(listener)
  assert hits, "the resumed run compiled everything again"
