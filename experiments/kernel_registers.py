"""Registers and spills of the Mosaic GPU kernels, per variant, from ptxas (a GPU machine).

docs/design.md §5.6 reads the kernels' limits from ncu (spill requests, stalls). This gives the
static side in seconds, without a profiler: for each variant of ``bench_fwd_math.VARIANTS``
(``fwd:<name>``) and ``bench_bwd_math.VARIANTS`` (``bwd:<name>``), a child process compiles the
kernels once with ``MOSAIC_GPU_DUMP_PTXAS=1`` (Mosaic then prints ``ptxas -v`` for every kernel
it builds) and this process parses the registers, stack frame and spill bytes of each kernel
(``parallax_jax.benchmarking.ptxas_report``). Registers do not depend on B, L or H, so the
children compile at a small shape.

  python3 experiments/kernel_registers.py --jobs 8 --out-dir $OUT
  python3 experiments/kernel_registers.py --variants fwd:fma_first,bwd:fused --head-dim 64
Writes ``<out-dir>/kernel_registers_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bench_bwd_math, bench_fwd_math, bench_kernels  # noqa: E402
from parallax_jax.benchmarking import cli_checks, ptxas_report, result_files, run_info  # noqa: E402

KINDS = {"fwd": bench_fwd_math, "bwd": bench_bwd_math}
DEFAULT_VARIANTS = [f"{k}:{v}" for k, mod in KINDS.items() for v in mod.VARIANTS]
CHILD_SHAPE = (1, 1024, 2)  # (B, L, H): compile-only


def compile_variant(variant: str, head_dim: int) -> None:
  """Child: build and run ``variant`` once at ``CHILD_SHAPE`` with ptxas' report switched on
  for its own kernels only (the backward's residuals come from a forward compiled before)."""
  import jax

  kind, name = variant.split(":")
  batch, length, heads = CHILD_SHAPE
  inputs = bench_kernels.make_inputs(batch, length, heads, head_dim, "bfloat16")
  if kind == "bwd":
    inputs = bench_bwd_math.with_residuals(inputs, head_dim, length, None, False)
    build = bench_bwd_math.backward_call
  else:
    build = bench_fwd_math.forward_call
  fn, call_args = build(head_dim, length, None, False, name, inputs)
  os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"  # read by Mosaic (getenv) at each kernel's compile
  jax.block_until_ready(fn(*call_args))
  sys.stdout.flush()


def run_child(variant: str, head_dim: int, timeout: int) -> tuple[list[dict], str | None]:
  """``(kernels, error)`` of one variant compiled in its own process (Mosaic prints from C++
  to the process' stdout, which only a parent can capture)."""
  cmd = [sys.executable, __file__, "--child", variant, "--head-dim", str(head_dim)]
  try:
    # Children share the GPU: none may take jax's default 75% of its memory.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return [], f"timed out after {timeout} s"
  kernels = ptxas_report.parse(done.stdout)
  if done.returncode != 0:
    lines = done.stderr.strip().splitlines() or [""]
    errors = [x for x in lines if re.match(r"^[\w.]+(Error|Exception)\b", x)]
    return kernels, f"exit {done.returncode}: {(errors or lines)[-1][:500]}"
  if not kernels:
    return [], "no ptxas report in the child's output (MOSAIC_GPU_DUMP_PTXAS unsupported?)"
  return kernels, None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma list of kind:name")
  p.add_argument("--head-dim", type=int, default=128, help="head width D of the kernels")
  p.add_argument("--timeout", type=int, default=300, help="seconds per child")
  p.add_argument("--jobs", type=int, default=1, help="children compiling at once")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument(
    "--out-dir",
    default=os.path.join(os.path.dirname(__file__), "results"),
    help="folder of the result files (default: experiments/results)",
  )
  args = p.parse_args(argv)
  chosen = args.variants.split(",")
  unknown = [v for v in chosen if v not in DEFAULT_VARIANTS]
  if unknown:
    p.error(f"--variants: unknown {unknown}; choose from {DEFAULT_VARIANTS}")
  cli_checks.at_least(p, args, 1, "head_dim", "timeout", "jobs")
  if args.child:
    compile_variant(args.child, args.head_dim)
    return None
  cli_checks.gpu_host(p, "compiles the Mosaic GPU kernels")  # else error rows only
  now = datetime.datetime.now()
  command = run_info.command("experiments.kernel_registers", argv)
  result = bench_kernels.run_header(args, ("head_dim", "timeout"), now, command, shape=CHILD_SHAPE)
  result["what"] = "kernel_registers"
  stem = result_files.new_stem(args.out_dir, f"kernel_registers_{now.strftime('%Y-%m-%d_%H%M%S')}")
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # children in parallel
    reports = pool.map(lambda v: run_child(v, args.head_dim, args.timeout), chosen)
  for variant, (kernels, error) in zip(chosen, reports, strict=True):
    for k in kernels or [{}]:
      row = {"variant": variant, **k} | ({"error": error} if error else {})
      result_files.add_row(stem, result, row, to_markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return result


def to_markdown(result: dict) -> str:
  out = [f"# kernel_registers {result['date']}", ""]
  out += [f"- {k}: {result[k]}" for k in ("device", "versions", "command", "config", "shape")]
  out += ["", "ptxas, per thread (registers after Mosaic's `setmaxnreg` are not shown: the"]
  out += ["consumers get 232 with the producer at 40, 240 at 24):", ""]
  out += ["| variant | kernel | registers | stack bytes | spill stores | spill loads | note |"]
  out += ["|---|---|---:|---:|---:|---:|---|"]
  for r in result["rows"]:
    cells = [r.get(c) for c in ("registers", "stack_bytes", "spill_store_bytes")]
    cells.append(r.get("spill_load_bytes"))
    shown = " | ".join("-" if c is None else str(c) for c in cells)
    out.append(f"| {r['variant']} | {r.get('kernel', '-')} | {shown} | {r.get('error', '')} |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
