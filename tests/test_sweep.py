"""Sweeps: config expansion (grid, random), resume, failing points, results, the smoke sweep."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from cli_runner import script_error
from scipy import stats

from parallax_jax.sweeps.config import build_sweep, cli_value, load_sweep, point_name
from parallax_jax.sweeps.runner import (
  earlier_attempts,
  error_summary,
  is_finished,
  last_step,
  run_sweep,
  slot_environments,
)
from parallax_jax.train.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
FAST = {  # a few-second run per point on CPU (8 fake devices: batch divisible by 8)
  "model.d_model": 32,
  "model.num_layers": 1,
  "model.head_dim": 8,
  "model.mlp_dim": 64,
  "train.steps": 3,
  "train.batch_size": 8,
  "train.seq_len": 16,
  "train.log_every": 1,
  "train.eval_every": 3,
  "train.eval_batches": 1,
  "checkpoint.every_steps": 3,
  "checkpoint.async_save": False,
  "optimizer.warmup_steps": 1,
}


def test_grid_expands_every_combination_with_stable_names():
  sweep = build_sweep(
    {
      "base": TINY,
      "axes": {"model.attention": ["parallax", "softmax"], "optimizer.learning_rate": [1e-3, 3e-3]},
      "overrides": {"train.steps": 7},
    }
  )
  assert [p.name for p in sweep.points] == [
    "attention=parallax,learning_rate=0.001",
    "attention=parallax,learning_rate=0.003",
    "attention=softmax,learning_rate=0.001",
    "attention=softmax,learning_rate=0.003",
  ]
  p = sweep.points[2]
  assert p.values == {"model.attention": "softmax", "optimizer.learning_rate": 1e-3}
  assert p.config.model.attention == "softmax" and p.config.optimizer.learning_rate == 1e-3
  assert p.steps == 7 and p.overrides[0] == "train.steps=7"
  assert sweep.points[0].fingerprint() != sweep.points[1].fingerprint()


def test_a_key_added_later_at_its_earlier_value_keeps_the_fingerprint():
  """A point recorded before ``model.tied_head_scale`` existed (its config lacks the key) and
  the same point now with the key at "rsqrt_d" (what the code did before) share a fingerprint;
  today's default ("one") is another config. An untied head was never scaled: its point keeps
  its fingerprint at today's default."""
  import hashlib

  def recorded(point):  # the fingerprint of the point's config without the key
    before = point.config.to_dict()
    del before["model"]["tied_head_scale"]
    for key in ("microbatches", "profile_steps", "profile_skip_steps"):  # added later still
      del before["train"][key]
    del before["optimizer"]["muon_adam_decay"]  # added later still (2026-12-05)
    del before["data"]["source_sha256"]  # a check only: never in a fingerprint (session 30)
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]

  spec = {"base": TINY, "axes": {"train.steps": [3]}}
  (scaled,) = build_sweep({**spec, "overrides": {"model.tied_head_scale": "rsqrt_d"}}).points
  assert scaled.fingerprint() == recorded(scaled)
  (default,) = build_sweep(spec).points
  assert default.config.model.tied_head_scale == "one"
  assert default.fingerprint() != scaled.fingerprint()
  assert default.fingerprint() != recorded(default)
  (untied,) = build_sweep({**spec, "overrides": {"model.tie_embeddings": False}}).points
  assert untied.fingerprint() == recorded(untied)
  # A Muon point recorded before optimizer.muon_adam_decay trained as "all" (optax's own decay).
  muon = {"model.tie_embeddings": False, "optimizer.name": "muon"}
  (muon_all,) = build_sweep(
    {**spec, "overrides": {**muon, "optimizer.muon_adam_decay": "all"}}
  ).points
  assert muon_all.fingerprint() == recorded(muon_all)
  (muon_now,) = build_sweep({**spec, "overrides": muon}).points
  assert muon_now.fingerprint() != recorded(muon_now)
  # Session 24's train keys: at their earlier values (one piece, no trace) the point is the one
  # recorded without them; another value is another point.
  (pieces,) = build_sweep(
    {**spec, "overrides": {"model.tie_embeddings": False, "train.microbatches": 2}}
  ).points
  assert pieces.fingerprint() != untied.fingerprint()


def test_nested_axes_and_configdict_spec():
  spec = ml_collections.ConfigDict()
  spec.base = "configs/tiny.py"  # relative to the repository root
  spec.axes = {"model": {"num_layers": [1, 2]}, "train": {"seed": [0]}}
  sweep = build_sweep(spec)
  assert [p.name for p in sweep.points] == ["num_layers=1,seed=0", "num_layers=2,seed=0"]


def test_variants_are_named_override_bundles_on_their_own_axis():
  sweep = build_sweep(
    {
      "base": TINY,
      "variants": {
        "parallax": {},
        "softmax_wide": {"model.attention": "softmax", "model.mlp_dim": 427},
      },
      "axes": {"optimizer.name": ["adamw", "muon"]},
      "overrides": {"model.mlp_dim": 100},
    }
  )
  assert [p.name for p in sweep.points] == [
    "variant=parallax,name=adamw",
    "variant=parallax,name=muon",
    "variant=softmax_wide,name=adamw",
    "variant=softmax_wide,name=muon",
  ]
  wide = sweep.points[3].config
  assert wide.model.attention == "softmax" and wide.model.mlp_dim == 427  # beats overrides
  assert wide.optimizer.name == "muon"
  assert sweep.points[0].config.model.mlp_dim == 100
  with pytest.raises(ValueError, match="unknown config key 'model.widht'"):
    build_sweep({"base": TINY, "variants": {"a": {"model.widht": 1}}})


def test_exclude_drops_matching_grid_points():
  spec = {
    "base": TINY,
    "axes": {"model.attention": ["parallax", "softmax", "lla"], "train.seq_len": [16, 32]},
    "exclude": [{"model.attention": "lla", "train.seq_len": 32}],
  }
  names = [p.name for p in build_sweep(spec).points]
  assert len(names) == 5 and "attention=lla,seq_len=16" in names
  assert "attention=lla,seq_len=32" not in names
  with pytest.raises(ValueError, match="sweep.exclude"):
    build_sweep({**spec, "exclude": [{"model.attention": "linear"}]})
  with pytest.raises(ValueError, match="sweep.exclude works with mode='grid'"):
    build_sweep({**spec, "mode": "random", "seed": 0, "count": 2})


def test_random_mode_draws_distinct_points_reproducibly():
  spec = {
    "base": TINY,
    "mode": "random",
    "seed": 3,
    "count": 4,
    "axes": {"train.seed": [0, 1, 2], "optimizer.learning_rate": [1e-3, 2e-3, 4e-3]},
  }
  names = [p.name for p in build_sweep(spec).points]
  assert len(set(names)) == 4 and names == [p.name for p in build_sweep(spec).points]
  assert names != [p.name for p in build_sweep({**spec, "seed": 4}).points]
  # A larger count keeps the smaller one's points (first, in order): raising count adds runs
  # and the finished ones are reused, instead of drawing a new set.
  for seed in range(5):
    drawn = {
      c: [p.name for p in build_sweep({**spec, "seed": seed, "count": c}).points] for c in (2, 4, 9)
    }
    assert drawn[9][:4] == drawn[4] and drawn[4][:2] == drawn[2] and len(set(drawn[9])) == 9
  with pytest.raises(ValueError, match="count=10 exceeds the 9"):
    build_sweep({**spec, "count": 10})
  with pytest.raises(ValueError, match="sweep.count"):
    build_sweep({**spec, "count": None})


def test_bad_sweep_configs_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown config key 'model.atention'"):
    build_sweep({"base": TINY, "axes": {"model.atention": ["softmax"]}})
  with pytest.raises(ValueError, match="sweep.mode"):
    build_sweep({"base": TINY, "mode": "bayes"})
  with pytest.raises(ValueError, match="unknown sweep config keys"):
    build_sweep({"base": TINY, "axis": {}})
  with pytest.raises(ValueError, match=r"sweep.axes\['train.seed'\]"):
    build_sweep({"base": TINY, "axes": {"train.seed": 3}})
  with pytest.raises(FileNotFoundError, match="sweep.base"):
    build_sweep({"base": "configs/nope.py"})
  with pytest.raises(ValueError, match="sweep.metric='eval_los' is not a column.*eval_loss"):
    build_sweep({"base": TINY, "metric": "eval_los"})
  with pytest.raises(ValueError, match="eval_mse_baseline_ols.* regression tasks"):
    build_sweep({"base": TINY, "metric": "eval_mse_baseline_ols"})


def test_every_known_metric_is_a_results_column(tmp_path):
  from parallax_jax.sweeps.config import BASELINE_COLUMNS, METRIC_COLUMNS
  from parallax_jax.sweeps.report import point_row

  for metric in METRIC_COLUMNS:
    assert build_sweep({"base": TINY, "metric": metric}).metric == metric
  sweep = build_sweep(
    {"base": TINY, "overrides": {"data.source": "linreg"}, "metric": "eval_mse_baseline_ols"}
  )
  row = point_row(sweep, sweep.points[0], tmp_path)
  assert set(METRIC_COLUMNS + BASELINE_COLUMNS) <= set(row)


def test_sweep_cli_mistakes_are_one_line_and_dry_run_flags_invalid_points(tmp_path, capsys):
  from cli_runner import one_line_error, run_cli

  def sweep_file(spec: dict) -> str:
    path = tmp_path / f"s{len(list(tmp_path.glob('s*.py')))}.py"
    path.write_text(f"def get_config():\n  return {spec!r}\n")
    return str(path)

  cases = [
    (sweep_file({"base": TINY, "mode": "grdi"}), "sweep.mode must be one of"),
    (sweep_file({"base": TINY, "axes": {"model.atention": ["x"]}}), "model.atention"),
    (sweep_file({"base": "configs/nope.py"}), "sweep.base='configs/nope.py'"),
    (sweep_file({"base": TINY, "axes": {"train.seed": []}}), "non-empty list"),
    (sweep_file({"base": TINY, "metric": "eval_los"}), "sweep.metric='eval_los'"),
    (str(tmp_path / "missing.py"), "sweep config file .* does not exist"),
  ]
  for path, match in cases:
    code, _, err = run_cli(capsys, "sweep", "--config", path, "--workdir", str(tmp_path / "w"))
    assert code == 2 and re.search(match, one_line_error(err)), (path, err)
  good = sweep_file({"base": TINY, "axes": {"model.num_heads": [2, 3]}})
  code, _, err = run_cli(capsys, "sweep", "--config", good, "--workdir", "w", "--parallel", "0")
  assert code == 2 and "--parallel must be >= 1" in one_line_error(err)
  code, out, err = run_cli(capsys, "sweep", "--config", good, "--workdir", "w", "--dry-run")
  assert code == 2 and "1 of 2 sweep points are invalid" in one_line_error(err)
  lines = out.splitlines()
  assert lines[0].startswith("num_heads=2: ") and lines[1].startswith("num_heads=3: ")
  assert lines[2].startswith("  invalid: ") and "num_kv_heads=2" in lines[2] and len(lines) == 3
  assert not (tmp_path / "w").exists() and not Path("w").exists()


def test_dry_run_says_what_a_run_would_do_with_each_held_point_and_writes_nothing(tmp_path, capsys):
  """A dry run listed every point alike, whatever the workdir held: which ones a run would
  skip, resume or retry was only learnt by running it."""
  from cli_runner import run_cli

  path = tmp_path / "s.py"
  spec = {"base": TINY, "axes": {"train.seed": [0, 1, 2, 3, 4, 5]}, "overrides": {"train.steps": 9}}
  path.write_text(f"def get_config():\n  return {spec!r}\n")
  sweep = load_sweep(str(path))
  fp = {p.name: p.fingerprint() for p in sweep.points}
  held = {  # seed=5: nothing held, a new point
    "seed=0": {"status": "finished", "final_step": 9, "fingerprint": fp["seed=0"]},
    "seed=1": {"status": "preempted", "final_step": 4, "fingerprint": fp["seed=1"]},
    "seed=2": {"status": "failed", "final_step": None, "error": "exit 1: OOM"},
    "seed=3": {"status": "finished", "final_step": 9, "fingerprint": "0123456789abcdef"},
    "seed=4": {"status": "running", "final_step": 2, "fingerprint": fp["seed=4"]},
  }
  for name, status in held.items():
    (tmp_path / "w" / "points" / name).mkdir(parents=True)
    (tmp_path / "w" / "points" / name / "status.json").write_text(json.dumps(status))
  before = sorted((f, f.read_bytes()) for f in (tmp_path / "w").rglob("*") if f.is_file())
  code, out, _ = run_cli(
    capsys, "sweep", "--config", str(path), "--workdir", str(tmp_path / "w"), "--dry-run"
  )
  assert code == 0
  said = {}
  for line in out.splitlines():
    if not line.startswith(" "):
      name = line.split(":")[0]
      said[name] = []
    else:
      said[name].append(line.strip())
  assert said["seed=0"] == ["finished earlier, skipped"]
  assert said["seed=1"] == ["would train: preempted at step 4; resumes from its checkpoint"]
  assert said["seed=2"] == [
    "would train: failed before its first step (exit 1: OOM); retried, from its checkpoints if any"
  ]
  assert said["seed=3"][0].startswith(
    "not rerun: points/seed=3 was trained with a different config"
  )
  assert said["seed=4"] == [
    "would train: left running at step 2 (a sweep killed outright, or one still running)"
  ]
  assert said["seed=5"] == []
  assert said[str(tmp_path / "w")] == [] and out.splitlines()[-1] == (
    f"{tmp_path / 'w'}: of 6 point(s), 2 skipped, 3 to resume or retry, 1 new"
  )
  after = sorted((f, f.read_bytes()) for f in (tmp_path / "w").rglob("*") if f.is_file())
  assert after == before


def test_values_round_trip_through_cli_overrides():
  cfg = load_config(TINY)
  for key, value in (
    ("model.window_size", 16),
    ("model.window_size", None),
    ("train.progress_bar", False),
    ("optimizer.learning_rate", 1e-4),
    ("model.attention", "lla"),
  ):
    apply_overrides(cfg, [f"{key}={cli_value(value)}"])
    section, leaf = key.split(".")
    assert cfg[section][leaf] == value
  assert point_name({"a.b": "x/y z", "c.b": 1}) == "a.b=x-y-z,c.b=1"


def test_more_parallel_points_than_tpu_chips_is_refused(monkeypatch):
  """Two processes cannot share a TPU chip: the points beyond the chip count failed one by one
  (recorded as failures); now the sweep refuses the count before any point starts."""
  from parallax_jax.errors import UserError
  from parallax_jax.sweeps import runner

  monkeypatch.setattr(runner, "_accelerators", lambda env: ("tpu", ["0", "1"]))
  chips = [e["TPU_VISIBLE_CHIPS"] for e in slot_environments(2, {})]
  assert chips == ["0", "1"]
  with pytest.raises(UserError, match=r"--parallel 3: this host has 2 TPU chip\(s\)"):
    slot_environments(3, {})


def test_finished_status_and_slot_environments():
  (point,) = build_sweep({"base": TINY, "overrides": {"train.steps": 5}}).points
  ok = {"status": "finished", "final_step": 5, "fingerprint": point.fingerprint()}
  assert is_finished(ok, point)
  assert not is_finished({**ok, "final_step": 4}, point)
  assert not is_finished({**ok, "fingerprint": "other"}, point)
  assert not is_finished({**ok, "status": "failed"}, point)
  envs = slot_environments(3, {"CUDA_VISIBLE_DEVICES": "4,5"})
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "5", "4"]
  assert envs[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert "CUDA_VISIBLE_DEVICES" not in slot_environments(1, {})[0]
  log = "Traceback (most recent call last):\n  ...\nValueError: model.num_heads: bad\n"
  assert error_summary(log, 1) == "exit 1: ValueError: model.num_heads: bad"
  assert error_summary("INFO step 3\n", -9) == "killed by SIGKILL; last output: INFO step 3"
  assert not is_finished({**ok, "status": "preempted"}, point)


def test_failing_point_is_recorded_and_rerun_resumes(tmp_path):
  """num_heads=3 is not a multiple of num_kv_heads=2: that point fails, the other finishes."""
  base = load_config(TINY)  # an inline base ConfigDict
  spec = {"base": base, "axes": {"model.num_heads": [2, 3]}, "overrides": FAST}
  sweep = build_sweep(spec, base_path_for_inline=tmp_path / "base_config.py")
  messages = []
  rows = run_sweep(sweep, tmp_path, log=messages.append)
  by_name = {r["name"]: r for r in rows}
  good, bad = by_name["num_heads=2"], by_name["num_heads=3"]
  assert good["status"] == "finished" and good["final_step"] == 3 and good["error"] is None
  # The table reports what the point's run logged (read here as plain JSON lines).
  lines = (tmp_path / "points" / "num_heads=2" / "metrics.jsonl").read_text().splitlines()
  logged = [json.loads(line) for line in lines if line.strip()]
  last_eval = [r for r in logged if "eval_accuracy" in r][-1]
  assert good["train_loss"] == pytest.approx(logged[-1]["loss"]) and good["train_loss"] > 0
  for key in ("eval_accuracy", "eval_perplexity"):
    assert good[key] == pytest.approx(last_eval[key]), key
  assert bad["status"] == "failed" and "num_heads" in bad["error"] and "exit" in bad["error"]

  with (tmp_path / "results.csv").open() as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["num_heads=2", "num_heads=3"]
  assert table[0]["model.num_heads"] == "2" and table[1]["status"] == "failed"
  md = (tmp_path / "results.md").read_text()
  assert "| num_heads=3 | 3 | failed |" in md and "metric: `eval_perplexity`" in md
  for png in ("loss_curves.png", "metric_vs_model_num_heads.png"):
    assert (tmp_path / png).stat().st_size > 1000
  status = json.loads((tmp_path / "points" / "num_heads=2" / "status.json").read_text())
  assert status["status"] == "finished" and status["command"][1:4] == [
    "-m",
    "parallax_jax.cli",
    "train",
  ]

  messages.clear()
  rows = run_sweep(sweep, tmp_path, log=messages.append)  # resume: skip finished, retry failed
  assert "[sweep] num_heads=2: finished earlier, skipped" in messages
  assert any(m.startswith("[sweep] num_heads=3: training") for m in messages)
  assert (tmp_path / "points" / "num_heads=2" / "train.log").read_text().count("\n$ ") == 1
  assert (tmp_path / "points" / "num_heads=3" / "train.log").read_text().count("\n$ ") == 2
  assert [r["status"] for r in rows] == ["finished", "failed"]
  # The retry keeps the first start's record, and the point's wall time is both starts'.
  status = json.loads((tmp_path / "points" / "num_heads=3" / "status.json").read_text())
  (first,) = status["attempts"]
  assert first["status"] == "failed" and "num_heads" in first["error"] and first["ended"]
  assert status["wall_s"] == pytest.approx(status["attempt_wall_s"] + first["wall_s"], abs=0.02)
  assert 0 < first["wall_s"] < status["wall_s"]


def test_earlier_attempts_chain_each_starts_own_time():
  """A point's starts, oldest first; each with its own wall time, whether the record predates
  ``attempt_wall_s`` (one start: its wall_s) or not (wall_s is then the sum over starts)."""
  assert earlier_attempts(None) == [] and earlier_attempts({}) == []
  old = {"status": "preempted", "final_step": 7, "wall_s": 30.0, "command": ["x"]}
  (one,) = earlier_attempts(old)
  assert one["status"] == "preempted" and one["final_step"] == 7 and one["wall_s"] == 30.0
  assert "command" not in one
  second = {"status": "failed", "attempts": [one], "attempt_wall_s": 5.0, "wall_s": 35.0}
  assert [a["wall_s"] for a in earlier_attempts(second)] == [30.0, 5.0]
  killed = {"status": "running", "attempts": [one], "started": "t"}  # a sweep killed outright
  assert earlier_attempts(killed)[-1] == {**dict.fromkeys(one), "status": "running", "started": "t"}


def test_smoke_sweep_end_to_end(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "parallax_jax.cli",
      "sweep",
      "--config",
      str(ROOT / "configs" / "sweeps" / "smoke.py"),
      "--workdir",
      str(tmp_path),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  sweep = load_sweep(ROOT / "configs" / "sweeps" / "smoke.py")
  with (tmp_path / "results.csv").open() as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == [p.name for p in sweep.points]
  assert all(r["status"] == "finished" and float(r["eval_perplexity"]) > 1 for r in table)
  assert (tmp_path / "metric_vs_model_attention.png").exists()


def _write_csv(path, header: list[str], rows: list[tuple]) -> None:
  """A sweep's results.csv with these columns and rows (for the table readers)."""
  with path.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def test_pivot_results_averages_the_other_axes(tmp_path):
  from parallax_jax.sweeps.pivot import pivot

  path = tmp_path / "results.csv"
  rows = [
    ("a", "0", "finished", "1.0"),
    ("a", "1", "finished", "3.0"),
    ("b", "0", "finished", "5.0"),
    ("b", "1", "failed", ""),
  ]
  _write_csv(path, ["variant", "train.seed", "status", "eval_loss"], rows)
  table = pivot(path, "variant", "status", "eval_loss", "{:.1f}")
  assert "| a | 2.0 ± 1.0 (n=2) |" in table  # mean ± half range over the seeds
  assert "| b | 5.0 |" in table  # the failed point is left out
  by_seed = pivot(path, "variant", "train.seed", "eval_loss", "{:.1f}")
  assert "| b | 5.0 | - |" in by_seed
  with pytest.raises(ValueError, match="no column 'eval_mse'"):
    pivot(path, "variant", "status", "eval_mse")


# (variant, status, eval_loss) of a sweep with two groups and two seeds, for the pair readers
PAIRED_ROWS = [
  ("muon+softmax_s0", "finished", "4.0"),
  ("muon+softmax_s1", "finished", "5.0"),
  ("muon+parallax_s0", "finished", "4.5"),
  ("muon+parallax_s1", "finished", "4.75"),
  ("adamw+softmax_s0", "finished", "10.0"),
  ("adamw+parallax_s0", "finished", "9.0"),
  ("adamw+parallax_s1", "finished", "7.0"),  # no adamw softmax at seed 1: no pair
]


def test_seed_pairs_compare_within_group_and_seed(tmp_path):
  """Each arm minus its own group's base arm at the same seed (never another group's, never
  another seed's); unfinished points and names without a seed are left out."""
  from parallax_jax.sweeps.pairs import paired_tables

  path = tmp_path / "results.csv"
  rows = [
    *PAIRED_ROWS,
    ("muon+parallax_lr2_s0", "pending", ""),
    ("smoke", "finished", "1.0"),  # not <group>+<arm>_s<seed>
  ]
  _write_csv(path, ["variant", "status", "eval_loss"], rows)
  values, diffs = paired_tables(path, "eval_loss", "softmax", "{:.2f}").split("minus")
  assert "| muon+softmax | 4.00 | 5.00 | 4.50 ± 0.50 (n=2) |" in values
  assert "| adamw+parallax | 9.00 | 7.00 | 8.00 ± 1.00 (n=2) |" in values
  assert "lr2" not in values and "smoke" not in values
  # muon: 4.5 - 4.0 = 0.5 and 4.75 - 5.0 = -0.25; adamw: seed 0 only, 9 - 10 = -1
  # with the paired t-test of the two pairs, against scipy's ttest_rel on the raw values (and
  # with one degree of freedom the closed form p = 1 - 2 atan(|t|) / pi)
  ref = stats.ttest_rel([4.5, 4.75], [4.0, 5.0])
  assert ref.pvalue == pytest.approx(1 - 2 * math.atan(abs(ref.statistic)) / math.pi)
  want = f"t = {ref.statistic:.2f}, p = {ref.pvalue:.2f}"
  assert f"| muon+parallax | 0.50 | -0.25 | 0.12 ± 0.38 (n=2) | {want} |" in diffs
  assert "| adamw+parallax | -1.00 | - | -1.00 | - |" in diffs  # one pair: no test
  with pytest.raises(ValueError, match="no column 'eval_mse'"):
    paired_tables(path, "eval_mse")


def test_seed_pairs_curves_pair_each_step_within_group_and_seed(tmp_path):
  """At every step both runs of a pair logged the value: the arm minus its group's base at the
  same seed; steps without the base's value, unfinished points and unpaired groups are left
  out, and training records without the value are skipped."""
  from parallax_jax.sweeps.pairs import paired_curves

  def point(variant, status, evals):
    d = tmp_path / "points" / f"variant={variant}"
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"values": {"variant": variant}, "status": status}))
    records = [{"step": 50, "loss": 9.0}] + [{"step": s, "eval_loss": v} for s, v in evals]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  point("muon+softmax_s0", "finished", [(100, 4.0), (200, 3.0)])
  point("muon+softmax_s1", "finished", [(100, 5.0), (200, 3.5)])
  point("muon+parallax_s0", "finished", [(100, 3.5), (200, 2.0), (300, 1.0)])  # 300: no base
  point("muon+parallax_s1", "finished", [(100, 4.0), (200, 3.0)])
  point("adamw+parallax_s0", "finished", [(100, 9.0)])  # no adamw softmax: no pair
  point("muon+parallax_lr2_s0", "failed", [(100, 1.0)])
  (tmp_path / "points" / "no_status").mkdir()
  table = paired_curves(tmp_path / "points", "eval_loss", "softmax", "{:.2f}")
  # step 100: 3.5 - 4.0 and 4.0 - 5.0; step 200: 2.0 - 3.0 and 3.0 - 3.5
  assert "| arm | step 100 | step 200 |" in table
  assert "| muon+parallax | -0.75 ± 0.25 (n=2) | -0.75 ± 0.25 (n=2) |" in table
  assert "adamw" not in table and "lr2" not in table and "step 300" not in table
  with pytest.raises(ValueError, match="logs 'eval_mse'"):
    paired_curves(tmp_path / "points", "eval_mse")


def test_seed_pairs_cli_formats_the_curves_with_fmt(tmp_path, capsys):
  """``seed_pairs --curves --fmt`` formatted the per-seed tables with --fmt but the curves'
  table with the default '{:.3f}', silently."""
  from experiments import seed_pairs

  rows = []
  for variant, loss in (("muon+softmax_s0", 4.0), ("muon+parallax_s0", 3.5)):
    rows.append((variant, "finished", str(loss)))
    d = tmp_path / "points" / f"variant={variant}"
    d.mkdir(parents=True)
    (d / "status.json").write_text(
      json.dumps({"values": {"variant": variant}, "status": "finished"})
    )
    (d / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_loss": loss}) + "\n")
  _write_csv(tmp_path / "results.csv", ["variant", "status", "eval_loss"], rows)
  seed_pairs.main([str(tmp_path / "results.csv"), "--curves", "--fmt", "{:.1f}"])
  out = capsys.readouterr().out
  assert "| muon+parallax | -0.5 |" in out  # the curves' row: step 100, 3.5 - 4.0
  assert "-0.500" not in out


def test_seed_pairs_plot_draws_each_arms_paired_differences(tmp_path, capsys):
  """``--plot``: each asked arm's differences from its group's base at the same seed, a marker
  a seed and a bar at their mean, in the asked order; an arm without a pair, an existing image
  and --arms without --plot are one-line errors that write nothing."""
  from experiments import seed_pairs
  from parallax_jax.sweeps.pairs import paired_differences
  from parallax_jax.sweeps.pairs_plot import paired_figure

  csv_path = tmp_path / "results.csv"
  _write_csv(csv_path, ["variant", "status", "eval_loss"], PAIRED_ROWS)
  diffs = paired_differences(csv_path, "eval_loss", "softmax")
  assert diffs == {"adamw+parallax": {0: -1.0}, "muon+parallax": {0: 0.5, 1: -0.25}}
  ax = paired_figure({k: diffs[k] for k in ("muon+parallax", "adamw+parallax")}, xlabel="x").axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["muon+parallax", "adamw+parallax"]
  points = sorted((float(x), float(y)) for c in ax.collections for x, y in c.get_offsets())
  assert points == [(-1.0, -1.0), (-0.25, 0.0), (0.5, 0.0)]  # row 0 on top, row 1 below
  bars = [(list(b.get_xdata()), list(b.get_ydata())) for b in ax.lines if b.get_linestyle() == "-"]
  assert bars == [([0.125, 0.125], [-0.3, 0.3]), ([-1.0, -1.0], [-1.3, -0.7])]

  out = tmp_path / "pairs.png"
  seed_pairs.main([str(csv_path), "--plot", str(out), "--arms", "muon+parallax"])
  assert f"wrote {out}" in capsys.readouterr().out and out.stat().st_size > 0
  for args, said in (
    (["--plot", str(out)], "exists; give a new name, or --overwrite"),
    (["--plot", str(tmp_path / "b.png"), "--arms", "muon+softmax"], "--arms muon+softmax: no"),
    (["--arms", "muon+parallax"], "--arms, --title and --overwrite go with --plot"),
  ):
    assert said in script_error(capsys, seed_pairs.main, [str(csv_path), *args])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.png", "results.csv"]


# 4 groups x 3 seeds: more curves than matplotlib's 10-colour default cycle.
MANY = [
  f"{o}+{k}_s{s}" for o in ("adamw", "muon") for k in ("parallax", "softmax") for s in (0, 1, 2)
]


def _many_variants_sweep(tmp_path):
  """A sweep of the 12 ``MANY`` variants, each with a metrics.jsonl: train loss every 10 steps,
  eval perplexity every 20."""
  sweep = build_sweep(
    {
      "base": TINY,
      "variants": {n: {"train.seed": int(n[-1])} for n in MANY},
      "metric": "eval_perplexity",
    }
  )
  for i, p in enumerate(sweep.points):
    directory = tmp_path / "points" / p.name
    directory.mkdir(parents=True)
    records = [
      {
        "step": t,
        "loss": 5 - t / 100 + i / 50,
        **({"eval_perplexity": 90 - t / 5 + i} if t % 20 == 0 else {}),
      }
      for t in range(10, 110, 10)
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return sweep


def assert_curves_distinct(fig, names):
  """Each axis of the loss-curve figure: one line per name, no two with the same (colour, line
  style); a name's seeds (``_s<n>``) share a colour."""
  from matplotlib.colors import to_hex

  axes = [a for a in fig.axes if a.lines]
  assert len(axes) == 2
  for ax in axes:
    lines = {line.get_label().removeprefix("variant="): line for line in ax.lines}
    assert sorted(lines) == sorted(names)
    styles = {n: (to_hex(line.get_color()), line.get_linestyle()) for n, line in lines.items()}
    assert len(set(styles.values())) == len(names), styles
    for n in names:
      assert styles[n][0] == styles[n[:-1] + "0"][0], n


def assert_labels_readable(fig, names):
  """Each name is a tick label, drawn inside the figure and overlapping no other."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  ticks = [
    t
    for ax in fig.axes
    for t in ax.get_xticklabels() + ax.get_yticklabels()
    if t.get_text() in names and t.get_visible()
  ]
  assert sorted(t.get_text() for t in ticks) == sorted(names)
  boxes = [t.get_window_extent(renderer) for t in ticks]
  frame = fig.bbox
  for i, b in enumerate(boxes):
    assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
    overlapping = [ticks[j].get_text() for j in range(i) if b.overlaps(boxes[j])]
    assert not overlapping, (ticks[i].get_text(), overlapping)


def test_plots_of_many_variants_stay_readable(tmp_path):
  """12 variants: every curve has its own (colour, line style), seeds of a variant share the
  colour; the metric plot's variant names neither overlap nor leave the figure."""
  from parallax_jax.sweeps.report import loss_curves_figure, metric_figure, write_tables

  sweep = _many_variants_sweep(tmp_path)
  rows = write_tables(sweep, tmp_path)
  assert_curves_distinct(loss_curves_figure(sweep, tmp_path, "eval_perplexity"), MANY)
  assert_labels_readable(metric_figure(sweep, rows, "eval_perplexity", "variant"), MANY)


def test_metric_axis_is_log_when_the_values_span_10x(tmp_path):
  """One diverged point (ppl 600 among ~50) puts the metric's axis on a log scale; values within
  10x keep it linear."""
  from parallax_jax.sweeps.report import metric_figure, write_tables

  sweep = _many_variants_sweep(tmp_path)
  rows = write_tables(sweep, tmp_path)
  close = [{**r, "eval_perplexity": 50.0 + i} for i, r in enumerate(rows)]
  (ax,) = metric_figure(sweep, close, "eval_perplexity", "variant").axes
  assert ax.get_xscale() == "linear"
  spread = [{**r, "eval_perplexity": 600.0} if i == 0 else r for i, r in enumerate(close)]
  (ax,) = metric_figure(sweep, spread, "eval_perplexity", "variant").axes
  assert ax.get_xscale() == "log"


def test_curve_styles_are_distinct_for_any_names():
  from parallax_jax.sweeps.report import curve_styles, split_seed

  assert split_seed("variant=muon+parallax_r0_s2") == ("variant=muon+parallax_r0", "s2")
  assert split_seed("attention=softmax,seed=1") == ("attention=softmax", "seed=1")
  assert split_seed("lr=0.1") == ("lr=0.1", "")
  for names in (
    [f"lr={i}" for i in range(15)],  # no seeds: 15 colours
    [f"v{i}_s{s}" for i in range(25) for s in (0, 1)],  # more groups than tab20 has colours
    [f"v_s{s}" for s in range(6)],  # more seeds than line styles
  ):
    styles = curve_styles(names)
    assert len(set(styles.values())) == len(names), names


def test_report_names_the_base_relative_to_the_working_directory(tmp_path, monkeypatch):
  """A committed results.md must not carry the writer's absolute paths: the base config is
  shown relative to the repository, or else the working directory, when it lies under one, and
  as given otherwise."""
  from parallax_jax.sweeps import report
  from parallax_jax.sweeps.config import REPO_ROOT

  (tmp_path / "configs").mkdir()
  monkeypatch.chdir(tmp_path)
  assert str(report._shown_path(tmp_path / "configs" / "a.py")) == "configs/a.py"
  assert str(report._shown_path(REPO_ROOT / "configs" / "tiny.py")) == "configs/tiny.py"
  outside = Path("/elsewhere/b.py")
  assert report._shown_path(outside) == outside


def test_paired_t_treats_rounding_level_spread_as_none():
  """Differences equal up to float rounding have no spread to test: no t, not a huge one."""
  from parallax_jax.sweeps.pairs import paired_t

  assert paired_t([0.1 + 0.2, 0.3, 0.3]) == "-"
  assert paired_t([0.5]) == "-"
  assert paired_t([0.5, 0.25]).startswith("t = ")


def test_head_scale_study_pairs_differ_only_in_the_head_and_match_the_committed_runs():
  """configs/sweeps/head_scale_cpu.py: each "one" point is its "rsqrt_d" twin with the other
  head and nothing else, and every committed point (experiments/results/studies/
  head_scale_cpu) was trained with exactly its point's config."""
  sweep = load_sweep(ROOT / "configs" / "sweeps" / "head_scale_cpu.py")
  points = {p.name.removeprefix("variant="): p for p in sweep.points}
  assert len(points) == 20
  for name, point in points.items():
    if "+one_" in name:
      twin = points[name.replace("+one_", "+rsqrt_d_")].config.to_dict()
      mine = point.config.to_dict()
      assert mine["model"].pop("tied_head_scale") == "one"
      assert twin["model"].pop("tied_head_scale") == "rsqrt_d"
      assert mine == twin, name
  committed = ROOT / "experiments" / "results" / "studies" / "head_scale_cpu" / "points"
  statuses = {d.name: json.loads((d / "status.json").read_text()) for d in committed.iterdir()}
  assert {f"variant={n}" for n in points} == set(statuses)
  for name, point in points.items():
    assert statuses[f"variant={name}"]["fingerprint"] == point.fingerprint(), name


def test_a_changed_inline_base_is_what_the_train_cli_loads(tmp_path):
  """A rerun whose inline base changed writes the new one: each point's train subprocess loads
  ``base_path``, and its status records the fingerprint of the new base's config."""
  from parallax_jax.sweeps.config import write_inline_base

  first, second = load_config(TINY), load_config(TINY)
  second.model.d_model = 96
  for base in (first, second):
    sweep = build_sweep({"base": base}, base_path_for_inline=tmp_path / "base_config.py")
    write_inline_base(sweep)
    assert load_config(sweep.base_path).model.d_model == base.model.d_model


def test_an_axis_value_given_twice_is_refused():
  """A repeated value would train one config twice, the third copy into the second's folder."""
  for values in ([0, 1, 1, 1], [1, "1"], [1, 1.0]):  # 1 and 1.0: one config
    with pytest.raises(ValueError, match=r"sweep.axes\['train.seed'\] has 1 more than once"):
      build_sweep({"base": TINY, "axes": {"train.seed": values}})


def test_sweep_keys_of_the_wrong_type_are_one_line_errors(tmp_path, capsys):
  from cli_runner import one_line_error, run_cli

  cases = [
    ({"mode": "random", "seed": "x", "count": 1, "axes": {"train.seed": [0, 1]}}, "sweep.seed"),
    ({"mode": "random", "seed": 1.5, "count": 1, "axes": {"train.seed": [0, 1]}}, "sweep.seed"),
    ({"axes": "train.seed"}, "sweep.axes"),
    ({"overrides": ["train.seed=1"]}, "sweep.overrides"),
    # a grid (the default mode) would run all 4 combinations, not the 2 asked for
    ({"count": 2, "axes": {"train.seed": [0, 1, 2, 3]}}, "sweep.count=2 applies to mode='random'"),
    ({"mode": "grid", "seed": 3, "axes": {"train.seed": [0, 1]}}, "sweep.seed=3 applies to"),
  ]
  for i, (spec, match) in enumerate(cases):
    path = tmp_path / f"s{i}.py"
    path.write_text(f"def get_config():\n  return { ({'base': TINY, **spec})!r}\n")
    argv = ["sweep", "--config", str(path), "--workdir", str(tmp_path / "w"), "--dry-run"]
    code, _, err = run_cli(capsys, *argv)  # (a dry run: a missed check trains nothing)
    assert code == 2 and match in one_line_error(err), (spec, err)
  assert not (tmp_path / "w").exists()


def test_seed_pairs_refuse_two_points_of_one_arm_and_seed(tmp_path):
  """A variant sweep with one more axis (here a learning rate) has two finished points per
  variant: a pair would silently keep the last row's value, so it is refused."""
  from parallax_jax.sweeps.pairs import paired_curves, paired_tables

  path = tmp_path / "results.csv"
  rows = [
    ("muon+softmax_s0", "0.001", "finished", "4.0"),
    ("muon+softmax_s0", "0.003", "finished", "6.0"),
    ("muon+parallax_s0", "0.001", "finished", "3.0"),
    ("muon+parallax_s0", "0.003", "finished", "7.0"),
  ]
  _write_csv(path, ["variant", "optimizer.learning_rate", "status", "eval_loss"], rows)
  with pytest.raises(ValueError, match="muon\\+softmax_s0.* more than once"):
    paired_tables(path, "eval_loss", "softmax")
  for variant, lr, status, value in rows:
    d = tmp_path / "points" / f"variant={variant},learning_rate={lr}"
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"values": {"variant": variant}, "status": status}))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval_loss": float(value)}) + "\n")
  with pytest.raises(ValueError, match="muon\\+parallax_s0.* more than once"):
    paired_curves(tmp_path / "points", "eval_loss", "softmax")


def test_a_non_finite_last_eval_is_not_reported_as_an_earlier_one(tmp_path):
  """metrics.jsonl holds a non-finite value as null: the table's eval loss is the last eval's
  (none), not the one before it."""
  from parallax_jax.sweeps.report import point_row

  sweep = build_sweep({"base": TINY, "overrides": {"train.steps": 4}})
  (point,) = sweep.points
  d = tmp_path / "points" / point.name
  d.mkdir(parents=True)
  records = [
    {"step": 2, "loss": 3.0, "eval_loss": 3.5, "eval_perplexity": 33.1, "eval_accuracy": 0.2},
    {"step": 4, "loss": 2.5, "eval_loss": None, "eval_perplexity": None, "eval_accuracy": 0.1},
  ]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  row = point_row(sweep, point, tmp_path)
  assert row["final_step"] == 4 and row["train_loss"] == 2.5 and row["eval_accuracy"] == 0.1
  assert row["eval_loss"] is None and row["eval_perplexity"] is None


def test_an_exclude_that_drops_every_point_is_refused():
  """A sweep of no points would run nothing and report an empty table with exit 0."""
  spec = {"base": TINY, "axes": {"train.seed": [0, 1]}}
  with pytest.raises(ValueError, match="sweep.exclude drops every point"):
    build_sweep({**spec, "exclude": [{"train.seed": 0}, {"train.seed": 1}]})


def test_a_point_with_damaged_metrics_is_a_row_with_its_error_and_the_table_is_written(tmp_path):
  """A metrics.jsonl damaged mid-file (not a cut last line) makes that point's row say so; the
  other points' rows and the table are still written (the report comes after hours of points)."""
  from parallax_jax.sweeps.report import write_all

  sweep = build_sweep({"base": TINY, "axes": {"train.seed": [0, 1]}})
  good, bad = sweep.points
  for point, text in ((good, '{"step": 2, "loss": 3.0}\n'), (bad, '{"step": 2}\nnot json\n{}\n')):
    d = tmp_path / "points" / point.name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(text)
  rows = {r["name"]: r for r in write_all(sweep, tmp_path)}
  assert rows[good.name]["train_loss"] == 3.0 and rows[good.name]["error"] is None
  assert rows[bad.name]["final_step"] is None
  assert "metrics.jsonl: line 2 is not JSON" in rows[bad.name]["error"]
  assert "line 2 is not JSON" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "loss_curves.png").is_file()
  assert last_step(tmp_path / "points" / bad.name) is None  # the run's log says why


def test_seed_pairs_and_pivot_leave_out_non_finite_values(tmp_path):
  """A non-finite cell (a diverged run; ``report`` writes it as empty) is no value: not a
  crash in the t-test, not a nan whose half range depends on the row order."""
  from parallax_jax.sweeps.pairs import paired_curves, paired_tables
  from parallax_jax.sweeps.pivot import pivot

  path = tmp_path / "results.csv"
  rows = [
    ("g+base_s0", "0", "finished", "1.0"),
    ("g+base_s1", "1", "finished", "2.0"),
    ("g+base_s2", "2", "finished", "3.0"),
    ("g+arm_s0", "0", "finished", "nan"),
    ("g+arm_s1", "1", "finished", "2.5"),
    ("g+arm_s2", "2", "finished", "3.0"),
  ]
  _write_csv(path, ["variant", "train.seed", "status", "eval_loss"], rows)
  values, diffs = paired_tables(path, "eval_loss", "base", "{:.2f}").split("minus")
  assert "| g+arm | - | 2.50 | 3.00 | 2.75 ± 0.25 (n=2) |" in values
  # 0.5 and 0.0: t = 0.25 / (0.3536 / sqrt 2) = 1, p = 1 - 2 atan(1) / pi = 0.5
  assert "| g+arm | - | 0.50 | 0.00 | 0.25 ± 0.25 (n=2) | t = 1.00, p = 0.50 |" in diffs
  by_seed = pivot(path, "status", "train.seed", "eval_loss", "{:.1f}")
  assert "| finished | 1.0 | 2.2 ± 0.2 (n=2) | 3.0 ± 0.0 (n=2) |" in by_seed

  for variant, value in (("g+base_s0", 1.0), ("g+arm_s0", float("nan"))):
    d = tmp_path / "points" / f"variant={variant}"
    d.mkdir(parents=True)
    status = {"values": {"variant": variant}, "status": "finished"}
    (d / "status.json").write_text(json.dumps(status))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_loss": value}) + "\n")
  assert "no arm has" in paired_curves(tmp_path / "points", "eval_loss", "base")


def test_a_changed_config_is_shown_failed_and_leaves_the_points_record(tmp_path, monkeypatch):
  """A point trained with another config than the sweep gives it now is not rerun, and the
  table shows it failed with the reason; its ``status.json`` stays as the run wrote it (it was
  rewritten as failed, so that restoring the config trained the point again: from scratch
  for a collected point, which holds no checkpoints)."""
  from parallax_jax.sweeps import runner

  spec = {"base": TINY, "overrides": FAST}
  sweep = build_sweep(spec)
  changed = build_sweep({**spec, "overrides": {**FAST, "train.log_every": 3}})
  (point,) = sweep.points
  d = tmp_path / "points" / point.name
  d.mkdir(parents=True)
  status = {"name": point.name, "status": "finished", "final_step": 3}
  (d / "status.json").write_text(json.dumps({**status, "fingerprint": point.fingerprint()}))
  (d / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 2.5}) + "\n")
  record = (d / "status.json").read_bytes()
  monkeypatch.setattr(runner, "run_point", lambda *a: pytest.fail("trained"))

  messages = []
  (row,) = run_sweep(changed, tmp_path, log=messages.append)
  assert row["status"] == "failed" and "trained with a different config" in row["error"]
  assert any("not rerun: points/" in m and "trained with a different config" in m for m in messages)
  assert (d / "status.json").read_bytes() == record
  (row,) = run_sweep(sweep, tmp_path, log=messages.append)  # the config restored
  assert row["status"] == "finished" and row["error"] is None and row["train_loss"] == 2.5
  assert messages[-1] == f"[sweep] {point.name}: finished earlier, skipped"


def _cli_error(capsys, main, argv) -> str:
  """The last stderr line of a CLI refusing ``argv``: argparse's one line, no traceback."""
  with pytest.raises(SystemExit) as exit_:
    main(argv)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err, err
  return err.strip().splitlines()[-1]


def test_seed_pairs_and_pivot_clis_refuse_bad_input_in_one_line(tmp_path, capsys):
  from experiments import pivot_results, seed_pairs

  path = tmp_path / "results.csv"
  _write_csv(path, ["variant", "status", "eval_loss"], [("softmax_s0", "finished", "4.0")])
  missing = tmp_path / "none.csv"
  line = _cli_error(capsys, seed_pairs.main, [str(missing)])
  assert line.endswith(f"csv {str(missing)!r} does not exist; give a sweep's results.csv")
  line = _cli_error(capsys, seed_pairs.main, [str(path), "--value", "eval_mse"])
  assert "has no column 'eval_mse'; columns: ['variant', 'status', 'eval_loss']" in line
  # --curves reads the points beside the csv
  line = _cli_error(capsys, seed_pairs.main, [str(path), "--curves"])
  assert f"--curves: {str(tmp_path / 'points')!r} does not exist" in line
  pivot = [str(path), "--rows", "variant", "--cols", "status", "--value"]
  line = _cli_error(capsys, pivot_results.main, [str(missing), *pivot[1:], "eval_loss"])
  assert line.endswith(f"csv {str(missing)!r} does not exist; give a sweep's results.csv")
  assert "has no column 'eval_mse'" in _cli_error(capsys, pivot_results.main, [*pivot, "eval_mse"])
  # a column that is no metric (a float() traceback before)
  text = "column 'status' holds 'finished', not a number; give a metric column"
  assert text in _cli_error(capsys, seed_pairs.main, [str(path), "--value", "status"])
  assert text in _cli_error(capsys, pivot_results.main, [*pivot, "status"])


@pytest.mark.parametrize(
  "fmt, says",
  [
    ("{:.3f", "does not format a number (ValueError"),
    ("{x}", "does not format a number (KeyError"),
    ("{:d}", "does not format a number (ValueError"),
    ("{1}", "does not format a number (IndexError"),
    ("loss", "has no field for the number"),
  ],
)
def test_seed_pairs_and_pivot_clis_refuse_a_bad_fmt_in_one_line(tmp_path, capsys, fmt, says):
  """A --fmt that formats no number ended both tables in a traceback (or, with no field,
  printed the same text in every cell)."""
  from experiments import pivot_results, seed_pairs

  path = tmp_path / "results.csv"
  rows = [("muon+softmax_s0", "finished", "4.0"), ("muon+parallax_s0", "finished", "3.0")]
  _write_csv(path, ["variant", "status", "eval_loss"], rows)
  want = f"--fmt {fmt!r} {says}"
  assert want in _cli_error(capsys, seed_pairs.main, [str(path), "--fmt", fmt])
  pivot = [str(path), "--rows", "variant", "--cols", "status", "--value", "eval_loss"]
  assert want in _cli_error(capsys, pivot_results.main, [*pivot, "--fmt", fmt])


def test_seed_pairs_refuse_a_base_that_is_no_arm(tmp_path):
  """A misspelt ``--base`` gave an empty difference table: it read as "no pair finished"."""
  from parallax_jax.errors import UserError
  from parallax_jax.sweeps.pairs import paired_tables

  path = tmp_path / "results.csv"
  rows = [("muon+softmax_s0", "finished", "4.0"), ("muon+parallax_s0", "finished", "3.0")]
  _write_csv(path, ["variant", "status", "eval_loss"], rows)
  with pytest.raises(UserError, match=r"--base 'sofmax' is no arm of .*: parallax, softmax"):
    paired_tables(path, "eval_loss", "sofmax")


def test_the_sweeps_worker_threads_leave_stop_signals_to_the_main_thread(tmp_path, monkeypatch):
  """SIGTERM / SIGINT are blocked in the threads that run points, so the kernel delivers them to
  the sweep's main thread, whose handler passes them on at once; one taken by a worker thread
  waited for the main thread's wait to end, i.e. for a point to finish training."""
  import signal

  from parallax_jax.sweeps import runner

  masks = []

  def fake_point(sweep, point, workdir, env, children):
    masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    return {"status": "failed", "error": "not trained", "wall_s": 0.0}

  monkeypatch.setattr(runner, "run_point", fake_point)
  sweep = build_sweep({"base": TINY, "axes": {"train.seed": [0, 1]}, "overrides": FAST})
  run_sweep(sweep, tmp_path, parallel=2, log=lambda m: None)
  assert len(masks) == 2
  assert all({signal.SIGTERM, signal.SIGINT} <= mask for mask in masks), masks
  assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the caller's


def test_a_damaged_status_json_costs_only_its_own_point(tmp_path, capsys, monkeypatch):
  """A status.json that is no JSON object (cut, or edited by hand) made the report, a dry run,
  a rerun and the paired curves end in a JSONDecodeError traceback: the other points' table
  was lost. Its row and the dry run now name the file, the sweep does not train over it, and
  the record is left as it is."""
  from cli_runner import run_cli

  from parallax_jax.errors import UserError
  from parallax_jax.sweeps import runner
  from parallax_jax.sweeps.pairs import paired_curves

  path = tmp_path / "s.py"
  spec = {"base": TINY, "axes": {"train.seed": [0, 1, 2]}, "overrides": {"train.steps": 4}}
  path.write_text(f"def get_config():\n  return {spec!r}\n")
  sweep = load_sweep(str(path))
  good = sweep.points[0]
  w = tmp_path / "w"
  texts = {
    "seed=0": json.dumps(
      {"status": "finished", "final_step": 4, "fingerprint": good.fingerprint()}
    ),
    "seed=1": '{"status": "finis',
    "seed=2": "[1, 2]",
  }
  for name, text in texts.items():
    (w / "points" / name).mkdir(parents=True)
    (w / "points" / name / "status.json").write_text(text)
    (w / "points" / name / "metrics.jsonl").write_text('{"step": 4, "loss": 2.5}\n')
  before = sorted((f, f.read_bytes()) for f in w.rglob("*") if f.is_file())

  code, out, err = run_cli(capsys, "sweep", "--config", str(path), "--workdir", str(w), "--dry-run")
  assert code == 0 and "Traceback" not in err, err
  assert f"not rerun: {w / 'points' / 'seed=1' / 'status.json'} is not JSON" in out
  assert f"not rerun: {w / 'points' / 'seed=2' / 'status.json'} is not a point's record" in out
  assert sorted((f, f.read_bytes()) for f in w.rglob("*") if f.is_file()) == before

  monkeypatch.setattr(runner, "run_point", lambda *a: pytest.fail("trained"))
  rows = {r["name"]: r for r in run_sweep(sweep, w, log=lambda m: None)}
  assert rows["seed=0"]["status"] == "finished" and rows["seed=0"]["error"] is None
  for name in ("seed=1", "seed=2"):
    assert rows[name]["status"] == "failed"
    assert rows[name]["error"].startswith(str(w / "points" / name / "status.json"))
  for name, text in texts.items():
    assert (w / "points" / name / "status.json").read_text() == text

  with pytest.raises(UserError, match=r"seed=1/status.json is not JSON"):
    paired_curves(w / "points", "loss", "base")


def test_a_metrics_jsonl_of_no_records_or_no_text_costs_only_its_own_row(tmp_path):
  """Lines that are JSON but no metrics record (a list, an object without a step) and bytes
  that are not UTF-8 ended the report in an AttributeError / KeyError / UnicodeDecodeError: the
  other points' table and plots were lost."""
  from parallax_jax.sweeps.report import write_all

  sweep = build_sweep({"base": TINY, "axes": {"train.seed": [0, 1, 2, 3]}})
  good, *bad = sweep.points
  texts = (b'{"step": 2, "loss": 3.0}\n', b"[1, 2]\n", b'{"loss": 2.0}\n', b"\xff\xfe\n")
  for point, text in zip(sweep.points, texts, strict=True):
    d = tmp_path / "points" / point.name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_bytes(text)
  rows = {r["name"]: r for r in write_all(sweep, tmp_path)}
  assert rows[good.name]["train_loss"] == 3.0 and rows[good.name]["error"] is None
  for point, why in zip(bad, ("record 1 is not", "record 1 is not", "is not text"), strict=True):
    path = tmp_path / "points" / point.name / "metrics.jsonl"
    assert rows[point.name]["final_step"] is None
    assert rows[point.name]["error"].startswith(str(path)) and why in rows[point.name]["error"]
  assert (tmp_path / "loss_curves.png").is_file()


def test_a_key_both_swept_and_set_by_overrides_or_a_variant_is_refused():
  """An axis value is applied after the fixed overrides and the variant's: a variant "wide"
  (d_model 128) crossed with an axis over d_model trained d_model 64 under the name
  ``variant=wide``, and a fixed override of a swept key was dropped, both without a word."""
  from parallax_jax.errors import UserError

  variants = {"wide": {"model.d_model": 128}, "narrow": {"model.d_model": 32}}
  with pytest.raises(UserError, match=r"sweep.axes\['model.d_model'\] is set by .*'wide'"):
    build_sweep({"base": TINY, "variants": variants, "axes": {"model": {"d_model": [64]}}})
  with pytest.raises(UserError, match=r"sweep.axes\['train.steps'\] is set by sweep.overrides"):
    build_sweep({"base": TINY, "overrides": {"train.steps": 7}, "axes": {"train.steps": [10]}})
  # a variant over a fixed override is the variants' purpose: still taken
  sweep = build_sweep(
    {"base": TINY, "overrides": {"model.d_model": 64}, "variants": variants, "axes": {}}
  )
  assert [p.config.model.d_model for p in sweep.points] == [128, 32]


def test_an_exclude_value_matches_only_the_axis_value_that_makes_its_config():
  """``exclude`` compared with ``==``: ``True`` (no value of an int axis) dropped the point
  ``seed=1`` without a word; it is refused like any value the axis lacks. ``1`` still drops
  the float axis value ``1.0`` (one config)."""
  from parallax_jax.errors import UserError

  spec = {"base": TINY, "axes": {"train.seed": [0, 1, 2]}}
  with pytest.raises(UserError, match=r"train.seed=True is not an axis value"):
    build_sweep({**spec, "exclude": [{"train.seed": True}]})
  sweep = build_sweep(
    {
      "base": TINY,
      "axes": {"optimizer.learning_rate": [1.0, 0.5]},
      "exclude": [{"optimizer": {"learning_rate": 1}}],
    }
  )
  assert [p.name for p in sweep.points] == ["learning_rate=0.5"]


def test_paired_curves_name_a_damaged_or_missing_metrics_jsonl(tmp_path):
  """A metrics.jsonl line that is JSON but no record ended the curves in an AttributeError, a
  finished point without the file in a FileNotFoundError: a UserError naming the file."""
  from parallax_jax.errors import UserError
  from parallax_jax.sweeps.pairs import paired_curves

  for variant, text in (("g+base_s0", '{"step": 10, "eval_loss": 1.0}\n'), ("g+arm_s0", None)):
    d = tmp_path / "points" / f"variant={variant}"
    d.mkdir(parents=True)
    (d / "status.json").write_text(
      json.dumps({"values": {"variant": variant}, "status": "finished"})
    )
    if text:
      (d / "metrics.jsonl").write_text(text)
  arm = tmp_path / "points" / "variant=g+arm_s0" / "metrics.jsonl"
  with pytest.raises(UserError, match=re.escape(f"{arm} does not exist")):
    paired_curves(tmp_path / "points", "eval_loss", "base")
  arm.write_text('[1]\n{"step": 10, "eval_loss": 2.0}\n')
  with pytest.raises(UserError, match=re.escape(f"{arm}: record 1 is not a metrics record")):
    paired_curves(tmp_path / "points", "eval_loss", "base")
  arm.write_text('{"step": 10, "eval_loss": 2.0}\n')
  assert "| g+arm | 1.000 |" in paired_curves(tmp_path / "points", "eval_loss", "base")
