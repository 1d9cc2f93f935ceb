"""Where a run's wall time goes: setup, compilation, steps, input, evals, checkpoints.

A 400-step GPU-study run spends 35-50% of its device call outside its steps; this says
where. Phases are wall-clock seconds on the host, counted once each (they do not nest),
so they add up to the run's time but for the loop's own bookkeeping (``other``).
"""

from __future__ import annotations

import contextlib
import time

PHASES = {
  "setup": "mesh, model and optimizer definitions, data source and tokenizer, run record",
  "init": "fresh parameters (compiled init) or a restored checkpoint",
  "first_step": "the first train step: compilation (or a compilation-cache load) and one step",
  "steps": "every later train step, to its loss on the host",
  "input": "waiting for the next batch (reading, tokenizing, packing) and copying it in",
  "eval": "held-out evaluations, their compilation included",
  "checkpoint": "checkpoint saves, and waiting for them to reach the disk",
  "plot": "the run's own curves at the end",
}


class PhaseTimer:
  """Accumulates wall-clock seconds per phase (``PHASES``) from its creation on."""

  def __init__(self):
    self.seconds = dict.fromkeys(PHASES, 0.0)
    self._start = time.perf_counter()
    self._open: str | None = None

  @contextlib.contextmanager
  def phase(self, name: str):
    if name not in PHASES:
      raise ValueError(f"phase={name!r}: must be one of {sorted(PHASES)}")
    if self._open is not None:  # nested phases would count their seconds twice
      raise RuntimeError(f"phase {name!r} started inside {self._open!r}: phases do not nest")
    self._open, t0 = name, time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - t0
      self._open = None

  def summary(self) -> dict[str, float]:
    """``time_<phase>_s`` for every phase, ``time_other_s`` (the rest) and ``time_total_s``."""
    total = time.perf_counter() - self._start
    out = {f"time_{name}_s": round(s, 3) for name, s in self.seconds.items()}
    out["time_other_s"] = round(total - sum(self.seconds.values()), 3)
    out["time_total_s"] = round(total, 3)
    return out

  def line(self) -> str:
    """One log line: ``wall time 291.6 s: setup 21.3 s, first_step 48.2 s, ...``."""
    s = self.summary()
    parts = [f"{name} {s[f'time_{name}_s']:.1f} s" for name in (*PHASES, "other")]
    return f"wall time {s['time_total_s']:.1f} s: " + ", ".join(parts)


__all__ = ["PHASES", "PhaseTimer"]
