"""When ``jax.distributed.initialize`` is called, and with what."""

import jax
import pytest

from parallax_jax import distributed
from parallax_jax.distributed import DistributedConfig

ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def calls(monkeypatch):
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  return seen


def test_single_process_by_default(calls):
  assert not distributed.initialize(DistributedConfig())
  assert calls == []


@pytest.mark.parametrize(
  "name,value",
  [
    ("SLURM_NTASKS", "4"),
    ("OMPI_COMM_WORLD_SIZE", "2"),
    ("TPU_WORKER_HOSTNAMES", "h0,h1"),
    ("JAX_COORDINATOR_ADDRESS", "h0:1234"),
  ],
)
def test_auto_initializes_in_a_multi_process_environment(calls, monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  assert distributed.initialize(DistributedConfig())
  assert calls == [{}]  # discovery is left to jax


def test_explicit_coordinator_from_config(calls):
  cfg = DistributedConfig(coordinator_address="10.0.0.1:8476", num_processes=2, process_id=1)
  assert distributed.initialize(cfg)
  assert calls == [{"coordinator_address": "10.0.0.1:8476", "num_processes": 2, "process_id": 1}]


def test_never_and_bad_mode(calls, monkeypatch):
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert not distributed.initialize(DistributedConfig(initialize="never")) and calls == []
  with pytest.raises(ValueError, match="distributed.initialize"):
    DistributedConfig(initialize="sometimes")
