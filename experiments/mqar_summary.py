"""CLI: an MQAR sweep's recall per point (``parallax_jax.sweeps.recall``).

python -m experiments.mqar_summary experiments/results/studies_gpu/gpu_study_mqar/points
  --threshold: the accuracy that counts as recall learnt (default 0.95)
"""

from __future__ import annotations

import argparse

from parallax_jax.sweeps.recall import read_points, recall_table


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("points", help="a sweep workdir's points/ folder")
  p.add_argument("--threshold", type=float, default=0.95)
  args = p.parse_args(argv)
  if not 0 < args.threshold <= 1:
    p.error(f"--threshold must be in (0, 1], got {args.threshold}")
  print(recall_table(read_points(args.points, args.threshold), args.threshold), end="")


if __name__ == "__main__":
  main()
