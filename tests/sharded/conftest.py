"""Tests of sharded code on 8 fake CPU devices (``--xla_force_host_platform_device_count``).

``tests/conftest.py`` gives every test process 8 CPU devices (unless ``XLA_FLAGS`` is already
set), so these tests normally just run. XLA fixes the device count once per process, when its
backend starts; for sessions where the root default did not apply, this file falls back to:

* a session (or xdist worker) whose selected tests all live here sets the flag itself before
  the backend starts;
* otherwise each test that asks for the ``devices`` fixture runs in a child pytest process
  with the flag, and its outcome and output are reported here.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import pytest

NUM_DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
_CHILD = "PARALLAX_SHARDED_CHILD"
_HERE = pathlib.Path(__file__).resolve().parent


def _xla_flags() -> str:
  flags = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return " ".join([*flags, _FLAG])


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
  if items and all(_HERE in pathlib.Path(item.path).resolve().parents for item in items):
    os.environ["XLA_FLAGS"] = _xla_flags()  # read when the backend starts (first use)


@pytest.fixture
def devices():
  """The first 8 devices (fewer only in a mixed session, where the call runs in a child)."""
  return jax.devices()[:NUM_DEVICES]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  if "devices" not in pyfuncitem.fixturenames or jax.device_count() >= NUM_DEVICES:
    return None  # run here
  if os.environ.get(_CHILD):
    pytest.fail(f"{NUM_DEVICES} devices needed, the child process has {jax.device_count()}.")
  env = dict(os.environ, XLA_FLAGS=_xla_flags(), JAX_PLATFORMS="cpu", **{_CHILD: "1"})
  cmd = [
    sys.executable,
    "-m",
    "pytest",
    pyfuncitem.nodeid,
    "-q",
    "-m",
    "",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:xdist",
    "-p",
    "no:randomly",
  ]
  proc = subprocess.run(
    cmd, cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, timeout=900
  )
  if proc.returncode != 0:
    pytest.fail(
      f"child run on {NUM_DEVICES} devices failed ({' '.join(cmd)}):\n"
      f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}",
      pytrace=False,
    )
  return True
