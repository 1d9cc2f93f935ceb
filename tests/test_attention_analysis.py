"""``experiments/attention_analysis.py``'s output names (the analysis itself is checked in
test_run_record.py on a trained run)."""

from pathlib import Path

from cli_runner import script_error

from experiments.attention_analysis import output_paths


def test_output_stem_with_a_dot_keeps_its_whole_name():
  # Path.with_suffix would cut "lr0.5_s0" to "lr0" and let a later "lr0.25" run overwrite it.
  paths = output_paths("out/attention_muon_softmax_lr0.5_s0")
  assert paths == {
    ext: Path(f"out/attention_muon_softmax_lr0.5_s0{ext}") for ext in (".json", ".md", ".png")
  }


def test_an_existing_output_is_refused_before_anything_runs(tmp_path, capsys):
  import pytest

  from experiments.attention_analysis import main
  from experiments.memory_scaling import main as memory_main

  (tmp_path / "a.md").write_text("earlier result\n")
  argv = ["--run", f"x={tmp_path / 'no_such_run'}", "--out", str(tmp_path / "a")]
  assert script_error(capsys, main, argv).endswith(
    f": error: --out {tmp_path / 'a'}: {tmp_path / 'a.md'} exist(s); pass a new stem"
  )
  assert (tmp_path / "a.md").read_text() == "earlier result\n"
  (tmp_path / "m.json").write_text("{}")
  with pytest.raises(SystemExit):
    memory_main(["--out", str(tmp_path / "m.json")])
  assert "m.json exist(s); pass a new path" in capsys.readouterr().err
  assert (tmp_path / "m.json").read_text() == "{}"


def test_a_run_not_given_as_name_equals_workdir_is_a_one_line_error(tmp_path, capsys):
  """``--run W`` (no ``name=``) and an existing --out ended with a bare message and exit 1, not
  argparse's ``<prog>: error:`` line and exit 2 of the other refusals."""

  from experiments.attention_analysis import main

  error = script_error(capsys, main, ["--run", str(tmp_path / "w"), "--out", str(tmp_path / "a")])
  assert error.endswith(f": error: --run must be name=workdir, got {str(tmp_path / 'w')!r}")
  assert list(tmp_path.iterdir()) == []


def test_a_missing_run_is_a_one_line_error_before_any_output(tmp_path, capsys):
  import pytest

  from experiments.attention_analysis import main

  missing = tmp_path / "no_such_run"
  with pytest.raises(SystemExit) as exit_:
    main(["--run", f"x={missing}", "--out", str(tmp_path / "a")])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err
  assert (
    err.strip()
    .splitlines()[-1]
    .endswith(  # argparse's: "<prog>: error: ..."
      f": error: --run x={missing}: --workdir {str(missing)!r} does not exist"
    )
  )
  assert list(tmp_path.iterdir()) == []


def _fake_run(workdir: Path, **model) -> Path:
  """A workdir holding only a run record of ``configs/tiny.py`` with ``model`` changed."""
  import json
  import runpy

  config = runpy.run_path(str(Path(__file__).parents[1] / "configs" / "tiny.py"))["get_config"]()
  config.model.update(model)
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"config": config.to_dict()}))
  return workdir


def _one_line_error(capsys, argv) -> str:
  import pytest

  from experiments.attention_analysis import main

  with pytest.raises(SystemExit) as exit_:
    main(argv)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err, err
  return err.strip().splitlines()[-1]


def test_a_run_the_analysis_does_not_cover_is_a_one_line_error(tmp_path, capsys):
  # Refused before any run is read (a trained LLA run got attention_stats' traceback).
  lla = _fake_run(tmp_path / "lla", attention="lla")
  line = _one_line_error(capsys, ["--run", f"x={lla}", "--out", str(tmp_path / "a")])
  assert line.endswith(f"--run x={lla}: model.attention='lla'; give a parallax or softmax run")
  assert not list(tmp_path.glob("a.*"))


def test_a_negative_min_row_is_a_one_line_error(tmp_path, capsys):
  run = _fake_run(tmp_path / "run")
  argv = ["--run", f"x={run}", "--out", str(tmp_path / "a"), "--min-row", "-1"]
  assert _one_line_error(capsys, argv).endswith("--min-row must be >= 0, got -1")


def test_the_report_says_which_rows_min_row_keeps(tmp_path, monkeypatch, capsys):
  """``attention_stats`` keeps rows at least ``min_row`` tokens into their document (0-based
  position >= min_row) for every statistic; the report said "more than min_row"."""
  from experiments import attention_analysis
  from parallax_jax.analysis.attention_stats import STATS

  run = _fake_run(tmp_path / "run")
  fake = {name: 0.5 for name in STATS} | {f"{name}_by_layer": [0.5] for name in STATS}
  monkeypatch.setattr(attention_analysis, "analyse", lambda w, m, i: {"step": 1, **fake})
  attention_analysis.main(["--run", f"x={run}", "--out", str(tmp_path / "a"), "--min-row", "4"])
  md = (tmp_path / "a.md").read_text()
  assert "- rows at least 4 tokens into their document (position >= 4 from 0), every" in md


def test_a_name_given_twice_is_a_one_line_error(tmp_path, capsys):
  """The results are keyed by name: a second ``x=`` silently replaced the first run."""
  a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
  argv = ["--run", f"x={a}", "--init", f"x={b}", "--out", str(tmp_path / "o")]
  assert _one_line_error(capsys, argv).endswith(
    f"--init x={b}: the name 'x' is taken by --run x={a}; give each run its own name"
  )
