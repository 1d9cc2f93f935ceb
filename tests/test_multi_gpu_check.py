"""``experiments/multi_gpu_check.py`` (issue 13's ring and resharding checks) on 8 fake CPU
devices: the ring's loss and gradients against one device, a checkpoint saved under fsdp
restored onto one device and onto dp, and the reach table's rows, in the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest
from train_configs import SHARDABLE

from experiments import multi_gpu_check

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
  *SHARDABLE,
  "optimizer.warmup_steps=0",  # so that the saved steps move the params
  "optimizer.learning_rate=0.01",
]


# slow (75 s on 2 cores): the ring against one device and the restore onto another mesh are
# in the default suite (tests/sharded/test_context_parallel.py, tests/test_sharding.py)
@pytest.mark.slow
def test_all_parts_on_fake_devices(tmp_path):
  assert jax.device_count() == 8
  sets = [a for s in SMALL for a in ("--set", s)]
  argv = ["--config", str(ROOT / "configs" / "tiny.py"), *sets, "--out-dir", str(tmp_path)]
  result = multi_gpu_check.main([*argv, "--lengths", "64", "--equal-len", "64", "--steps", "3"])
  parts = result["parts"]
  assert parts["cp_equal"]["devices"] == 8
  assert parts["cp_equal"]["loss_rel_diff"] < 1e-6 and parts["cp_equal"]["grad_max_rel_err"] < 1e-5
  reach = parts["cp_reach"]
  assert [(r["kind"], r["devices"], r["fits"]) for r in reach] == [
    ("one device", 1, True),
    ("ring", 8, True),
  ]
  assert all(r["tokens_per_s"] > 0 and r["memory_bytes"] > 0 for r in reach)
  rs = parts["reshard"]
  assert rs["saved_step"] == 3
  # the check means something only if training moved the loss well past the 1e-6 tolerance
  assert abs(rs["same_batch_loss_at_init"] - rs["next_loss_fsdp"]) > 1e-5 * rs["next_loss_fsdp"]
  assert rs["rel_diff_one_device"] < 1e-6 and rs["rel_diff_dp"] < 1e-6
  (written,) = tmp_path.glob("multi_gpu_check_*.json")
  assert json.loads(written.read_text())["parts"]["reshard"] == rs
  assert "## cp_reach" in written.with_suffix(".md").read_text()


def test_unknown_part_is_one_line_error(capsys):
  with pytest.raises(SystemExit) as e:
    multi_gpu_check.main(["--config", "configs/tiny.py", "--parts", "reshard,bogus"])
  assert e.value.code == 2 and "--parts: unknown ['bogus']" in capsys.readouterr().err
