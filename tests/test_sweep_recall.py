"""MQAR recall per sweep point (``parallax_jax.sweeps.recall``), on hand-made points."""

import json

import pytest

from experiments import mqar_summary
from parallax_jax.sweeps.recall import learnt_table, read_points, recall_figure, recall_table


def _point(root, name, *, kind, lr, seed, pairs, accuracies, status="finished", source="mqar"):
  d = root / f"variant={name}"
  d.mkdir(parents=True)
  (d / "status.json").write_text(json.dumps({"name": name, "status": status}))
  data = {"source": source, "mqar_num_pairs": pairs, "mqar_num_queries": pairs}
  config = {
    "data": {**data, "mqar_vocab_size": 1025},
    "model": {"num_layers": 2, "attention": kind},
    "optimizer": {"learning_rate": lr},
    "train": {"seed": seed},
  }
  (d / "config.json").write_text(json.dumps({"config": config}))
  lines = [{"step": 10 * i, "train_loss": 1.0} for i in range(1, 4)]  # records without evals
  lines += [{"step": 1000 * (i + 1), "eval_accuracy": a} for i, a in enumerate(accuracies)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_recall_table_reads_points_configs_and_curves(tmp_path, capsys):
  """A cell is the final accuracy with the first eval step at or above the threshold; a point
  that never got there has no step; a setting a row lacks is "-"; unfinished and non-MQAR
  points are left out; the last column is the guessing level of the row's task."""
  _point(tmp_path, "a", kind="parallax", lr=1e-3, seed=0, pairs=4, accuracies=[0.5, 0.96, 0.99])
  _point(tmp_path, "b", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[0.5, 0.52, 0.51])
  _point(tmp_path, "c", kind="softmax", lr=1e-3, seed=1, pairs=4, accuracies=[0.2, 0.4, 0.94])
  _point(tmp_path, "d", kind="softmax", lr=3e-3, seed=0, pairs=4, accuracies=[1.0], status="failed")
  _point(tmp_path, "e", kind="softmax", lr=1e-3, seed=0, pairs=8, accuracies=[1.0], source="lm")
  points = read_points(tmp_path)
  assert sorted((p.kind, p.seed, p.learnt_at) for p in points) == [
    ("parallax", 0, 2000),
    ("softmax", 0, None),
    ("softmax", 1, None),
  ]
  table = recall_table(points)
  rows = [line for line in table.splitlines() if line.startswith("| 2 |")]
  assert rows == [
    "| 2 | 4 | 0 | 0.9900 (2000) | 0.5100 | 0.522 |",
    "| 2 | 4 | 1 | - | 0.9400 | 0.522 |",
  ]
  assert "parallax 0.001 | softmax 0.001 | guessing level" in table
  mqar_summary.main([str(tmp_path), "--threshold", "0.9"])  # a lower threshold: c learnt it
  assert "| 2 | 4 | 1 | - | 0.9400 (3000) | 0.522 |" in capsys.readouterr().out


def test_recall_table_needs_a_finished_mqar_point(tmp_path):
  _point(tmp_path, "x", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[1.0], source="lm")
  with pytest.raises(ValueError, match="no finished MQAR point"):
    read_points(tmp_path)


def test_learnt_table_counts_runs_per_kind_and_pair_count(tmp_path, capsys):
  """A cell counts the kind's runs at that pair count that reached the threshold, over every
  rate and seed; a kind without runs there is "-". ``--plot`` writes the figure: a panel per
  layer count, a legend entry per (kind, rate)."""
  _point(tmp_path, "a", kind="parallax", lr=1e-3, seed=0, pairs=4, accuracies=[0.5, 0.96])
  _point(tmp_path, "b", kind="parallax", lr=3e-3, seed=0, pairs=4, accuracies=[0.97, 0.6])
  _point(tmp_path, "c", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[0.5, 0.52])
  _point(tmp_path, "d", kind="softmax", lr=1e-3, seed=1, pairs=4, accuracies=[0.2, 0.99])
  _point(tmp_path, "e", kind="softmax", lr=1e-3, seed=0, pairs=16, accuracies=[0.2, 0.21])
  points = read_points(tmp_path)
  rows = [line for line in learnt_table(points).splitlines() if line.startswith("| 2 |")]
  # b reached the threshold at its first eval and fell back: it learnt recall once
  assert rows == ["| 2 | 4 | 2 of 2 | 1 of 2 |", "| 2 | 16 | - | 0 of 1 |"]
  fig = recall_figure(points)
  assert len(fig.axes) == 1
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels == ["parallax 0.001", "parallax 0.003", "softmax 0.001"]
  png = tmp_path / "recall.png"
  mqar_summary.main([str(tmp_path), "--plot", str(png)])
  out = capsys.readouterr().out
  assert "| 2 | 4 | 2 of 2 | 1 of 2 |" in out and png.stat().st_size > 0
  # An existing figure is not replaced unasked (it was, silently): one line, nothing printed
  png.write_bytes(b"kept")
  with pytest.raises(SystemExit) as exc:
    mqar_summary.main([str(tmp_path), "--plot", str(png)])
  captured = capsys.readouterr()
  assert exc.value.code == 2 and captured.out == "" and png.read_bytes() == b"kept"
  assert f"--plot {str(png)!r} exists; give a new name, or --overwrite" in captured.err
  mqar_summary.main([str(tmp_path), "--plot", str(png), "--overwrite"])
  assert png.read_bytes().startswith(b"\x89PNG")


def test_recall_table_refuses_two_runs_in_one_cell(tmp_path):
  """Two runs of one task and setting that differ elsewhere (e.g. a width axis) would share a
  cell, which showed one of them without a word."""
  _point(tmp_path, "a", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[0.3])
  _point(tmp_path, "b", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[0.99])
  with pytest.raises(ValueError, match="2 runs of layers 2, pairs 4, seed 0 at softmax 0.001"):
    recall_table(read_points(tmp_path))


def test_mqar_summary_refuses_a_missing_or_non_mqar_folder_in_one_line(tmp_path, capsys):
  none = tmp_path / "none"
  for folder, says in (
    (none, f"points {str(none)!r} does not exist; give a sweep workdir's points/ folder"),
    (tmp_path, f"{tmp_path}: no finished MQAR point with an eval_accuracy"),
  ):
    with pytest.raises(SystemExit) as exit_:
      mqar_summary.main([str(folder)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith(says)


def test_mqar_summary_names_a_damaged_status_or_config_json_in_one_line(tmp_path, capsys):
  """A cut status.json or config.json ended the summary in a JSONDecodeError traceback."""
  for bad in ("status.json", "config.json"):
    root = tmp_path / bad
    _point(root, "a", kind="softmax", lr=1e-3, seed=0, pairs=4, accuracies=[0.99])
    (root / "variant=a" / bad).write_text('{"status": "fin')
    with pytest.raises(SystemExit) as exit_:
      mqar_summary.main([str(root)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert f"{root / 'variant=a' / bad}" in err.strip().splitlines()[-1]
