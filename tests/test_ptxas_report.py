"""``ptxas_report.parse`` on ptxas' verbose output, and ``experiments/kernel_registers.py``'s
bookkeeping where no ptxas report comes (CPU)."""

from __future__ import annotations

import json

import jax
import pytest
from cli_runner import script_error

from experiments import kernel_registers
from parallax_jax.benchmarking import ptxas_report

SAMPLE = """\
some jax log line mentioning Used 99 registers before any entry
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'parallax_fwd_mgpu_kernel' for 'sm_90a'
ptxas info    : Function properties for parallax_fwd_mgpu_kernel
    16 bytes stack frame, 24 bytes spill stores, 32 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 472 bytes cmem[0]
ptxas info    : Compiling entry function 'parallax_bwd_dq_mgpu_kernel' for 'sm_90a'
ptxas info    : Function properties for parallax_bwd_dq_mgpu_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 160 registers, used 1 barriers, 472 bytes cmem[0]
ptxas info    : Compiling entry function 'no_props' for 'sm_90a'
"""


def test_parse_reads_each_entry_function():
  got = ptxas_report.parse(SAMPLE)
  assert got == [
    dict(
      kernel="parallax_fwd_mgpu_kernel",
      registers=168,
      stack_bytes=16,
      spill_store_bytes=24,
      spill_load_bytes=32,
    ),
    dict(
      kernel="parallax_bwd_dq_mgpu_kernel",
      registers=160,
      stack_bytes=0,
      spill_store_bytes=0,
      spill_load_bytes=0,
    ),
    dict(
      kernel="no_props",
      registers=None,
      stack_bytes=None,
      spill_store_bytes=None,
      spill_load_bytes=None,
    ),
  ]
  assert ptxas_report.parse("no ptxas here\nUsed 3 registers\n") == []


def test_kernel_registers_records_a_variant_without_a_report(tmp_path, monkeypatch):
  """A child that prints no ptxas report (here: no GPU) is one row with its error, and the
  run writes its files and goes on to the next variant."""

  def fake_run_child(variant, head_dim, timeout):
    if variant == "fwd:fma_first":
      return ptxas_report.parse(SAMPLE)[:1], None
    return [], "no ptxas report in the child's output"

  monkeypatch.setattr(kernel_registers, "run_child", fake_run_child)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  result = kernel_registers.main(
    ["--variants", "bwd:fused,fwd:fma_first", "--out-dir", str(tmp_path)]
  )
  rows = result["rows"]
  assert [r["variant"] for r in rows] == ["bwd:fused", "fwd:fma_first"]
  assert rows[0]["error"].startswith("no ptxas report") and "kernel" not in rows[0]
  assert rows[1]["spill_store_bytes"] == 24 and "error" not in rows[1]
  (json_file,) = tmp_path.glob("kernel_registers_*.json")
  assert json.loads(json_file.read_text())["rows"] == rows
  md = next(tmp_path.glob("kernel_registers_*.md")).read_text()
  assert "| fwd:fma_first | parallax_fwd_mgpu_kernel | 168 | 16 | 24 | 32 |" in md


@pytest.mark.parametrize(
  "argv, says",
  [
    (["--head-dim", "0"], "--head-dim: must be >= 1, got 0"),
    (["--jobs", "0"], "--jobs: must be >= 1, got 0"),
    ([], "compiles the Mosaic GPU kernels on a GPU, not on this 'cpu' host"),
  ],
  ids=["head-dim", "jobs", "no-gpu"],
)
def test_kernel_registers_refuses_what_would_only_write_error_rows(
  tmp_path, monkeypatch, capsys, argv, says
):
  """A head dim or job count below 1, or a host without a GPU, ran every child to an error and
  wrote a result file of error rows (exit 0)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  monkeypatch.setattr(kernel_registers, "run_child", lambda *a: pytest.fail("a child ran"))
  error = script_error(capsys, kernel_registers.main, [*argv, "--out-dir", str(tmp_path / "out")])
  assert error.endswith(f": error: {says}")
  assert not (tmp_path / "out").exists()
