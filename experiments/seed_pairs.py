"""CLI: a sweep's arms compared seed by seed (``parallax_jax.sweeps.pairs``).

python -m experiments.seed_pairs runs/gpu_study_lm/results.csv --value eval_loss --base softmax
  --curves: also the paired difference at every eval, from the points beside the csv
  --plot P.png [--arms muon+parallax,adamw+parallax] [--title T]: the differences as a dot plot
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.pairs import paired_curves, paired_differences, paired_tables


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("csv")
  p.add_argument("--value", default="eval_loss")
  p.add_argument("--base", default="softmax", help="the arm each arm is compared with")
  p.add_argument("--fmt", default="{:.3f}")
  p.add_argument(
    "--curves", action="store_true", help="also each pair's difference at every logged step"
  )
  p.add_argument("--plot", help="also draw each arm's differences (a marker a seed) to this image")
  p.add_argument("--arms", help="--plot: these arms, in this order (comma-separated group+arm)")
  p.add_argument("--title", default="", help="--plot: the figure's title")
  p.add_argument("--overwrite", action="store_true", help="--plot: replace an existing file")
  args = p.parse_args(argv)
  if (args.arms or args.title or args.overwrite) and not args.plot:
    p.error("--arms, --title and --overwrite go with --plot")
  points = Path(args.csv).parent / "points"
  if not Path(args.csv).is_file():
    p.error(f"csv {args.csv!r} does not exist; give a sweep's results.csv")
  if args.curves and not points.is_dir():
    p.error(f"--curves: {str(points)!r} does not exist; it reads the points beside the csv")
  try:  # the csv's own faults (a column it lacks, no finished point): one line
    if args.plot:  # its mistakes before anything is printed
      from parallax_jax.sweeps.pairs_plot import plot_paired, select_arms
      from parallax_jax.train.plots import check_image_path

      out = check_image_path(args.plot, "--plot", overwrite=args.overwrite)
      arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
      diffs = select_arms(paired_differences(args.csv, args.value, args.base), arms)
    print(paired_tables(args.csv, args.value, args.base, args.fmt), end="")
    if args.curves:
      print()
      print(paired_curves(points, args.value, args.base, args.fmt), end="")
    if args.plot:
      xlabel = f"{args.value} minus {args.base!r} of the same group and seed"
      print(f"wrote {plot_paired(diffs, out, xlabel=xlabel, title=args.title)}")
  except UserError as e:
    p.error(str(e))


if __name__ == "__main__":
  main()
