"""Where each attention kernel's time goes: an Nsight Compute profile of one forward+backward.

For each path (names of ``bench_kernels.path_fns``) and (B, L), runs this file's ``--workload``
(one jitted fwd+bwd, called twice) under ``ncu`` with the launch, occupancy, throughput, compute,
memory, warp-state and scheduler sections plus the raw stall and tensor-pipe metrics of
``parallax_jax.benchmarking.ncu_report``, and writes per kernel: time, registers per thread,
shared memory per block, what bounds the blocks per SM, achieved occupancy, issue-slot and
tensor-pipe use, DRAM throughput and the top warp stall reasons (docs/design.md §5.6). ncu
replays every kernel many times, so times here are ncu's, for ranking only; speed figures come
from ``bench_kernels.py``. Needs ncu with hardware counters (``--clock-control none``: the
clocks are left alone). Every cell is isolated: an error is recorded and the run goes on.

  python3 experiments/profile_kernels.py --paths pallas_mosaic_gpu,pallas_gpu,softmax_cudnn \\
      --shapes 2x8192 --out-dir $OUT
Writes ``<out-dir>/profile_kernels_<date>.json`` (every metric ncu printed) and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bench_kernels  # noqa: E402
from parallax_jax.benchmarking import ncu_report, result_files, run_info  # noqa: E402

SECTIONS = (
  "LaunchStats",
  "Occupancy",
  "SpeedOfLight",
  "ComputeWorkloadAnalysis",
  "MemoryWorkloadAnalysis",
  "WarpStateStats",
  "SchedulerStats",
)
# ncu --kernel-name filter per path: our kernels' names start "parallax" (Mosaic adds
# "_mosaic_gpu"); cuDNN's hold "sdpa" or "flash".
KERNELS = {"softmax_cudnn": "regex:sdpa|flash"}


def kernel_filter(path: str) -> str:
  return KERNELS.get(path, "regex:parallax|mosaic_gpu")


def workload(path: str, batch: int, length: int, heads: int, head_dim: int, dtype: str) -> None:
  """One jitted fwd+bwd of ``path``, compiled, then called twice (the second is warm)."""
  import jax

  fwd_bwd = bench_kernels.fwd_bwd_fn(bench_kernels.path_fns(causal=True, interpret=False)[path])
  inputs = bench_kernels.make_inputs(batch, length, heads, head_dim, dtype)
  with bench_kernels.path_context(path):
    for _ in range(2):
      jax.block_until_ready(fwd_bwd(*inputs))


def ncu_command(ncu: str, report: str, path: str, workload_args: list[str], metrics: bool):
  cmd = [ncu, "--clock-control", "none", "--target-processes", "all", "-f", "-o", report]
  # two calls of at most 5 kernels each; the cap also bounds any autotuning launches' replays
  cmd += ["--kernel-name", kernel_filter(path), "--launch-count", "12"]
  for s in SECTIONS:
    cmd += ["--section", s]
  if metrics:
    cmd += ["--metrics", ",".join(ncu_report.RAW_METRICS)]
  return cmd + [sys.executable, os.path.abspath(__file__), "--workload", *workload_args]


def profile_cell(ncu: str, path: str, shape, args) -> dict:
  """The summaries of the warm call's kernels (the last launch of each name)."""
  batch, length = shape
  wl = [f"--paths={path}", f"--shapes={batch}x{length}", f"--heads={args.heads}"]
  wl += [f"--head-dim={args.head_dim}", f"--dtype={args.dtype}"]
  with tempfile.TemporaryDirectory() as d:
    report = os.path.join(d, "profile")
    errors = []
    for metrics in (True, False):  # an ncu without a raw metric refuses the whole run
      run = subprocess.run(
        ncu_command(ncu, report, path, wl, metrics), capture_output=True, text=True
      )
      if run.returncode == 0:
        break
      errors.append(f"ncu rc={run.returncode} (raw metrics {metrics}): {run.stderr[-600:]}")
    else:
      raise RuntimeError(" | ".join(errors))
    text = subprocess.run(
      [ncu, "--import", report + ".ncu-rep", "--csv", "--page", "details", "--print-units", "base"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout
  try:
    records = ncu_report.parse_details_csv(text)
  except Exception as e:  # noqa: BLE001 - keep ncu's text, so the profile is not lost
    return {"error": f"parsing ncu's csv: {type(e).__name__}: {e}"[:2000], "csv": text}
  if not records:
    return {"error": f"ncu profiled no kernel matching {kernel_filter(path)!r}"}
  last = {r["kernel"]: r for r in records}  # launch order: the warm call's come last
  return {
    "raw_metrics": metrics,
    "summaries": [ncu_report.summarize(r) for r in last.values()],
    "records": list(last.values()),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--paths", default="pallas_mosaic_gpu,pallas_gpu,softmax_cudnn")
  p.add_argument("--shapes", default="2x8192", help="comma list of BxL")
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument(
    "--ncu", default="ncu", help="the ncu (Nsight Compute) to run: a path or a name on PATH"
  )
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument("--workload", action="store_true", help="(internal) the profiled program")
  args = p.parse_args(argv)
  shapes = bench_kernels.parse_shapes(p, args.shapes)
  paths = bench_kernels.check_paths(p, args.paths)
  if args.workload:
    return workload(paths[0], *shapes[0], args.heads, args.head_dim, args.dtype)
  ncu = shutil.which(args.ncu)
  if ncu is None:  # else a FileNotFoundError traceback at its first call
    p.error(f"--ncu: {args.ncu!r} not found; this needs Nsight Compute: pass --ncu /path/to/ncu")
  args.ncu = ncu

  now = datetime.datetime.now()
  meta = {
    "date": now.isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "versions": bench_kernels.versions(),
    "command": run_info.command("experiments.profile_kernels", argv),
    "config": {"heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype},
    "ncu": subprocess.run([args.ncu, "--version"], capture_output=True, text=True).stdout.strip(),
  }
  stem = result_files.new_stem(args.out_dir, f"profile_kernels_{now.strftime('%Y-%m-%d_%H%M%S')}")
  cells = []
  for shape in shapes:
    for path in paths:
      cell = result_files.measure_row(
        {"B": shape[0], "L": shape[1], "path": path},
        profile_cell,
        args.ncu,
        path,
        shape,
        args,
        max_chars=2000,
      )
      cells.append(cell)
      print(json.dumps({k: v for k, v in cell.items() if k not in ("records", "csv")}), flush=True)
      result_files.write(stem, {**meta, "cells": cells}, to_markdown(meta, cells))
  print(f"wrote {stem}.json and {stem}.md")


def to_markdown(meta: dict, cells: list[dict]) -> str:
  out = [f"# profile_kernels {meta['date']}", ""]
  out += [f"- {k}: {meta[k]}" for k in ("device", "versions", "ncu", "command", "config")]
  for c in cells:
    out += ["", f"## {c['path']}, B {c['B']}, L {c['L']}", ""]
    out.append(f"error: {c['error']}" if "error" in c else ncu_report.to_markdown(c["summaries"]))
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
