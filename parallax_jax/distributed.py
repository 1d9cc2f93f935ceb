"""Multi-process start-up: ``jax.distributed.initialize`` from config or the environment.

Must run before anything touches a JAX backend (the CLI calls it first). ``initialize``:

* ``"auto"`` (default): initialise when the environment says this is one process of many
  (``JAX_COORDINATOR_ADDRESS``, a multi-host TPU slice, SLURM or Open MPI with more than one
  task) or when ``coordinator_address`` is set; otherwise stay single-process;
* ``"always"`` / ``"never"``: as named.

On TPU pod slices, SLURM and Open MPI, ``jax.distributed.initialize()`` discovers the
coordinator, process count and id itself; elsewhere give ``coordinator_address``,
``num_processes`` and ``process_id`` (config or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; jax itself reads only the first, so the other two
are read here, the config taking precedence). A config that itself asks for several processes
(``num_processes`` > 1 or ``process_id`` > 0) where nothing starts ``jax.distributed`` (mode
``"never"``, or ``"auto"`` with no coordinator and no multi-process environment) is refused,
not trained as one process; under ``"auto"`` so are such ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` without a coordinator. ``check_same_config`` then refuses a job whose
processes were given different configs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Mapping

from parallax_jax.config_utils import from_section, require_number
from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")

MODES = ("auto", "always", "never")
CONNECT_TIMEOUT_S = 300  # jax.distributed.initialize's initialization_timeout
_ENV = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  initialize: str = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def __post_init__(self):
    if not isinstance(self.initialize, str) or self.initialize not in MODES:
      raise UserError(f"distributed.initialize must be one of {MODES}, got {self.initialize!r}")
    address = self.coordinator_address
    if address is not None and (not isinstance(address, str) or not address.strip()):
      raise UserError(
        f"distributed.coordinator_address must be 'host:port' or None (from the environment), "
        f"got {address!r}"
      )
    for key, least in (("num_processes", 1), ("process_id", 0)):
      require_number(
        f"distributed.{key}",
        getattr(self, key),
        at_least=least,
        integer=True,
        none=f"from {_ENV[key]} or the cluster",
      )
    if self.num_processes is not None and self.process_id is not None:
      if self.process_id >= self.num_processes:
        raise UserError(
          f"distributed.process_id={self.process_id} is not below distributed.num_processes="
          f"{self.num_processes} (process ids count from 0)"
        )

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


def _config_or_env(value: int | None, key: str, least: int) -> int | None:
  """``distributed.<key>`` if set, else its environment variable (an int >= ``least``)."""
  if value is not None:
    where, raw = f"distributed.{key}", value
  elif _ENV[key] in os.environ:
    where, raw = _ENV[key], os.environ[_ENV[key]]
  else:
    return None
  try:
    number = int(raw)
  except (TypeError, ValueError):
    number = None
  if number is None or number < least or isinstance(raw, bool):
    raise UserError(f"{where} must be an int >= {least}, got {raw!r}")
  return number


def initialize(cfg: DistributedConfig) -> bool:
  """Initialises the distributed runtime if asked for; returns whether it did."""
  import jax

  wanted = cfg.initialize == "always" or (
    cfg.initialize == "auto" and (cfg.coordinator_address or multi_process_environment())
  )
  if not wanted:
    least = {"num_processes": 1, "process_id": 0}
    numbers = {k: getattr(cfg, k) for k in _ENV}
    if cfg.initialize == "auto":  # the README's variables too: only the coordinator is missing
      numbers = {k: _config_or_env(v, k, least[k]) for k, v in numbers.items()}
    asked = ""
    if (numbers["num_processes"] or 1) > 1 or (numbers["process_id"] or 0) > 0:
      asked = ", ".join(
        f"{_ENV[k]}={os.environ[_ENV[k]]}" if getattr(cfg, k) is None else f"distributed.{k}={n}"
        for k, n in numbers.items()
        if n is not None
      )
    if asked:  # training alone would silently be another job than the one asked for
      why = (
        "distributed.initialize='never'"
        if cfg.initialize == "never"
        else "no coordinator: neither distributed.coordinator_address nor "
        "JAX_COORDINATOR_ADDRESS is set, and this is no SLURM, Open MPI or TPU-slice job"
      )
      raise UserError(
        f"{asked} asks for several processes, but nothing starts jax.distributed ({why}), so "
        "this would train as one process alone; give the coordinator "
        "(--config.distributed.coordinator_address=HOST:PORT or JAX_COORDINATOR_ADDRESS, with "
        "distributed.initialize 'auto' or 'always'), or for one process set "
        "distributed.num_processes and distributed.process_id to None"
        + (" and unset JAX_NUM_PROCESSES and JAX_PROCESS_ID" if "JAX_" in asked else "")
      )
    return False
  from parallax_jax.train.preemption import hand_over_setup

  hand_over_setup()  # JAX's preemption service owns SIGTERM once it starts (preemption.py)
  kwargs = {
    k: v
    for k, v in (
      ("coordinator_address", cfg.coordinator_address),
      ("num_processes", _config_or_env(cfg.num_processes, "num_processes", 1)),
      ("process_id", _config_or_env(cfg.process_id, "process_id", 0)),
    )
    if v is not None
  }
  if "process_id" in kwargs and "num_processes" in kwargs:
    if kwargs["process_id"] >= kwargs["num_processes"]:
      raise UserError(
        f"process id {kwargs['process_id']} is not below the process count "
        f"{kwargs['num_processes']} (distributed.process_id / JAX_PROCESS_ID counts from 0)"
      )
  address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address and kwargs.get("process_id", 0) > 0:
    _wait_for_coordinator(
      address,
      "distributed.coordinator_address" if cfg.coordinator_address else "JAX_COORDINATOR_ADDRESS",
    )
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # what jax could not discover, e.g. the process count off a cluster
    raise UserError(
      f"jax.distributed.initialize: {e} Outside TPU slices, SLURM and Open MPI give "
      "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or --config.distributed.*)"
    ) from e
  log.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def _wait_for_coordinator(address: str, where: str) -> None:
  """Waits (up to ``CONNECT_TIMEOUT_S``, jax's own initialization timeout) until the coordinator
  (process 0) accepts a TCP connection. jax's client aborts the process after that time with a
  C++ stack trace blaming "another task"; a wrong address is better said in one line."""
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise UserError(f"{where}={address!r} must be 'host:port' (process 0's host and a free port)")
  host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: [::1]:8476
  deadline = time.monotonic() + CONNECT_TIMEOUT_S
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(
          f"{where}={address!r}: no coordinator answered there within {CONNECT_TIMEOUT_S} s "
          f"({e}); give process 0's host and port, and start process 0 too"
        ) from e
    time.sleep(0.5)


def check_same_config(config: Mapping) -> None:
  """Raises a ``UserError`` on every process unless every process was given the same config
  (``config`` flattened, ``{"train.seed": 0, ...}``, as ``train.config_keys.flatten`` gives it;
  the ``distributed`` section aside: its process id differs by design). A host with another
  seed or learning rate would otherwise train its own params' shards and data under it, and the
  run record would show process 0's. Collective: call on every process, after ``initialize``."""
  import jax

  if jax.process_count() == 1:
    return
  import numpy as np
  from jax.experimental import multihost_utils

  mine = {k: v for k, v in config.items() if not k.startswith("distributed.")}
  raw = np.frombuffer(json.dumps(mine, sort_keys=True, default=repr).encode(), np.uint8)
  longest = int(np.max(multihost_utils.process_allgather(np.array([raw.size], np.int64))))
  padded = np.zeros(longest, np.uint8)  # JSON text holds no NUL byte: the padding strips off
  padded[: raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, longest)
  configs = [json.loads(bytes(row).rstrip(b"\0")) for row in rows]
  others = [i for i, c in enumerate(configs) if c != configs[0]]
  if others:
    first = configs[others[0]]
    keys = sorted(k for k in {*configs[0], *first} if configs[0].get(k) != first.get(k))
    shown = ", ".join(
      f"{k}={configs[0].get(k, '(absent)')!r} vs {first.get(k, '(absent)')!r}" for k in keys[:5]
    )
    raise UserError(
      f"processes {others} were given another config than process 0 (process 0 vs process "
      f"{others[0]}: {shown}{', ...' if len(keys) > 5 else ''}); every process of a job must run "
      "the same command with the same --config.* overrides"
    )
