"""Correctness smoke test of the pallas_gpu kernels on a real GPU, over the shared case grid.

  python experiments/gpu_smoke.py              # compiles real Triton kernels, core cases
  python experiments/gpu_smoke.py --all        # every case of the grid
  python experiments/gpu_smoke.py --interpret  # same on CPU (interpret mode)

Cases, the float64 oracle and the tolerances come from ``parallax_jax/testing`` (the same ones
``python -m pytest -m gpu`` uses); prints max-norm and RMS relative errors of o, dq, dr, dk, dv.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parallax_jax.benchmarking import cli_checks  # noqa: E402
from parallax_jax.testing.attention_cases import (  # noqa: E402
  CASES,
  CORE_CASES,
  check_case,
  errors,
  natural_scale,
  oracle_result,
  run_op,
)


def run(case, interpret: bool) -> bool:
  t0 = time.time()
  o, grads = run_op("pallas_gpu", case, interpret=interpret)
  o_ref, grads_ref = oracle_result(case)
  natural = natural_scale(case)
  errs = [errors(x, y, natural) for x, y in zip((o, *grads), (o_ref, *grads_ref), strict=True)]
  try:
    check_case(o, grads, case)
    ok, why = True, ""
  except AssertionError as e:
    ok, why = False, f" [{e}]"
  print(
    f"{'ok  ' if ok else 'FAIL'} {case.id}: "
    + " ".join(
      f"{n}={m:.1e}/{r:.1e}" for n, (m, r) in zip(("o", "dq", "dr", "dk", "dv"), errs, strict=True)
    )
    + f" ({time.time() - t0:.1f}s){why}",
    flush=True,
  )
  return ok


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--all", action="store_true", help="every case of the grid (default: core cases)")
  p.add_argument(
    "--interpret", action="store_true", help="Pallas interpret mode: the same cases on CPU (slow)"
  )
  args = p.parse_args(argv)
  if not args.interpret:  # off a GPU every case would end in the same traceback
    cli_checks.gpu_host(p, "compiles the kernels", "pass --interpret")
  interpret = args.interpret
  results = []
  for case in CASES if args.all else CORE_CASES:
    try:
      results.append(run(case, interpret))
    except Exception as e:  # noqa: BLE001  (report every case, then fail)
      import traceback

      traceback.print_exc()
      print("ERROR", case.id, type(e).__name__, str(e)[:2000], flush=True)
      results.append(False)
  print(f"{sum(results)}/{len(results)} ok")
  return 0 if all(results) else 1


if __name__ == "__main__":
  sys.exit(main())
