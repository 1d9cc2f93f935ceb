"""Study 3: how trained models attend (effective weights), Parallax against softmax.

Loads the latest checkpoint of each run, runs its held-out batches and reports per layer (mean
over heads) the share of negative effective weights, of weights above 1, the negative mass per
row, and the weight on the document's first token (the attention sink) next to what uniform
attention would give (``parallax_jax.analysis.attention_stats``).

  python -m experiments.attention_analysis \\
      --run parallax=runs/study_tiny_lm/points/variant=muon+parallax,seed=0 \\
      --run softmax=runs/study_tiny_lm/points/variant=muon+softmax,seed=0 \\
      --init parallax_init=runs/study_tiny_lm/points/variant=muon+parallax,seed=0 \\
      --out experiments/results/studies/attention_analysis
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from parallax_jax.analysis import attention_stats
from parallax_jax.analysis.attention_stats import KINDS
from parallax_jax.errors import UserError
from parallax_jax.train.loop import Trainer
from parallax_jax.train.run_record import load_run_config

ROWS = (
  ("negative", "negative weights", "{:.2%}"),
  ("above_one", "weights > 1", "{:.2%}"),
  ("negative_mass", "negative mass / row", "{:.3f}"),
  ("first_token", "first-token weight", "{:.3f}"),
  ("first_token_uniform", "(uniform would give)", "{:.3f}"),
)


def analyse(workdir: Path, min_row: int, at_init: bool = False) -> dict:
  """Stats of the latest checkpoint in ``workdir``, or (``at_init``) of its config's fresh
  initialisation (same seed): what training changed."""
  trainer = Trainer(load_run_config(workdir), workdir, read_only=True)
  try:
    if at_init:
      step, params = 0, trainer.program.init(trainer.exp.train.seed).params
    else:  # the params alone: the optimizer state stays on disk
      step, params = trainer.read_params()
  finally:
    trainer.checkpointer.close()
  batches = [
    {k: None if v is None else jnp.asarray(v) for k, v in b.items()}
    for b in trainer.data.eval_batches()
  ]
  stats = attention_stats(
    trainer.program.graphdef, jax.device_get(params), batches, min_row=min_row
  )
  return {
    "workdir": str(workdir),
    "step": step,
    "attention": trainer.exp.model.attention,
    "optimizer": trainer.exp.optimizer.name,
    **stats.summary(),
  }


def _plot(results: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, (key, title) in zip(
    axes,
    [
      ("negative_by_layer", "share of negative weights"),
      ("above_one_by_layer", "share of weights > 1"),
      ("first_token_by_layer", "weight on the first token"),
    ],
    strict=True,
  ):
    for name, r in results.items():
      ax.plot(range(len(r[key])), r[key], marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel("layer")
    ax.set_xticks(range(len(next(iter(results.values()))[key])))
  first = next(iter(results.values()))
  axes[2].plot(
    range(len(first["first_token_uniform_by_layer"])),
    first["first_token_uniform_by_layer"],
    "k--",
    label="uniform",
  )
  axes[2].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def output_paths(stem: str) -> dict[str, Path]:
  """``{".json": ..., ".md": ..., ".png": ...}`` of the ``--out`` stem: the suffixes are
  appended, so a stem with a dot (``attention_lr0.5_s0``) keeps its whole name."""
  return {ext: Path(f"{stem}{ext}") for ext in (".json", ".md", ".png")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", action="append", required=True, help="name=workdir (repeatable)")
  p.add_argument(
    "--init",
    action="append",
    default=[],
    help="name=workdir: that run's model at initialisation, before training (repeatable)",
  )
  p.add_argument("--out", required=True, help="output stem: writes .json, .md and .png")
  p.add_argument("--min-row", type=int, default=16, help="skip each document's first rows")
  args = p.parse_args(argv)
  out = output_paths(args.out)
  taken = [str(path) for path in out.values() if path.exists()]
  if taken:  # checked before any run is read: a result file is never overwritten
    p.error(f"--out {args.out}: {', '.join(taken)} exist(s); pass a new stem")
  runs = {}
  for flag, specs in (("--run", args.run), ("--init", args.init)):
    for spec in specs:
      name, sep, workdir = spec.partition("=")
      if not sep or not workdir:
        p.error(f"{flag} must be name=workdir, got {spec!r}")
      if name in runs:  # the results are keyed by name: the first run would be lost
        w, init = runs[name]
        p.error(
          f"{flag} {spec}: the name {name!r} is taken by {'--init' if init else '--run'} "
          f"{name}={w}; give each run its own name"
        )
      runs[name] = (Path(workdir), flag == "--init")
  if args.min_row < 0:
    p.error(f"--min-row must be >= 0, got {args.min_row}")
  # A run that is not there, or of a model the analysis does not cover: one line, before the
  # output; every run checked before the first (slow) analysis.
  for name, (w, init) in runs.items():
    try:
      attention = load_run_config(w).model.attention
    except UserError as e:
      p.error(f"{'--init' if init else '--run'} {name}={w}: {e}")
    if attention not in KINDS:
      p.error(
        f"{'--init' if init else '--run'} {name}={w}: model.attention={attention!r}; "
        "give a parallax or softmax run"
      )
  results = {}
  for name, (w, init) in runs.items():
    try:
      results[name] = analyse(w, args.min_row, init)
    except UserError as e:
      p.error(f"{'--init' if init else '--run'} {name}={w}: {e}")
  record = {
    "what": "effective attention weights of trained models (held-out batches)",
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "python": platform.python_version(),
    "command": "python -m experiments.attention_analysis "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "min_row": args.min_row,
    "results": results,
  }
  out[".json"].parent.mkdir(parents=True, exist_ok=True)
  out[".json"].write_text(json.dumps(record, indent=2) + "\n")
  names = list(results)
  lines = [
    f"# {record['what']}",
    "",
    f"- date: {record['date']}; device: {record['device']}; jax {record['jax']}",
    f"- command: `{record['command']}`",
    f"- rows at least {args.min_row} tokens into their document (position >= {args.min_row} "
    "from 0), every statistic; means over layers and heads",
    "",
    "| | " + " | ".join(names) + " |",
    "|---|" + "---:|" * len(names),
  ]
  for key, label, fmt in ROWS:
    lines.append(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")
  lines.append("| step | " + " | ".join(str(results[n]["step"]) for n in names) + " |")
  out[".md"].write_text("\n".join(lines) + "\n")
  _plot(results, out[".png"])
  print("\n".join(lines))
  return record


if __name__ == "__main__":
  main()
