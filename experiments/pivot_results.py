"""CLI: a sweep's ``results.csv`` as one markdown table (``parallax_jax.sweeps.pivot``).

  python -m experiments.pivot_results runs/study_mqar/results.csv \\
      --rows variant --cols model.attention --value eval_accuracy
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.pivot import pivot


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("csv")
  p.add_argument("--rows", required=True)
  p.add_argument("--cols", required=True)
  p.add_argument("--value", required=True)
  p.add_argument("--fmt", default="{:.3f}")
  args = p.parse_args(argv)
  if not Path(args.csv).is_file():
    p.error(f"csv {args.csv!r} does not exist; give a sweep's results.csv")
  try:  # the csv's own faults (a column it lacks, no finished point): one line
    print(pivot(args.csv, args.rows, args.cols, args.value, args.fmt))
  except UserError as e:
    p.error(str(e))


if __name__ == "__main__":
  main()
