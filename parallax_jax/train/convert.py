"""Softmax checkpoint -> Parallax params: add ``r_proj`` (zeros) and ``r_norm`` (ones).

With W_R = 0 the Parallax model computes exactly what the softmax model did (r = 0 gives softmax
attention; RMSNorm and RoPE of 0 are 0), so training continues from the same function.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import jax.numpy as jnp

from parallax_jax.errors import UserError
from parallax_jax.files import lies_in
from parallax_jax.model import ModelConfig
from parallax_jax.train.checkpoint import check_step, restore_run_params, save_params


def add_zero_r(params: dict, cfg: ModelConfig) -> dict:
  """Parallax params from softmax params (pure dicts)."""
  out = copy.copy(params)
  out["blocks"] = {}
  for i, block in params["blocks"].items():
    attn = dict(block["attn"])
    attn["r_proj"] = {"kernel": jnp.zeros_like(attn["q_proj"]["kernel"])}
    if cfg.qk_norm:
      attn["r_norm"] = {"scale": jnp.ones_like(attn["q_norm"]["scale"])}
    out["blocks"][i] = {**block, "attn": attn}
  return out


def convert_softmax_to_parallax(
  workdir: str | Path, out: str | Path, step: int | None = None
) -> Path:
  """Writes the Parallax params of ``workdir``'s softmax checkpoint ``step`` (default: the
  newest readable) as a params-only checkpoint at ``out``, a path that does not exist yet.
  Reads the params alone (the run is not changed); a ``UserError`` names a wrong argument."""
  from parallax_jax.train import run_record
  from parallax_jax.train.config import resolve

  check_step(step)
  out = Path(out).absolute()
  if out.exists():  # checked before the checkpoint is read: Orbax would refuse it at the end
    raise UserError(
      f"--out {str(out)!r} already exists; convert-softmax writes a new checkpoint directory: "
      "give a path that does not exist"
    )
  workdir = Path(workdir)
  if lies_in(out, workdir):
    # reading a run never writes to it (under checkpoints/ the run would take it for a step)
    raise UserError(
      f"--out {str(out)!r} lies inside the run it reads (--workdir {str(workdir)!r}); write "
      "the params outside it"
    )
  cfg = run_record.load_run_config(workdir)  # one-line errors for a workdir that holds no run
  exp = resolve(cfg)
  if exp.model.attention != "softmax":
    raise UserError(
      f"--workdir {str(workdir)!r} holds a {exp.model.attention!r} model; convert-softmax needs "
      "a run trained with model.attention='softmax'"
    )
  run_record.require_checkpoints(workdir)
  _, params = restore_run_params(workdir, exp, step)  # a step not held: the steps held, listed
  parallax = dataclasses.replace(exp.model.with_attention("parallax"), r_init="zeros")
  save_params(out, add_zero_r(params, parallax))
  return out
