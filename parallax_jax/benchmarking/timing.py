"""The one timer of the benchmarks and the kernel autotuner."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  median_s: float
  samples_s: tuple[float, ...]


def _warm_up(fn: Callable, args: Sequence, warmup: int, **counts: int) -> None:
  """Checks the counts (each >= 1, ``warmup`` >= 0), then makes ``warmup`` untimed calls."""
  for name, n in counts.items():
    if n < 1:
      raise ValueError(f"{name} must be >= 1, got {n}")
  if warmup < 0:
    raise ValueError(f"warmup must be >= 0, got {warmup}")
  out = None
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)


def time_call(fn: Callable, args: Sequence = (), *, iters: int, warmup: int = 3) -> Timing:
  """Wall seconds of ``fn(*args)`` (a jitted call): ``warmup`` untimed calls (compilation,
  autotuning, allocator warm-up), then ``iters`` calls, each timed up to
  ``jax.block_until_ready`` of its output. Returns the median and every sample."""
  _warm_up(fn, args, warmup, iters=iters)
  samples = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - t0)
  return Timing(statistics.median(samples), tuple(samples))


def time_pipelined(
  fn: Callable, args: Sequence = (), *, iters: int, repeats: int = 3, warmup: int = 3
) -> Timing:
  """Steady-state seconds per call of ``fn(*args)``: ``iters`` calls issued back to back (JAX
  dispatches asynchronously, as a training loop does) and one wait at the end, per repeat;
  returns the median over ``repeats`` of (repeat's wall time / iters). Unlike ``time_call``,
  the host's dispatch and the final sync overlap the device work, so a short kernel is not
  charged ~0.1-0.3 ms of launch and sync latency; gaps between kernels still count."""
  _warm_up(fn, args, warmup, iters=iters, repeats=repeats)
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - t0) / iters)
  return Timing(statistics.median(samples), tuple(samples))
