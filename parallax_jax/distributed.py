"""Multi-process start-up: ``jax.distributed.initialize`` from config or the environment.

Must run before anything touches a JAX backend (the CLI calls it first). ``initialize``:

* ``"auto"`` (default): initialise when the environment says this is one process of many
  (``JAX_COORDINATOR_ADDRESS``, a multi-host TPU slice, SLURM or Open MPI with more than one
  task) or when ``coordinator_address`` is set; otherwise stay single-process;
* ``"always"`` / ``"never"``: as named.

On TPU pod slices, SLURM and Open MPI, ``jax.distributed.initialize()`` discovers the
coordinator, process count and id itself; elsewhere give ``coordinator_address``,
``num_processes`` and ``process_id`` (config or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from parallax_jax.config_utils import from_section

log = logging.getLogger("parallax_jax")

MODES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  initialize: str = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def __post_init__(self):
    if self.initialize not in MODES:
      raise ValueError(f"distributed.initialize must be one of {MODES}, got {self.initialize!r}")

  @classmethod
  def from_dict(cls, d: Mapping) -> DistributedConfig:
    return from_section(cls, "distributed", d)


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "1"))
  except ValueError:
    return 1


def multi_process_environment() -> bool:
  """Does the environment describe one process of a multi-process job?"""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return _int_env("SLURM_NTASKS") > 1 or _int_env("OMPI_COMM_WORLD_SIZE") > 1


def initialize(cfg: DistributedConfig) -> bool:
  """Initialises the distributed runtime if asked for; returns whether it did."""
  import jax

  wanted = cfg.initialize == "always" or (
    cfg.initialize == "auto" and (cfg.coordinator_address or multi_process_environment())
  )
  if not wanted:
    return False
  kwargs = {
    k: v
    for k, v in (
      ("coordinator_address", cfg.coordinator_address),
      ("num_processes", cfg.num_processes),
      ("process_id", cfg.process_id),
    )
    if v is not None
  }
  jax.distributed.initialize(**kwargs)
  log.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
