"""``experiments/attention_analysis.py``'s output names (the analysis itself is checked in
test_run_record.py on a trained run)."""

from pathlib import Path

from experiments.attention_analysis import output_paths


def test_output_stem_with_a_dot_keeps_its_whole_name():
  # Path.with_suffix would cut "lr0.5_s0" to "lr0" and let a later "lr0.25" run overwrite it.
  paths = output_paths("out/attention_muon_softmax_lr0.5_s0")
  assert paths == {
    ext: Path(f"out/attention_muon_softmax_lr0.5_s0{ext}") for ext in (".json", ".md", ".png")
  }


def test_an_existing_output_is_refused_before_anything_runs(tmp_path):
  import pytest

  from experiments.attention_analysis import main
  from experiments.memory_scaling import main as memory_main

  (tmp_path / "a.md").write_text("earlier result\n")
  with pytest.raises(SystemExit, match=r"a.md exist\(s\); pass a new stem"):
    main(["--run", f"x={tmp_path / 'no_such_run'}", "--out", str(tmp_path / "a")])
  assert (tmp_path / "a.md").read_text() == "earlier result\n"
  (tmp_path / "m.json").write_text("{}")
  with pytest.raises(SystemExit, match="exists; pass a new path"):
    memory_main(["--out", str(tmp_path / "m.json")])
  assert (tmp_path / "m.json").read_text() == "{}"


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
