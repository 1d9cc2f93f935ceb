"""Run metrics: ``metrics.jsonl`` + TensorBoard, throughput and MFU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

# Dense bf16 peak FLOP/s per device (vendor figures), by device_kind substring.
PEAK_FLOPS = {
  "H200": 989e12,
  "H100": 989e12,
  "A100": 312e12,
  "B200": 2250e12,
  "L4": 121e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "TPU7x": 2307e12,
}


def peak_flops_per_device(device=None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


class MetricsWriter:
  """Appends one JSON object per logged step; mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True):
    self.path = Path(workdir) / "metrics.jsonl"
    self._truncate_after(resume_step)
    self._tb = None
    if tensorboard and jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their old records."""
    if not self.path.exists():
      return
    kept = [
      line
      for line in self.path.read_text().splitlines()
      if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, scalars: dict) -> None:
    if jax.process_index() != 0:
      return
    record = {"step": int(step)}
    record.update(
      {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in scalars.items()
      }
    )
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, int | float) and v is not None and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def compiled_memory_bytes(compiled) -> int | None:
  """Device memory a compiled step needs: arguments + outputs + temporaries, outputs that alias
  (donated) arguments counted once. None where the backend has no memory analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends have none
    return None
  if m is None:
    return None
  return int(
    m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  )


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
