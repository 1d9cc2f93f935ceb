"""``experiments/memory_scaling.py``: its record's provenance and table, and its one-line
refusals (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

from experiments import memory_scaling


def test_writes_the_json_with_its_provenance_and_the_table_beside_it(tmp_path):
  out = tmp_path / "mem.json"
  memory_scaling.main(["--lengths", "32,64", "--implementations", "xla", "--out", str(out)])
  record = json.loads(out.read_text())
  assert {"date", "device", "backend", "jax", "versions", "command"} <= set(record)
  assert "jaxlib" in record["versions"]
  assert record["command"].endswith(f"--implementations xla --out {out}")
  table = (tmp_path / "mem.md").read_text()
  assert record["command"] in table
  for r in record["rows"]:
    assert f"| {r['T']} | {r['temp_bytes'] / 2**20:.1f} |" in table


@pytest.mark.parametrize(
  ("argv", "flag"),
  [
    (["--lengths", "-64"], "--lengths"),
    (["--lengths", "abc"], "--lengths"),
    (["--implementations", "foo"], "--implementations"),
    (["--implementations", "pallas_gpu"], "--implementations pallas_gpu"),  # GPU-only on CPU
    (["--out", "{tmp}/no_dir/m.json"], "--out"),
    (["--out", "{tmp}/taken.json"], "--out"),
  ],
)
def test_bad_arguments_are_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
  (tmp_path / "taken.md").write_text("earlier result\n")
  argv = ["--lengths", "32", *[a.format(tmp=tmp_path) for a in argv]]
  with pytest.raises(SystemExit) as exit_:
    memory_scaling.main(argv)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err
  assert f"error: {flag}" in err.strip().splitlines()[-1]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.md"]
