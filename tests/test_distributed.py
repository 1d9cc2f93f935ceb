"""When ``jax.distributed.initialize`` is called, and with what."""

import socket
import time

import jax
import pytest

from parallax_jax import distributed
from parallax_jax.distributed import DistributedConfig
from parallax_jax.errors import UserError

ENV = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
  "TPU_WORKER_HOSTNAMES",
  "SLURM_NTASKS",
  "OMPI_COMM_WORLD_SIZE",
)


@pytest.fixture
def calls(monkeypatch):
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  monkeypatch.setattr(distributed, "_wait_for_coordinator", lambda address, where: None)
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


def test_process_count_and_id_from_the_environment(calls, monkeypatch):
  """jax reads JAX_COORDINATOR_ADDRESS itself but not these two (the README's GPU-host recipe)."""
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h0:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert distributed.initialize(DistributedConfig())
  assert calls == [{"num_processes": 2, "process_id": 1}]
  assert distributed.initialize(DistributedConfig(num_processes=4, process_id=3))  # config wins
  assert calls[1] == {"num_processes": 4, "process_id": 3}


@pytest.mark.parametrize(
  "env,match",
  [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an int >= 1, got 'two'"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES must be an int >= 1"),
    ({"JAX_PROCESS_ID": "-1"}, "JAX_PROCESS_ID must be an int >= 0"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "process id 2 is not below"),
  ],
)
def test_bad_process_numbers_are_one_line(calls, monkeypatch, env, match):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h0:1234")
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserError, match=match):
    distributed.initialize(DistributedConfig())
  assert calls == []


def test_what_jax_cannot_discover_names_the_variables(monkeypatch):
  for name in ENV:
    monkeypatch.delenv(name, raising=False)

  def undiscoverable(**kw):
    raise ValueError("Number of processes must be defined.")

  monkeypatch.setattr(jax.distributed, "initialize", undiscoverable)
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    distributed.initialize(DistributedConfig(coordinator_address="h0:1234"))


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"num_processes": "abc"}, "distributed.num_processes must be an int >= 1 or None"),
    ({"num_processes": 0}, "distributed.num_processes must be an int >= 1"),
    ({"num_processes": True}, "distributed.num_processes must be an int"),
    ({"process_id": 1.5}, "distributed.process_id must be an int >= 0 or None"),
    ({"num_processes": 2, "process_id": 2}, "distributed.process_id=2 is not below"),
    ({"coordinator_address": 1234}, "distributed.coordinator_address must be 'host:port'"),
    ({"initialize": "maybe"}, "distributed.initialize must be one of"),
  ],
)
def test_bad_distributed_values_are_refused_in_the_config(kwargs, match):
  with pytest.raises(UserError, match=match):
    DistributedConfig(**kwargs)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"num_processes": 2},
    {"num_processes": 2, "process_id": 1},
    {"process_id": 5},
    {"num_processes": 4, "initialize": "never"},
  ],
)
def test_several_processes_that_nothing_starts_are_refused_not_run_alone(calls, kwargs):
  with pytest.raises(UserError, match="asks for several processes.*coordinator_address"):
    distributed.initialize(DistributedConfig(**kwargs))
  assert calls == []


@pytest.mark.parametrize(
  "env", [{"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, {"JAX_NUM_PROCESSES": "2"}]
)
def test_process_variables_without_a_coordinator_are_refused_not_run_alone(calls, monkeypatch, env):
  """The README's recipe with JAX_COORDINATOR_ADDRESS forgotten (or misspelt): each host would
  train alone."""
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES=2.* asks for several processes.*unset"):
    distributed.initialize(DistributedConfig())
  assert calls == []
  assert not distributed.initialize(DistributedConfig(initialize="never"))  # as asked: alone
  assert not distributed.initialize(DistributedConfig(num_processes=1, process_id=0))  # config wins


def test_one_process_asked_for_explicitly_stays_single_process(calls):
  assert not distributed.initialize(DistributedConfig(num_processes=1, process_id=0))
  assert calls == []


def test_a_coordinator_that_never_answers_is_one_line_in_bounded_time(monkeypatch):
  """Process 1 with a wrong JAX_COORDINATOR_ADDRESS (or a process 0 that never starts): jax's
  client waits its 300 s, then aborts with a C++ stack trace blaming "another task"."""
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1)
  with socket.socket() as closed:  # bound, not listening: refused
    closed.bind(("localhost", 0))
    address = f"localhost:{closed.getsockname()[1]}"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", address)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"JAX_COORDINATOR_ADDRESS='{address}': no coordinator"):
      distributed.initialize(DistributedConfig(num_processes=2, process_id=1))
    assert time.monotonic() - t0 < 10 and seen == []
  with pytest.raises(UserError, match="coordinator_address='h0' must be 'host:port'"):
    distributed.initialize(
      DistributedConfig(coordinator_address="h0", num_processes=2, process_id=1)
    )
  with socket.socket() as listening:  # process 0's service up: on to jax
    listening.bind(("localhost", 0))
    listening.listen()
    address = f"localhost:{listening.getsockname()[1]}"
    assert distributed.initialize(
      DistributedConfig(coordinator_address=address, num_processes=2, process_id=1)
    )
  assert seen == [{"coordinator_address": address, "num_processes": 2, "process_id": 1}]
