"""CLI: a sweep's ``results.csv`` as one markdown table (``parallax_jax.sweeps.pivot``).

  python -m experiments.pivot_results runs/study_mqar/results.csv \\
      --rows variant --cols model.attention --value eval_accuracy
"""

from __future__ import annotations

import argparse

from parallax_jax.sweeps.pivot import pivot


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("csv")
  p.add_argument("--rows", required=True)
  p.add_argument("--cols", required=True)
  p.add_argument("--value", required=True)
  p.add_argument("--fmt", default="{:.3f}")
  args = p.parse_args(argv)
  print(pivot(args.csv, args.rows, args.cols, args.value, args.fmt))


if __name__ == "__main__":
  main()
