"""CLI: a sweep's arms compared seed by seed (``parallax_jax.sweeps.pairs``).

python -m experiments.seed_pairs runs/gpu_study_lm/results.csv --value eval_loss --base softmax
  --curves: also the paired difference at every eval, from the points beside the csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.pairs import paired_curves, paired_tables


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("csv")
  p.add_argument("--value", default="eval_loss")
  p.add_argument("--base", default="softmax", help="the arm each arm is compared with")
  p.add_argument("--fmt", default="{:.3f}")
  p.add_argument(
    "--curves", action="store_true", help="also each pair's difference at every logged step"
  )
  args = p.parse_args(argv)
  points = Path(args.csv).parent / "points"
  if not Path(args.csv).is_file():
    p.error(f"csv {args.csv!r} does not exist; give a sweep's results.csv")
  if args.curves and not points.is_dir():
    p.error(f"--curves: {str(points)!r} does not exist; it reads the points beside the csv")
  try:  # the csv's own faults (a column it lacks, no finished point): one line
    print(paired_tables(args.csv, args.value, args.base, args.fmt), end="")
    if args.curves:
      print()
      print(paired_curves(points, args.value, args.base, args.fmt), end="")
  except UserError as e:
    p.error(str(e))


if __name__ == "__main__":
  main()
