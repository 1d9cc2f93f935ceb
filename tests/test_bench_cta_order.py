"""``experiments/bench_cta_order.py`` on CPU: the Mosaic GPU interpreter runs every kernel in
both CTA orders (device times need a GPU), and the table's ratio is read the right way round."""

from __future__ import annotations

import json

import pytest

from experiments import bench_cta_order
from pallas_kernels.mosaic_gpu import common


# slow (27 s on 2 cores): the default CTA order's gradients are in the default suite
# (test_mosaic_gpu_backward.py::test_interpret_cta_orders); this checks the script's table
@pytest.mark.slow
def test_runs_every_kernel_in_both_orders(tmp_path):
  argv = ["--interpret", "--shapes", "1x128", "--heads", "2", "--head-dim", "64", "--iters", "1"]
  with common.interpret_compile_cache():
    result = bench_cta_order.main(argv + ["--out-dir", str(tmp_path)])
  rows = result["rows"]
  assert [(r["kernel"], r["cta_order"]) for r in rows] == [
    (k, o) for k in ("fwd", "dq_dr", "dk_dv") for o in ("heads_outer", "seq_outer")
  ]
  assert all("error" not in r and r["wall_ms"] > 0 for r in rows), rows
  (written,) = tmp_path.glob("bench_cta_order_*.json")
  assert json.loads(written.read_text())["rows"] == json.loads(json.dumps(rows))


def test_table_ratio_is_heads_outer_over_seq_outer():
  rows = [
    {"B": 2, "L": 8192, "kernel": "fwd", "cta_order": "heads_outer", "device_us": 1800.0},
    {"B": 2, "L": 8192, "kernel": "fwd", "cta_order": "seq_outer", "device_us": 2000.0},
    {"B": 2, "L": 8192, "kernel": "dq_dr", "cta_order": "heads_outer", "device_us": None},
    {"B": 2, "L": 8192, "kernel": "dq_dr", "cta_order": "seq_outer", "device_us": 10.0},
  ]
  meta = {"date": "d", "device": "x", "versions": {}, "command": "c", "config": {}}
  md = bench_cta_order.to_markdown({**meta, "rows": rows})
  assert "| 2 | 8192 | fwd | 1800.0 | 2000.0 | 0.900 |" in md
  assert "| 2 | 8192 | dq_dr | - | 10.0 | - |" in md
