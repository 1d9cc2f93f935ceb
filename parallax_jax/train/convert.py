"""Softmax checkpoint -> Parallax params: add ``r_proj`` (zeros) and ``r_norm`` (ones).

With W_R = 0 the Parallax model computes exactly what the softmax model did (r = 0 gives softmax
attention; RMSNorm and RoPE of 0 are 0), so training continues from the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.model import ModelConfig
from parallax_jax.train.checkpoint import Checkpointer, abstract_like, save_params
from parallax_jax.train.config import CheckpointConfig
from parallax_jax.train.optimizer import OptimizerConfig, make_optimizer
from parallax_jax.train.step import init_state


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
  workdir = Path(workdir)
  record = json.loads((workdir / "config.json").read_text())
  cfg = ml_collections.ConfigDict(record["config"])
  model = ModelConfig.from_dict(cfg.model.to_dict())
  if model.attention != "softmax":
    raise UserError(
      f"--workdir {str(workdir)!r} holds a {model.attention!r} model; convert-softmax needs a "
      "run trained with model.attention='softmax'"
    )
  tx, _ = make_optimizer(OptimizerConfig.from_dict(cfg.optimizer.to_dict()), cfg.train.steps)
  abstract = abstract_like(jax.eval_shape(lambda: init_state(model, tx, 0)))
  ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig(async_save=False))
  if ckpt.latest_step() is None:
    raise UserFileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
  state, _ = ckpt.restore(abstract, step)
  ckpt.close()
  parallax = dataclasses.replace(model.with_attention("parallax"), r_init="zeros")
  params = add_zero_r(state.params, parallax)
  out = Path(out).absolute()
  save_params(out, params)
  return out
