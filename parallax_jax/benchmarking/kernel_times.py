"""Device time of each kernel a compiled call launches, read from a JAX profiler trace.

Wall-clock timers see launch gaps and host work; the profiler's device plane (CUPTI on a GPU)
records each kernel's own start and duration. ``kernel_times`` runs a warm compiled call
``repeats`` times under ``jax.profiler.trace`` and returns the mean device microseconds per
call of every kernel name (memsets and copies included), so a benchmark can say where a call's
time goes: in which kernel, and how much is the gap between kernels. Without a device plane
(CPU) it returns an empty dict.
"""

from __future__ import annotations

import collections
import glob
import os
import tempfile
from collections.abc import Callable, Sequence

import jax


def _device_planes(profile) -> list:
  return [p for p in profile.planes if p.name.startswith("/device:") and "CPU" not in p.name]


def kernel_times(fn: Callable, args: Sequence = (), *, repeats: int = 10) -> dict[str, float]:
  """``{kernel name: mean device us per call}`` of ``fn(*args)`` (call it once before, so
  nothing compiles under the trace), largest first; ``{}`` where the trace has no device
  plane. Kernels on every stream of the device are counted."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
      return {}
    profile = jax.profiler.ProfileData.from_file(files[0])
  total = collections.Counter()
  for plane in _device_planes(profile):
    for line in plane.lines:
      if not line.name.startswith("Stream"):
        continue  # "XLA Ops" / "XLA Modules" lines repeat the kernels' time
      for event in line.events:
        total[event.name] += event.duration_ns
  return {name: ns / 1e3 / repeats for name, ns in total.most_common()}


def summarize(times: dict[str, float], width: int = 40) -> str:
  """``name=us`` pairs for a log line (names cut to ``width`` characters)."""
  return ", ".join(f"{name[:width]}={us:.2f}" for name, us in times.items())
