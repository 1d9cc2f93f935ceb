"""Device meshes and shardings from config (data parallel here; strategies come later)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor, sequence) sized by ``mesh_cfg``.

  Uses ``jax.sharding.Mesh`` (Auto axis types): the model is written GSPMD-style and the
  partitioner propagates shardings from the jit boundary.
  """
  devices = jax.devices() if devices is None else devices
  sizes = mesh_cfg.shape(len(devices))
  return Mesh(np.asarray(devices).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
