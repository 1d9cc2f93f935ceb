"""``parallax-jax sweep --collect``: finished points from other workdirs into one results folder
(``parallax_jax.sweeps.collect``), checked against the sweep, never overwriting."""

import csv
import json
from pathlib import Path

from parallax_jax import cli
from parallax_jax.sweeps.collect import RECORD_FILES
from parallax_jax.sweeps.config import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "sweeps" / "smoke.py")


def _point(source: Path, name: str, fingerprint: str, final_step: int, loss: float = 2.0):
  d = source / "points" / name
  d.mkdir(parents=True)
  status = {"name": name, "status": "finished", "final_step": final_step}
  (d / "status.json").write_text(json.dumps({**status, "fingerprint": fingerprint}))
  (d / "config.json").write_text(json.dumps({"name": name}))
  rows = [{"step": s, "loss": loss + 1 / s, "eval_loss": loss + 2 / s} for s in (30, 60)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (d / "train.log").write_text("not collected\n")
  return d


def _tree(path: Path) -> dict[str, bytes]:
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _collect(workdir, *sources, points=None):
  argv = ["sweep", "--config", SMOKE, "--workdir", str(workdir), "--collect", *map(str, sources)]
  return cli.main(argv + (["--points", points] if points else []))


def _statuses(workdir: Path) -> dict[str, str]:
  with (workdir / "results.csv").open() as f:
    return {r["name"]: r["status"] for r in csv.DictReader(f)}


def test_collect_copies_finished_points_and_refuses_the_rest(tmp_path, capsys):
  first, second = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  _point(src, second.name, "another config", second.steps)
  _point(src, "attention=lla", "x", 60)
  before = _tree(src)

  assert _collect(out, src) == 1  # two refused
  printed = capsys.readouterr().out
  assert f"{second.name}: trained with a different config" in printed
  assert "attention=lla: not a point of this sweep" in printed
  assert _tree(src) == before  # reading a run never writes to it
  assert sorted(p.name for p in (out / "points").iterdir()) == [first.name]
  assert sorted(p.name for p in (out / "points" / first.name).iterdir()) == sorted(RECORD_FILES)
  assert _statuses(out) == {first.name: "finished", second.name: "pending"}
  assert (out / "loss_curves.png").exists() and json.loads((out / "sweep.json").read_text())

  # Again: the point already held with the same files is skipped, not refused.
  assert _collect(out, src) == 1
  printed = capsys.readouterr().out
  assert f"{first.name}: already here, skipped" in printed
  assert f"{first.name}: trained" not in printed and f"/{first.name}: " not in printed

  # A different run of a point the folder holds is refused, and the folder's copy kept.
  other = _point(tmp_path / "rerun", first.name, first.fingerprint(), first.steps, loss=1.0)
  held = _tree(out / "points")
  assert _collect(out, other.parents[1]) == 1
  assert "already holds another run; delete it to replace it" in capsys.readouterr().out
  assert _tree(out / "points") == held


def test_collect_takes_only_the_selected_points_and_refuses_unfinished_ones(tmp_path, capsys):
  first, second = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps - 1)  # cut short
  _point(src, second.name, second.fingerprint(), second.steps)
  assert _collect(out, src, points=second.name) == 0
  assert f"{first.name}: not among --points, skipped" in capsys.readouterr().out
  assert sorted(p.name for p in (out / "points").iterdir()) == [second.name]
  assert _collect(out, src) == 1
  assert f"{first.name}: not finished (status 'finished', step 59)" in capsys.readouterr().out
  assert _statuses(out) == {first.name: "pending", second.name: "finished"}


def test_collect_from_a_folder_without_points_is_a_one_line_error(tmp_path, capsys):
  assert _collect(tmp_path / "results", tmp_path) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no points/ folder there" in err[0]


def test_collect_into_a_new_workdir_creates_it_and_a_refused_one_writes_nothing(tmp_path, capsys):
  """Collecting nothing into a new workdir ended in FileNotFoundError (sweep.json written
  before the workdir existed); a source without points/ after a good one was refused after the
  good one's points were copied."""
  first, second = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, "another config", first.steps)
  assert _collect(out, src) == 1
  assert "trained with a different config" in capsys.readouterr().out
  assert _statuses(out) == {first.name: "pending", second.name: "pending"}
  assert json.loads((out / "sweep.json").read_text())

  good, new = tmp_path / "good", tmp_path / "new"
  _point(good, second.name, second.fingerprint(), second.steps)
  assert _collect(new, good, tmp_path / "nothing_here") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "nothing_here: no points/ folder there" in err[0]
  assert not new.exists()


def test_collect_with_dry_run_is_refused_and_writes_nothing(tmp_path, capsys):
  from cli_runner import one_line_error

  first, _ = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  before = _tree(src)
  argv = ["sweep", "--config", SMOKE, "--workdir", str(out), "--collect", str(src), "--dry-run"]
  assert cli.main(argv) == 2
  assert "--dry-run" in one_line_error(capsys.readouterr().err)
  assert not out.exists() and _tree(src) == before


def test_collect_with_parallel_is_refused_and_writes_nothing(tmp_path, capsys):
  """--parallel (points trained at once) was accepted with --collect, which trains nothing, and
  silently ignored."""
  from cli_runner import one_line_error

  first, _ = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  before = _tree(src)
  argv = ["sweep", "--config", SMOKE, "--workdir", str(out), "--collect", str(src)]
  assert cli.main([*argv, "--parallel", "2"]) == 2
  assert "--parallel does not apply to --collect" in one_line_error(capsys.readouterr().err)
  assert not out.exists() and _tree(src) == before


def test_points_run_into_a_shared_workdir_keep_the_others_in_its_table(
  tmp_path, capsys, monkeypatch
):
  """``--points`` trains only the selected points, but the workdir's table and sweep.json are
  the whole sweep's: a point finished by an earlier call stays in results.csv."""
  import sys

  from parallax_jax.sweeps import runner

  first, second = load_sweep(SMOKE).points
  out = tmp_path / "study"
  _point(out, first.name, first.fingerprint(), first.steps)
  fake = tmp_path / "fake_train.py"  # a finished run's metrics, at once
  fake.write_text(
    "import json, sys\n"
    "rows = [{'step': s, 'loss': 2.0} for s in (30, 60)]\n"
    "text = ''.join(json.dumps(r) + '\\n' for r in rows)\n"
    "open(sys.argv[1] + '/metrics.jsonl', 'w').write(text)\n"
  )
  monkeypatch.setattr(
    runner, "train_command", lambda sweep, point, d: [sys.executable, str(fake), str(d)]
  )
  argv = ["sweep", "--config", SMOKE, "--workdir", str(out), "--points", second.name]
  assert cli.main(argv) == 0
  assert _statuses(out) == {first.name: "finished", second.name: "finished"}
  assert json.loads((out / "sweep.json").read_text())["points"] == [first.name, second.name]
  assert (out / "points" / first.name / "train.log").read_text() == "not collected\n"


def test_an_empty_points_list_is_refused_not_read_as_every_point(tmp_path, capsys):
  """``--points "$P"`` with P unset would have trained (or collected) every point."""
  from cli_runner import run_cli

  for points in ("", " , "):
    for extra in (["--dry-run"], ["--collect", str(tmp_path)]):
      argv = ["sweep", "--config", SMOKE, "--workdir", str(tmp_path / "w"), "--points", points]
      code, _, err = run_cli(capsys, *argv, *extra)
      assert code == 2 and "--points" in err and "Traceback" not in err, err
  assert not (tmp_path / "w").exists()


def test_an_interrupted_collect_leaves_no_point_behind(tmp_path, capsys, monkeypatch):
  """A collect cut while copying a point's files leaves nothing under points/ (the readers, e.g.
  the MQAR recall table, take every folder there for a point), and the next collect takes it."""
  import shutil

  first, _ = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  real_copy, calls = shutil.copy2, []

  def cut_copy(a, b):
    calls.append(a)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_copy(a, b)

  monkeypatch.setattr(shutil, "copy2", cut_copy)
  try:
    _collect(out, src)
  except KeyboardInterrupt:
    pass
  monkeypatch.setattr(shutil, "copy2", real_copy)
  assert len(calls) == 2
  assert sorted(p.name for p in (out / "points").glob("*")) == []

  assert _collect(out, src) == 0
  assert sorted(p.name for p in (out / "points").iterdir()) == [first.name]
  assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_points_take_a_full_two_axis_name_and_several_patterns(capsys):
  """A point's name joins its axes with commas (``variant=a,seed=0``): given whole to --points it
  is one pattern (it was split at the comma into two, the second matching no point); several
  patterns come as several arguments, and a comma list of variant names still works."""
  from cli_runner import run_cli

  study = str(ROOT / "configs" / "sweeps" / "study_tiny_lm.py")
  argv = ["sweep", "--config", study, "--workdir", "unused", "--dry-run", "--points"]

  def chosen(*patterns):
    code, out, err = run_cli(capsys, *argv, *patterns)
    assert code == 0, err
    return [line.split(":")[0] for line in out.strip().splitlines()]

  assert chosen("variant=adamw+softmax,seed=1") == ["variant=adamw+softmax,seed=1"]
  two = ["variant=adamw+parallax,seed=0", "variant=adamw+softmax,seed=1"]
  assert chosen(*two) == two
  assert chosen("adamw+parallax,adamw+softmax") == [
    f"variant=adamw+{v},seed={s}" for v in ("parallax", "softmax") for s in (0, 1)
  ]


PIN = "a55c363d" + "0" * 56


def _pinned_smoke(tmp_path: Path) -> Path:
  """The smoke sweep with its corpus pinned to ``PIN`` (a sweep file of its own)."""
  pinned = tmp_path / "pinned.py"
  pinned.write_text(
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('smoke', {SMOKE!r})\n"
    "smoke = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(smoke)\n\n\n"
    "def get_config():\n"
    "  cfg = smoke.get_config()\n"
    f"  cfg.base = {str(ROOT / 'configs' / 'tiny.py')!r}\n"
    f"  cfg.overrides['data.source_sha256'] = {PIN!r}\n"
    "  return cfg\n"
  )
  return pinned


def test_a_finished_point_on_another_corpus_is_not_skipped_as_finished(tmp_path, capsys):
  """A point finished in the workdir before the sweep pinned its corpus, on another one: the
  runner neither skips it as finished nor retrains it over its record; the table shows it
  failed with the reason (the one the pin's point on the pinned corpus is finished)."""
  pinned = _pinned_smoke(tmp_path)
  held = load_sweep(pinned).points
  out = tmp_path / "results"
  sha = {held[0].name: PIN, held[1].name: "7ef9c500" + "0" * 56}
  for point in held:
    d = _point(out, point.name, point.fingerprint(), point.steps)
    (d / "config.json").write_text(json.dumps({"data": {"source": {"sha256": sha[point.name]}}}))
  before = _tree(out / "points")
  code = cli.main(["sweep", "--config", str(pinned), "--workdir", str(out)])
  printed = capsys.readouterr().out
  assert f"{held[0].name}: finished earlier, skipped" in printed
  assert f"{held[1].name}: not rerun: read another corpus" in printed
  assert _tree(out / "points") == before  # nothing trained, nothing rewritten
  assert _statuses(out) == {held[0].name: "finished", held[1].name: "failed"}
  with (out / "results.csv").open() as f:
    errors = {r["name"]: r["error"] for r in csv.DictReader(f)}
  assert errors[held[1].name].startswith("read another corpus: data.source_sha256=")
  assert code == 1


def test_a_corpus_pin_keeps_finished_points_and_collects_only_runs_of_that_corpus(tmp_path, capsys):
  """``data.source_sha256`` only checks what a run reads: pinning a sweep whose points have
  run keeps their fingerprints (they stay finished), and ``--collect`` refuses a point whose
  ``config.json`` records another corpus (or none) while taking one that read the pinned one."""
  pin = PIN
  pinned = _pinned_smoke(tmp_path)
  plain, held = load_sweep(SMOKE).points, load_sweep(pinned).points
  assert [p.config.data.source_sha256 for p in held] == [pin, pin]
  assert [p.fingerprint() for p in held] == [p.fingerprint() for p in plain]
  assert load_sweep(SMOKE).points[0].config.data.source_sha256 == ""

  src, out = tmp_path / "returned", tmp_path / "results"
  records = {  # what each run's config.json says it read
    held[0].name: {"kind": "builtin", "sha256": pin},
    held[1].name: {"kind": "builtin", "sha256": "7ef9c500" + "0" * 56, "num_files": 22862},
  }
  for point in held:
    d = _point(src, point.name, point.fingerprint(), point.steps)
    (d / "config.json").write_text(json.dumps({"data": {"source": records[point.name]}}))
  argv = ["sweep", "--config", str(pinned), "--workdir", str(out), "--collect", str(src)]
  assert cli.main(argv) == 1
  printed = capsys.readouterr().out
  assert f"{held[1].name}: read another corpus: data.source_sha256='{pin}' pins" in printed
  assert "this builtin has fingerprint 7ef9c5000000" in printed and "(22,862 files)" in printed
  assert sorted(p.name for p in (out / "points").iterdir()) == [held[0].name]
  # A record without a fingerprint (a run of another source) is refused too.
  (src / "points" / held[1].name / "config.json").write_text(json.dumps({"data": {}}))
  assert cli.main(argv) == 1
  assert "this source has no fingerprint" in capsys.readouterr().out


def test_a_held_point_of_another_config_is_not_tabled_as_finished(tmp_path, capsys):
  """The results folder's table is the sweep's as configured now: a point it holds from an
  earlier config (another fingerprint) is shown failed with the reason, not as a result, and
  its files are left as they are."""
  first, second = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  held = _point(out, second.name, "0123456789abcdef", second.steps)
  before = _tree(held)
  assert _collect(out, src) == 0
  assert _statuses(out) == {first.name: "finished", second.name: "failed"}
  with (out / "results.csv").open() as f:
    error = {r["name"]: r["error"] for r in csv.DictReader(f)}[second.name]
  assert "trained with a different config (fingerprint 0123456789abcdef != " in error
  assert _tree(held) == before


def test_collect_refuses_a_point_whose_status_json_is_damaged(tmp_path, capsys):
  """A damaged status.json in a source is that point's refusal, not a traceback that collects
  none of the others."""
  first, second = load_sweep(SMOKE).points
  src, out = tmp_path / "returned", tmp_path / "results"
  _point(src, first.name, first.fingerprint(), first.steps)
  (_point(src, second.name, second.fingerprint(), second.steps) / "status.json").write_text("{")
  before = _tree(src)

  assert _collect(out, src) == 1
  printed = capsys.readouterr().out
  assert f"{second.name}/status.json is not JSON" in printed
  assert _tree(src) == before
  assert sorted(p.name for p in (out / "points").iterdir()) == [first.name]
  assert _statuses(out) == {first.name: "finished", second.name: "pending"}
