"""``base_config()``: every config key with its default, from the config dataclasses."""

from __future__ import annotations

import dataclasses

import ml_collections

from parallax_jax.distributed import DistributedConfig
from parallax_jax.model.config import ModelConfig
from parallax_jax.sharding import DEFAULT_RULES
from parallax_jax.train.config import CheckpointConfig, MeshConfig, TrainConfig
from parallax_jax.train.optimizer import OptimizerConfig


def _section(cls, skip=()):
  return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls) if f.name not in skip}


def base_config() -> ml_collections.ConfigDict:
  """All sections with defaults; config files start here and override what they need."""
  from parallax_jax.data.config import DataConfig

  return ml_collections.ConfigDict(
    {
      "model": _section(ModelConfig, skip=("axes",)),
      "data": _section(DataConfig),
      "train": _section(TrainConfig),
      "optimizer": _section(OptimizerConfig),
      "checkpoint": _section(CheckpointConfig),
      "mesh": _section(MeshConfig),
      "sharding": {"strategy": "dp", "rules": DEFAULT_RULES},
      "distributed": _section(DistributedConfig),
    }
  )
