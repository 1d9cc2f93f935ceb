"""Temporary memory of forward+backward vs sequence length, from XLA's compiled memory analysis.

Compiles (does not run) ``jax.grad`` of ``sum(parallax_attention(...))`` for each implementation
and length, and reports ``temp_size_in_bytes``: the "xla" path should grow linearly in T, the
dense "reference" quadratically. Runs on any backend (the numbers are the target backend's).

  python -m experiments.memory_scaling --lengths 2048,4096,8192,16384 \
      --out experiments/results/memory_scaling_cpu.json

Writes the ``--out`` JSON and the table beside it (``.md``); refuses either if it exists.
Without ``--out`` it prints the table.
"""

from __future__ import annotations

import argparse
import os

from parallax_jax.attention import implementations
from parallax_jax.benchmarking import cli_checks, result_files
from parallax_jax.benchmarking.memory import temp_bytes
from parallax_jax.benchmarking.run_info import run_info

WHAT = "temp_size_in_bytes of jit(grad(sum(parallax_attention))), B=1 H=4 D=64 fp32, causal"


def to_markdown(record: dict) -> str:
  impls = list(dict.fromkeys(r["implementation"] for r in record["rows"]))
  mib = {(r["implementation"], r["T"]): r["temp_bytes"] / 2**20 for r in record["rows"]}
  lines = [
    f"# Temporary memory of Parallax forward+backward vs T ({record['backend']})",
    "",
    f"- date: {record['date']}; device: {record['device']} ({record['backend']})",
    f"- versions: python {record['python']}, {record['versions']}",
    f"- what: {record['what']}",
    f"- command: `{record['command']}`",
    "",
    "| T | " + " | ".join(f"{i} (MiB)" for i in impls) + " |",
    "|---:|" + "---:|" * len(impls),
  ]
  for t in dict.fromkeys(r["T"] for r in record["rows"]):
    lines.append(f"| {t} | " + " | ".join(f"{mib[i, t]:.1f}" for i in impls) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="2048,4096,8192,16384")
  parser.add_argument("--implementations", default="xla,reference")
  parser.add_argument("--out", default=None, help="write a JSON record here (and its .md)")
  args = parser.parse_args(argv)
  lengths = cli_checks.positive_ints(parser, "--lengths", args.lengths)
  impls = args.implementations.split(",")
  unknown = [i for i in impls if i not in implementations.names()]
  if unknown:
    parser.error(f"--implementations: unknown {unknown}; choose from {implementations.names()}")
  if args.out:
    if not args.out.endswith(".json"):
      parser.error(f"--out {args.out}: give a .json path (the table goes beside it as .md)")
    stem = args.out[: -len(".json")]
    taken = [f for f in (f"{stem}.json", f"{stem}.md") if os.path.exists(f)]
    if taken:  # a result file is never overwritten
      parser.error(f"--out {args.out}: {', '.join(taken)} exist(s); pass a new path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
      parser.error(f"--out {args.out}: its folder does not exist; create it first")
  rows = []
  for impl in impls:
    for length in lengths:
      try:  # an implementation this backend cannot serve: one line, nothing written
        b = temp_bytes(impl, length)
      except (NotImplementedError, ValueError) as e:
        parser.error(f"--implementations {impl}: {str(e).splitlines()[0]}")
      rows.append({"implementation": impl, "T": length, "temp_bytes": b})
      print(f"{impl:>10} T={length:>6}: temp {b / 2**20:10.1f} MiB", flush=True)
  record = {"what": WHAT, **run_info("experiments.memory_scaling", argv), "rows": rows}
  if args.out:
    result_files.write(stem, record, to_markdown(record))
    print(f"wrote {stem}.json and {stem}.md")
  else:
    print(to_markdown(record), end="")
  return record


if __name__ == "__main__":
  main()
