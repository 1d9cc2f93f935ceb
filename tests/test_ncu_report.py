"""``benchmarking.ncu_report`` on a hand-written Nsight Compute details CSV (values known), and
``experiments/profile_kernels.py``'s workload and command on CPU (ncu itself runs on the GPU)."""

from __future__ import annotations

import re

import jax
import pytest

from experiments import profile_kernels
from parallax_jax.benchmarking import ncu_report

HEADER = (
  '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
  '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'
)


def _row(i, kernel, section, name, unit, value):
  return (
    f'"{i}","7","python3","h","{kernel}","1","7","(256, 1, 1)","(64, 2, 16)","0","9.0",'
    f'"{section}","{name}","{unit}","{value}"'
  )


def _csv():
  stall = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
  rows = ["==PROF== Connected to process 7", HEADER]
  for i, kernel, dur, regs in (
    (0, "parallax_fwd", "1,234,000", 168),
    (1, "parallax_bwd_dq", "2000", 255),
  ):
    rows += [
      _row(i, kernel, "GPU Speed Of Light Throughput", "Duration", "nsecond", dur),
      _row(i, kernel, "GPU Speed Of Light Throughput", "DRAM Throughput", "%", "12.5"),
      _row(i, kernel, "Launch Statistics", "Registers Per Thread", "register/thread", regs),
      _row(
        i, kernel, "Launch Statistics", "Dynamic Shared Memory Per Block", "byte/block", "65,536"
      ),
      _row(i, kernel, "Launch Statistics", "Static Shared Memory Per Block", "byte/block", "0"),
      _row(i, kernel, "Occupancy", "Block Limit Registers", "block", "1"),
      _row(i, kernel, "Occupancy", "Block Limit Shared Mem", "block", "3"),
      _row(i, kernel, "Occupancy", "Block Limit Warps", "block", "8"),
      _row(i, kernel, "Occupancy", "Achieved Occupancy", "%", "11.9"),
      _row(
        i, kernel, "Memory Workload Analysis", "Local Memory Spilling Requests", "", "3,614,272"
      ),
      _row(i, kernel, "Memory Workload Analysis", "L2 Hit Rate", "%", "60.25"),
      _row(i, kernel, "Compute Workload Analysis", "Issue Slots Busy", "%", "40.1"),
      _row(i, kernel, "Command line profiler metrics", stall.format("barrier"), "", "0.5"),
      _row(i, kernel, "Command line profiler metrics", stall.format("long_scoreboard"), "", "2.25"),
      _row(i, kernel, "Command line profiler metrics", stall.format("wait"), "", "1.0"),
      _row(
        i, kernel, "Command line profiler metrics", stall.format("math_pipe_throttle"), "", "0.1"
      ),
      _row(i, kernel, "Command line profiler metrics", ncu_report.TENSOR_METRICS[0], "%", "61.0"),
      _row(i, kernel, "Command line profiler metrics", ncu_report.TENSOR_METRICS[1], "%", "0"),
    ]
  # SMEM traffic of the first kernel only: 3.2M load wavefronts, 0.8M of them conflicts; 2M
  # store wavefronts, 1.5M of them conflicts; 4M sectors reduced in L2
  (ld_wave, ld_conf), (st_wave, st_conf) = ncu_report.SMEM_METRICS.values()
  for name, value in (
    (ld_wave, "3,200,000"),
    (ld_conf, "800,000"),
    (st_wave, "2,000,000"),
    (st_conf, "1,500,000"),
    (ncu_report.L2_REDUCTION_METRIC, "4,000,000"),
  ):
    rows.append(_row(0, "parallax_fwd", "Command line profiler metrics", name, "", value))
  return "\n".join(rows) + "\n"


def test_parse_and_summarize_known_values():
  records = ncu_report.parse_details_csv(_csv())
  assert [r["kernel"] for r in records] == ["parallax_fwd", "parallax_bwd_dq"]
  assert records[0]["grid"] == "(64, 2, 16)"
  s = ncu_report.summarize(records[0])
  assert s["duration_us"] == pytest.approx(1234.0)  # thousands separators read as numbers
  assert s["registers_per_thread"] == 168
  assert s["shared_memory_per_block_kib"] == pytest.approx(64.0)
  assert s["blocks_per_sm_limited_by"] == "Registers"  # the smallest block limit
  assert s["tensor_pipe_pct"] == pytest.approx(61.0)  # the larger of gmma / hmma
  assert s["local_spill_requests"] == 3614272 and s["l2_hit_pct"] == pytest.approx(60.25)
  assert "| 60.2 | 3.61 |" in ncu_report.to_markdown([s])
  assert list(s["top_stalls"]) == ["long_scoreboard", "wait", "barrier"]
  assert s["smem_conflict_pct"] == {"ld": pytest.approx(25.0), "st": pytest.approx(75.0)}
  assert s["l2_reduction_sectors"] == 4e6
  assert "| 3.20 / 2.00 | 25.0 / 75.0 | 4.00 |" in ncu_report.to_markdown([s])
  no_smem = ncu_report.summarize(records[1])
  assert no_smem["smem_conflict_pct"] == {"ld": None, "st": None}
  assert "| - / - | - / - | - |" in ncu_report.to_markdown([no_smem])
  assert ncu_report.summarize(records[1])["duration_us"] == pytest.approx(2.0)
  table = ncu_report.to_markdown([ncu_report.summarize(r) for r in records])
  assert table.count("\n| parallax_") == 2 and "long_scoreboard 2.25" in table


def test_parse_refuses_text_without_header():
  with pytest.raises(ValueError, match="header"):
    ncu_report.parse_details_csv("==PROF== nothing profiled\n")


def test_missing_metrics_read_as_absent():
  (rec,) = ncu_report.parse_details_csv(
    HEADER + "\n" + _row(0, "k", "GPU Speed Of Light Throughput", "Duration", "nsecond", "5000")
  )
  s = ncu_report.summarize(rec)
  assert s["duration_us"] == 5.0 and s["registers_per_thread"] is None
  assert s["blocks_per_sm_limited_by"] is None and s["top_stalls"] == {}
  assert "| k | 5.0 | - |" in ncu_report.to_markdown([s])
  assert s["local_spill_requests"] is None and "| - | - | - | - |" in ncu_report.to_markdown([s])


def test_workload_runs_and_command_profiles_it():
  profile_kernels.workload("xla", 1, 128, 2, 32, "float32")  # the profiled program, on CPU
  cmd = profile_kernels.ncu_command("ncu", "/tmp/r", "pallas_gpu", ["--paths=pallas_gpu"], True)
  pattern = cmd[cmd.index("--kernel-name") + 1].removeprefix("regex:")
  # ncu's names of our Triton and Mosaic GPU kernels, and XLA's fusions around them
  for name in ("parallax_fwd", "parallax_bwd_dkv", "parallax_fwd_mgpu_mosaic_gpu_kernel"):
    assert re.search(pattern, name), name
  assert not re.search(pattern, "loop_convert_fusion") and not re.search(pattern, "gemm_fusion")
  assert cmd[cmd.index("--clock-control") + 1] == "none"
  assert "--workload" in cmd and ncu_report.STALL_METRICS[0] in cmd[cmd.index("--metrics") + 1]
  assert ncu_report.L2_REDUCTION_METRIC in cmd[cmd.index("--metrics") + 1]
  no_raw = profile_kernels.ncu_command("ncu", "/tmp/r", "softmax_cudnn", [], False)
  assert "--metrics" not in no_raw and "regex:sdpa|flash" in no_raw


def test_unknown_path_is_one_line_error(capsys):
  with pytest.raises(SystemExit) as e:
    profile_kernels.main(["--paths", "pallas_gpu,bogus"])
  assert e.value.code == 2 and "--paths: unknown ['bogus']" in capsys.readouterr().err


def test_a_missing_ncu_is_one_line_naming_the_flag(tmp_path, capsys):
  """Without ncu the run was a FileNotFoundError traceback; now one line saying Nsight Compute
  is needed and how to point to it (exit 2), before anything is written."""
  out = tmp_path / "out"
  with pytest.raises(SystemExit) as e:
    profile_kernels.main(["--ncu", str(tmp_path / "no_ncu"), "--out-dir", str(out)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" not in err and not out.exists()
  assert "error: --ncu: " in err and "Nsight Compute" in err and "--ncu /path/to/ncu" in err


def test_record_names_the_device(tmp_path):
  """The record named no device; it now does, as bench_kernels' (a stand-in ncu that fails
  each profile: the cell is an error row, the header is still written)."""
  import json

  fake = tmp_path / "ncu"
  fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "fake ncu" && exit 0\nexit 1\n')
  fake.chmod(0o755)
  argv = ["--ncu", str(fake), "--paths", "xla", "--shapes", "1x128", "--out-dir", str(tmp_path)]
  profile_kernels.main(argv)
  (written,) = tmp_path.glob("profile_kernels_*.json")
  record = json.loads(written.read_text())
  assert record["device"] == jax.devices()[0].device_kind and "error" in record["cells"][0]
  assert f"- device: {record['device']}" in written.with_suffix(".md").read_text()
