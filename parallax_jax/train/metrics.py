"""Run metrics: ``metrics.jsonl`` (writer and the one reader) + TensorBoard, and MFU.

MFU divides the model FLOPs (``parallax_jax.flops``) by the dense bf16 peak of
``PEAK_FLOPS`` (vendor figures, matched on ``device_kind``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax

from parallax_jax.errors import UserError
from parallax_jax.files import write_text_atomic

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


def mfu(model_flops: float, seconds: float, num_devices: int = 1, device=None) -> float | None:
  """Model FLOPs utilisation: ``model_flops`` (``parallax_jax.flops``'s model count, not the
  executed one) done in ``seconds`` on ``num_devices``, over their bf16 peak; None where the
  device's peak is unknown (e.g. CPU)."""
  peak = peak_flops_per_device(device)
  return model_flops / seconds / (peak * num_devices) if peak else None


def mfu_fields(model_flops: float, seconds: float, num_devices: int = 1, device=None) -> dict:
  """``metrics.jsonl``'s MFU fields: ``mfu`` and the ``peak_flops_per_device`` it divides by
  (``PEAK_FLOPS``); on a device kind without a peak there (CPU) both are None and
  ``mfu_note`` says why, rather than a made-up peak."""
  peak = peak_flops_per_device(device)
  if peak is None:
    kind = (device or jax.devices()[0]).device_kind
    return {"mfu": None, "peak_flops_per_device": None, "mfu_note": f"no peak known for {kind!r}"}
  return {"mfu": mfu(model_flops, seconds, num_devices, device), "peak_flops_per_device": peak}


class MetricsWriter:
  """Appends one JSON object per logged step; mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True):
    self.path = Path(workdir) / "metrics.jsonl"
    self.tensorboard_dir = Path(workdir) / "tensorboard"  # TensorBoard's logdir (and traces')
    self._truncate_after(resume_step)
    self._tb = None
    if tensorboard and jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      # A resume redoes the steps after resume_step: TensorBoard hides the earlier files'
      # events from purge_step on instead of drawing those steps twice. A run killed before
      # its first checkpoint restarts from step 0 over events of its own too.
      earlier = any(self.tensorboard_dir.glob("events.out.tfevents.*"))
      purge = resume_step + 1 if resume_step or earlier else None
      self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=purge)

  def _truncate_after(self, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their old records. The file is
    replaced atomically (process 0, which writes it): a kill mid-rewrite keeps the old one."""
    if jax.process_index() != 0 or not self.path.exists():
      return
    kept = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= step]
    write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

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

  def sync(self) -> None:
    """Makes the records written so far durable. Called before each checkpoint: a resume re-logs
    only the steps after its checkpoint, so a power loss that kept the checkpoint but not the
    appended records before it would leave a gap in the curves."""
    if jax.process_index() != 0 or not self.path.exists():
      return
    with self.path.open("rb") as f:
      os.fsync(f.fileno())

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


def read_metrics(workdir: str | Path, *, missing_ok: bool = False) -> list[dict]:
  """The records of ``<workdir>/metrics.jsonl`` in order (``[]`` for no file if
  ``missing_ok``). A last line cut short (a run killed mid-write, or one still writing) is
  left out; a bad line anywhere else is a ``UserError`` naming it."""
  path = Path(workdir) / "metrics.jsonl"
  if missing_ok and not path.exists():
    return []
  text = path.read_text()
  lines = text.split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # no newline after it: an unfinished write
        break
      raise UserError(
        f"{path}: line {i + 1} is not JSON: {line[:200]!r} (the file was changed by hand or "
        "damaged); delete that line to go on"
      ) from None
  return records
