"""``parallax-jax plot``: several runs' curves overlaid in one PNG; the runs are only read."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import one_line_error, run_cli

from parallax_jax.cli import main
from parallax_jax.train.plots import curves_figure, run_labels

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _run(workdir: Path, scale: float, eval_key: str = "eval_loss") -> Path:
  workdir.mkdir(parents=True)
  records = [{"step": s, "loss": scale / s} for s in range(1, 11)]
  records[4][eval_key] = scale / 4
  records[9][eval_key] = scale / 8
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return workdir


def _files(directory: Path) -> dict[str, bytes]:
  return {
    str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
  }


def test_runs_are_overlaid_with_their_eval_curves(tmp_path):
  a, b = _run(tmp_path / "a", 4.0), _run(tmp_path / "x" / "b", 2.0, eval_key="eval_mse")
  fig = curves_figure(run_labels([a, b]))
  train_ax, eval_ax = fig.axes
  assert [line.get_label() for line in train_ax.lines] == ["a", "b"]
  assert [list(line.get_ydata()) for line in eval_ax.lines] == [[1.0, 0.5], [0.5, 0.25]]
  assert eval_ax.get_ylabel() == "eval_loss / eval_mse"
  same = run_labels([tmp_path / "1" / "run", tmp_path / "2" / "run"])
  assert list(same) == [str(tmp_path / "1" / "run"), str(tmp_path / "2" / "run")]


def test_plot_command_writes_only_its_out_file(tmp_path, monkeypatch):
  a, b = _run(tmp_path / "a", 4.0), _run(tmp_path / "b", 2.0)
  before = _files(tmp_path)
  monkeypatch.chdir(tmp_path)
  assert main(["plot", "--workdir", str(a), str(b)]) == 0
  assert (tmp_path / "plot.png").read_bytes().startswith(PNG)  # default: ./plot.png
  assert main(["plot", "--workdir", str(a), "--out", str(tmp_path / "o" / "one.png")]) == 0
  assert (tmp_path / "o" / "one.png").read_bytes().startswith(PNG)
  after = _files(tmp_path)
  assert sorted(set(after) - set(before)) == ["o/one.png", "plot.png"]
  assert {k: after[k] for k in before} == before


def test_plot_replaces_an_existing_out_only_when_asked(tmp_path, capsys):
  """A figure already there (one kept as a result) was replaced without a word."""
  from cli_runner import one_line_error, run_cli

  a = _run(tmp_path / "a", 4.0)
  out = tmp_path / "kept.png"
  out.write_bytes(b"kept")
  code, printed, err = run_cli(capsys, "plot", "--workdir", str(a), "--out", str(out))
  assert code == 2 and printed == "" and out.read_bytes() == b"kept"
  assert one_line_error(err).endswith(
    f"--out {str(out)!r} exists; give a new name, or --overwrite to replace it"
  )
  code, printed, _ = run_cli(capsys, "plot", "--workdir", str(a), "--out", str(out), "--overwrite")
  assert code == 0 and out.read_bytes().startswith(PNG)


def test_plot_of_a_directory_without_metrics_is_a_one_line_error(tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", "parallax_jax.cli", "plot", "--workdir", str(tmp_path)],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
  )
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
    f"parallax-jax: error: --workdir '{tmp_path}' has no metrics.jsonl: not a training run "
    "(or one that has not logged a step yet)"
  )
  assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
  "out,match",
  [
    # matplotlib raised "Format 'txt' is not supported" (a traceback).
    ("curves.txt", r"'\S*curves.txt': extension .txt is not an image format; .*png, .*svg"),
    # It wrote curvesX.png, and the command printed "wrote curvesX".
    ("curvesX", r"'\S*curvesX': no extension; .*give one of .*png.* \(e.g. '\S*curvesX.png'\)"),
    ("adir", r"'\S*adir' is a directory; give a file, e.g. '\S*adir/plot.png'"),
  ],
  ids=["unsupported", "no-extension", "directory"],
)
def test_plot_refuses_an_out_it_would_not_write_as_named(tmp_path, capsys, out, match):
  a = _run(tmp_path / "a", 4.0)
  (tmp_path / "adir").mkdir()
  before = sorted(tmp_path.rglob("*"))
  code, printed, err = run_cli(capsys, "plot", "--workdir", str(a), "--out", str(tmp_path / out))
  assert code == 2 and printed == "" and re.search(match, one_line_error(err))
  assert sorted(tmp_path.rglob("*")) == before
  # An extension matplotlib knows, in any case: the file printed is the file written.
  code, printed, _ = run_cli(capsys, "plot", "--workdir", str(a), "--out", str(tmp_path / "c.SVG"))
  assert code == 0 and printed.strip() == f"wrote {tmp_path / 'c.SVG'}"
  assert sorted(set(tmp_path.rglob("*")) - set(before)) == [tmp_path / "c.SVG"]


def test_plot_names_a_missing_workdir_and_a_sweep_s_runs(tmp_path, capsys):
  """Both said "has no metrics.jsonl: not a training run", with no fix."""
  from cli_runner import one_line_error, run_cli

  (tmp_path / "sweep.json").write_text("{}")
  for workdir, match in [
    (tmp_path / "nope", f"--workdir '{tmp_path / 'nope'}' does not exist"),
    (tmp_path, f"holds a sweep (sweep.json), not a run: its runs are {tmp_path / 'points'}/<name>"),
  ]:
    argv = ["plot", "--workdir", str(workdir), "--out", str(tmp_path / "p.png")]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and match in one_line_error(err)
  assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
