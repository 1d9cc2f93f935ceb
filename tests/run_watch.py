"""Watching training subprocesses: wait until a run has logged a step."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def wait_for_step(workdir, step: int, procs, timeout_s: float = 300) -> None:
  """Returns once ``workdir/metrics.jsonl`` holds a step >= ``step``; fails (with the first
  process's output) when ``procs`` (one ``Popen`` or several) end or ``timeout_s`` passes."""
  procs = [procs] if isinstance(procs, subprocess.Popen) else list(procs)
  path = Path(workdir) / "metrics.jsonl"
  deadline = time.time() + timeout_s
  while time.time() < deadline and all(p.poll() is None for p in procs):
    lines = path.read_text().splitlines() if path.exists() else []
    if any(line.endswith("}") and json.loads(line)["step"] >= step for line in lines):
      return
    time.sleep(0.02)
  for p in procs:
    if p.poll() is None:
      p.kill()
  raise AssertionError(f"step {step} never logged:\n{procs[0].communicate()[0][-3000:]}")
