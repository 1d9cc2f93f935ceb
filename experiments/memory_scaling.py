"""Temporary memory of forward+backward vs sequence length, from XLA's compiled memory analysis.

Compiles (does not run) ``jax.grad`` of ``sum(parallax_attention(...))`` for each implementation
and length, and reports ``temp_size_in_bytes``: the "xla" path should grow linearly in T, the
dense "reference" quadratically. Runs on any backend (the numbers are the target backend's).

  python -m experiments.memory_scaling --lengths 2048,4096,8192,16384 \
      --out experiments/results/memory_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import jax

from parallax_jax.benchmarking.memory import temp_bytes


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="2048,4096,8192,16384")
  parser.add_argument("--implementations", default="xla,reference")
  parser.add_argument("--out", default=None, help="write a JSON record here")
  args = parser.parse_args(argv)
  if args.out and os.path.exists(args.out):  # a result file is never overwritten
    raise SystemExit(f"--out {args.out} exists; pass a new path")
  rows = []
  for impl in args.implementations.split(","):
    for length in map(int, args.lengths.split(",")):
      b = temp_bytes(impl, length)
      rows.append({"implementation": impl, "T": length, "temp_bytes": b})
      print(f"{impl:>10} T={length:>6}: temp {b / 2**20:10.1f} MiB", flush=True)
  record = {
    "what": "temp_size_in_bytes of jit(grad(sum(parallax_attention))) , B=1 H=4 D=64 fp32",
    "date": datetime.date.today().isoformat(),
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "rows": rows,
  }
  if args.out:
    with open(args.out, "w") as f:
      json.dump(record, f, indent=2)
  return record


if __name__ == "__main__":
  main()
