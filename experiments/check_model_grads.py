"""Whole-model loss and gradients of each attention path at a training run's shapes.

The kernel tests compare one attention call against the float64 oracle. This checks what a run
trains with: the full model's loss and parameter gradients at the run's shapes (GQA, head dim,
sequence length, rows packed with several documents: segment ids and per-document positions),
so a training result can be trusted to the kernels. The reference is the same model and
parameters in float32 compute on the "xla" path. Each variant (implementation x compute dtype)
reports its loss difference and the relative gradient error ``|g - g_ref| / |g_ref|`` and
cosine, in total and for the worst parameter. The "xla" path in the same compute dtype is the
yardstick: a kernel path should be within a small factor of it.

  python3 experiments/check_model_grads.py --sweep configs/sweeps/gpu_study_lm.py \\
      --point muon+parallax_s0 --batch 4 --out-dir $OUT
  python experiments/check_model_grads.py --config configs/tiny.py --batch 2 --seq-len 128
Writes ``<out-dir>/check_model_grads_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from parallax_jax.benchmarking import cli_checks, result_files  # noqa: E402
from parallax_jax.benchmarking.run_info import run_info  # noqa: E402
from parallax_jax.errors import UserError  # noqa: E402
from parallax_jax.model import ModelConfig  # noqa: E402
from parallax_jax.model.config import DTYPES  # noqa: E402
from parallax_jax.train.config import apply_overrides, load_config  # noqa: E402
from parallax_jax.train.step import init_params, make_loss_and_grads, model_graphdef  # noqa: E402

REFERENCE = ("xla", "float32")


def packed_batch(cfg: ModelConfig, batch: int, seq_len: int, mean_doc: int, seed: int) -> dict:
  """Random tokens in rows packed with documents of random lengths (exponential, mean
  ``mean_doc``): segment ids 1, 2, ... per row and positions restarting at each document, as
  the data pipeline packs them."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32)
  segs = np.zeros((batch, seq_len), np.int32)
  pos = np.zeros((batch, seq_len), np.int32)
  for b in range(batch):
    start, seg = 0, 1
    while start < seq_len:
      n = max(1, int(rng.exponential(mean_doc)))
      segs[b, start : start + n] = seg
      pos[b, start : start + n] = np.arange(min(n, seq_len - start))
      start, seg = start + n, seg + 1
  return {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "segment_ids": segs,
    "positions": pos,
    "loss_mask": np.ones((batch, seq_len), np.float32),
  }


def model_config(args) -> tuple[ModelConfig, int]:
  """The model config and training sequence length of ``--config`` or ``--sweep/--point``,
  with ``--override``s applied."""
  if args.sweep:  # the point by its name or variant, as `sweep --points` selects it
    from parallax_jax.sweeps.config import load_sweep, select_points

    points = select_points(load_sweep(args.sweep), args.point).points
    if len(points) != 1:
      names = ", ".join(p.name for p in points)
      raise UserError(f"--point: {args.point!r} must select one point of the sweep, got {names}")
    cfg = points[0].config
  else:
    cfg = load_config(args.config)
  cfg = apply_overrides(cfg, args.override)
  return ModelConfig.from_dict(cfg.model.to_dict()), int(cfg.train.seq_len)


def loss_and_grads(cfg: ModelConfig, params, batch):
  graphdef, _ = model_graphdef(cfg)
  (loss, _), grads = jax.jit(make_loss_and_grads(graphdef))(params, batch)
  return float(loss), jax.tree.map(lambda g: np.asarray(g, np.float64), grads)


def compare(grads, ref) -> dict:
  """Relative error and cosine of the whole gradient, and the worst parameter's error."""
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  flat_ref = jax.tree.leaves(ref)
  per_param = {}
  sums = np.zeros(4)  # |g - r|^2, |r|^2, g.r, |g|^2 over every parameter
  for (path, g), r in zip(flat, flat_ref, strict=True):
    d, nr = float(np.sum((g - r) ** 2)), float(np.sum(r * r))
    sums += (d, nr, float(np.sum(g * r)), float(np.sum(g * g)))
    per_param[jax.tree_util.keystr(path)] = np.sqrt(d / nr) if nr > 0 else float(np.sqrt(d))
  diff, norm_ref, dot, norm = sums
  worst = max(per_param, key=per_param.get)
  return {
    "grad_rel_error": float(np.sqrt(diff / norm_ref)),
    "grad_cosine": float(dot / np.sqrt(norm * norm_ref)),
    "worst_param": worst,
    "worst_param_rel_error": float(per_param[worst]),
  }


def measure(cfg: ModelConfig, params, batch, ref_loss: float, ref_grads) -> dict:
  """One row's values: the loss, its difference from the reference and the gradients' errors."""
  loss, grads = loss_and_grads(cfg, params, batch)
  return dict(loss=loss, loss_diff=loss - ref_loss, **compare(grads, ref_grads))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--config", help="a config file (get_config())")
  src.add_argument("--sweep", help="a sweep file; with --point, that point's config")
  p.add_argument("--point", help="the sweep point (variant name) to take the config of")
  p.add_argument("--override", action="append", default=[], help="key=value, repeatable")
  p.add_argument("--impls", default="default,xla", help="'default' = implementation=None")
  p.add_argument("--dtypes", default="bfloat16", help="compute dtypes of the variants")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=None, help="default: the config's train.seq_len")
  p.add_argument("--mean-doc", type=int, default=400, help="mean document length in a row")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  if args.sweep and not args.point:
    p.error("--sweep needs --point (the variant name whose config to check)")
  if args.point and not args.sweep:  # it would be ignored: --config is the config
    p.error("--point selects a point of --sweep; with --config, drop it")
  cli_checks.at_least(p, args, 1, "batch", "seq_len", "mean_doc")
  cli_checks.at_least(p, args, 0, "seed")  # numpy's generator refuses a negative one
  try:  # a missing or bad config or sweep file, or a bad override: one line, not a traceback
    base, train_seq_len = model_config(args)
  except UserError as e:
    p.error(str(e))
  impls, dtypes = args.impls.split(","), args.dtypes.split(",")
  for impl in impls:  # before the reference's compile, not as a traceback after it
    named = None if impl == "default" else impl
    cli_checks.attention_impl(p, "--impls", base.attention, named, "'default' (the best)")
  for dtype in dtypes:
    cli_checks.choice(p, "--dtypes", dtype, DTYPES)
  seq_len = args.seq_len or train_seq_len
  batch = packed_batch(base, args.batch, seq_len, args.mean_doc, args.seed)
  params = init_params(base, args.seed)
  ref_cfg = dataclasses.replace(base, attention_impl=REFERENCE[0], compute_dtype=REFERENCE[1])
  ref_loss, ref_grads = loss_and_grads(ref_cfg, params, batch)

  now = datetime.datetime.now()
  result = {
    **run_info("experiments.check_model_grads", argv),
    "model": {
      "attention": base.attention,
      "layers": base.num_layers,
      "d_model": base.d_model,
      "heads": base.num_heads,
      "kv_heads": base.num_kv_heads,
      "head_dim": base.head_dim,
    },
    "batch": args.batch,
    "seq_len": seq_len,
    "documents_per_row": float(np.mean(batch["segment_ids"].max(axis=1))),
    "reference": {"impl": REFERENCE[0], "compute_dtype": REFERENCE[1], "loss": ref_loss},
    "rows": [],
  }
  for dtype in dtypes:
    for impl in impls:
      cfg = dataclasses.replace(
        base, attention_impl=None if impl == "default" else impl, compute_dtype=dtype
      )
      row = result_files.measure_row(
        {"impl": impl, "compute_dtype": dtype}, measure, cfg, params, batch, ref_loss, ref_grads
      )
      result["rows"].append(row)
      print(json.dumps(row), flush=True)
  name = f"check_model_grads_{now.strftime('%Y-%m-%d_%H%M%S')}"
  result_files.save(args.out_dir, name, result, to_markdown(result))
  return result


def to_markdown(result: dict) -> str:
  out = [f"# check_model_grads {result['date']}", ""]
  keys = ("device", "versions", "command", "model", "batch", "seq_len", "documents_per_row")
  out += [f"- {k}: {result[k]}" for k in (*keys, "reference")]
  out += [
    "",
    "| impl | compute | loss - ref | grad rel error | grad cosine | worst param (rel error) |",
  ]
  out.append("|---|---|---:|---:|---:|---|")
  for r in result["rows"]:
    if "error" in r:
      out.append(f"| {r['impl']} | {r['compute_dtype']} | error: {r['error'][:200]} | | | |")
      continue
    out.append(
      f"| {r['impl']} | {r['compute_dtype']} | {r['loss_diff']:+.2e} | {r['grad_rel_error']:.2e} "
      f"| {r['grad_cosine']:.6f} | {r['worst_param']} ({r['worst_param_rel_error']:.2e}) |"
    )
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
