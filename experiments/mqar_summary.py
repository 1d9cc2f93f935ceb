"""CLI: an MQAR sweep's recall per point (``parallax_jax.sweeps.recall``).

python -m experiments.mqar_summary experiments/results/studies_gpu/gpu_study_mqar/points
  --threshold: the accuracy that counts as recall learnt (default 0.95)
  --plot PATH: also write the final accuracy against the pair count (a PNG; a new file, or
    --overwrite)
Prints the per-point table, then the runs that learnt recall per kind and pair count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.recall import learnt_table, read_points, recall_figure, recall_table
from parallax_jax.train.plots import check_image_path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("points", help="a sweep workdir's points/ folder")
  p.add_argument("--threshold", type=float, default=0.95)
  p.add_argument("--plot", default=None, help="write the recall figure to this PNG")
  p.add_argument("--overwrite", action="store_true", help="replace --plot if it exists")
  args = p.parse_args(argv)
  if not 0 < args.threshold <= 1:
    p.error(f"--threshold must be in (0, 1], got {args.threshold}")
  if not Path(args.points).is_dir():
    p.error(f"points {args.points!r} does not exist; give a sweep workdir's points/ folder")
  try:  # a --plot it would not write as named or would replace unasked, no MQAR point there,
    # or two runs in one cell: one line, before anything is printed
    if args.plot:
      check_image_path(args.plot, "--plot", overwrite=args.overwrite)
    points = read_points(args.points, args.threshold)
    print(recall_table(points, args.threshold))
  except UserError as e:
    p.error(str(e))
  print(learnt_table(points), end="")
  if args.plot:
    recall_figure(points).savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
