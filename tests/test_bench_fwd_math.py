"""``experiments/bench_fwd_math.py`` on CPU: every forward variant runs in the Mosaic GPU
interpreter (device times need a GPU; the variants' values are checked against the oracle in
test_mosaic_gpu_forward.py), and the table's ratios are read the right way round."""

from __future__ import annotations

import json

import pytest

from experiments import bench_fwd_math
from pallas_kernels.mosaic_gpu import common


@pytest.mark.slow  # ~10 s: the interpreter compiles each variant
def test_runs_every_variant(tmp_path):
  argv = ["--interpret", "--shapes", "1x128", "--heads", "2", "--head-dim", "64", "--iters", "1"]
  with common.interpret_compile_cache():
    result = bench_fwd_math.main(argv + ["--out-dir", str(tmp_path)])
  rows = result["rows"]
  assert [r["variant"] for r in rows] == list(bench_fwd_math.VARIANTS)
  assert all("error" not in r and r["wall_ms"] > 0 for r in rows), rows
  (written,) = tmp_path.glob("bench_fwd_math_*.json")
  assert json.loads(written.read_text())["rows"] == json.loads(json.dumps(rows))


def test_unknown_variant_is_one_line(capsys):
  with pytest.raises(SystemExit):
    bench_fwd_math.main(["--variants", "v1,nope"])
  assert "--variants: unknown ['nope']" in capsys.readouterr().err


def test_table_ratio_is_variant_over_the_first():
  rows = [
    {"B": 2, "L": 8192, "variant": "v1", "device_us": 2000.0},
    {"B": 2, "L": 8192, "variant": "fma", "device_us": 1800.0},
    {"B": 2, "L": 8192, "variant": "fma_first", "device_us": None},
  ]
  meta = {"date": "d", "device": "x", "versions": {}, "command": "c", "config": {}}
  md = bench_fwd_math.to_markdown({**meta, "variants": bench_fwd_math.VARIANTS, "rows": rows})
  assert "| 2 | 8192 | 2000.0 | 1800.0 | - | 0.900 | - |" in md
