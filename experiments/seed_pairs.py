"""CLI: a sweep's arms compared seed by seed (``parallax_jax.sweeps.pairs``).

python -m experiments.seed_pairs runs/gpu_study_lm/results.csv --value eval_loss --base softmax
"""

from __future__ import annotations

import argparse

from parallax_jax.sweeps.pairs import paired_tables


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("csv")
  p.add_argument("--value", default="eval_loss")
  p.add_argument("--base", default="softmax", help="the arm each arm is compared with")
  p.add_argument("--fmt", default="{:.3f}")
  args = p.parse_args(argv)
  print(paired_tables(args.csv, args.value, args.base, args.fmt), end="")


if __name__ == "__main__":
  main()
