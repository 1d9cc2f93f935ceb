"""``benchmarking.result_files``: a run's own ``.json`` + ``.md``, never an earlier run's."""

from __future__ import annotations

import json

from parallax_jax.benchmarking import result_files


def test_new_stem_never_reuses_existing_files(tmp_path):
  out = tmp_path / "results"
  first = result_files.new_stem(out, "bench_lr0.5_2026-12-03")
  assert out.is_dir() and first == out / "bench_lr0.5_2026-12-03"
  result_files.write(first, {"a": 1}, "# one")
  second = result_files.new_stem(out, "bench_lr0.5_2026-12-03")
  assert second.name == "bench_lr0.5_2026-12-03_2"
  (out / "bench_lr0.5_2026-12-03_2.md").write_text("only the table")  # either file counts
  assert result_files.new_stem(out, "bench_lr0.5_2026-12-03").name.endswith("_3")
  assert json.loads((out / "bench_lr0.5_2026-12-03.json").read_text()) == {"a": 1}


def test_write_keeps_dotted_names_and_rewrites_its_own_files(tmp_path):
  stem = tmp_path / "check_lr0.5"
  result_files.write(stem, {"rows": [1]}, "# t")
  result_files.write(stem, {"rows": [1, 2], "path": tmp_path}, "# t\n")  # as rows arrive
  assert sorted(p.name for p in tmp_path.iterdir()) == ["check_lr0.5.json", "check_lr0.5.md"]
  assert json.loads((tmp_path / "check_lr0.5.json").read_text())["rows"] == [1, 2]
  assert (tmp_path / "check_lr0.5.md").read_text() == "# t\n"


def test_a_failed_row_is_recorded_and_the_rows_are_written_as_they_arrive(tmp_path, capsys):
  def measure(x):
    if x < 0:
      raise ValueError("x" * 50)
    return {"y": 2 * x, "raw": [0] * 3}

  stem = tmp_path / "bench"
  result = {"rows": []}
  md = lambda r: f"{len(r['rows'])} rows"  # noqa: E731
  for x in (1, -1):
    row = result_files.measure_row({"x": x}, measure, x, max_chars=20)
    result_files.add_row(stem, result, row, md, hide=("raw",))
  assert result["rows"] == [
    {"x": 1, "y": 2, "raw": [0, 0, 0]},
    {"x": -1, "error": "ValueError: xxxxxxxx"},
  ]
  assert json.loads((tmp_path / "bench.json").read_text()) == result
  assert (tmp_path / "bench.md").read_text() == "2 rows\n"
  printed = capsys.readouterr().out.splitlines()
  assert json.loads(printed[0]) == {"x": 1, "y": 2}  # less the hidden raw data


def test_save_takes_a_new_stem(tmp_path, capsys):
  first = result_files.save(tmp_path, "check", {"a": 1}, "# a")
  second = result_files.save(tmp_path, "check", {"a": 2}, "# a")
  assert (first.name, second.name) == ("check", "check_2")
  assert json.loads((tmp_path / "check.json").read_text()) == {"a": 1}
  assert "wrote" in capsys.readouterr().out
