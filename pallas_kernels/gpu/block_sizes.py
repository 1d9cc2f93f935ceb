"""Block sizes of the Pallas GPU (Triton) kernels: a validated config and tuned defaults.

``GpuBlockSizes`` holds one (block_q, block_k, num_warps, num_stages) per kernel: the forward,
the dq/dr backward pass and the dk/dv backward pass. Defaults come per (dtype, head-dim
bucket) from ``tuned_block_sizes.json`` (written by ``python -m pallas_kernels.gpu.autotune``),
falling back to the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

_JSON = os.path.join(os.path.dirname(__file__), "tuned_block_sizes.json")

KERNELS = ("fwd", "dq", "dkv")
_FIELDS = {  # kernel -> (block_q field, block_k field, warps field, stages field)
  "fwd": ("block_q", "block_k", "num_warps", "num_stages"),
  "dq": ("block_q_dq", "block_k_dq", "num_warps_dq", "num_stages_dq"),
  "dkv": ("block_q_dkv", "block_k_dkv", "num_warps_dkv", "num_stages_dkv"),
}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tiling and launch parameters of one kernel (already clipped to the problem)."""

  block_q: int
  block_k: int
  num_warps: int
  num_stages: int


@dataclasses.dataclass(frozen=True)
class GpuBlockSizes:
  """Tiles and Triton launch parameters of the three Parallax GPU kernels.

  The dataclass defaults are the H200 bf16 D=128 tuning; ``default_block_sizes`` gives the
  per-(dtype, head dim) defaults. Blocks are powers of two >= 16 (Triton tensor shapes and
  tensor-core tiles); they are
  clipped to the (power-of-two rounded) sequence lengths at call time. ``num_warps`` is a power
  of two in [1, 16]; ``num_stages`` in [1, 8].

  Attributes:
    block_q, block_k, num_warps, num_stages: forward (one program per query block).
    block_q_dq, block_k_dq, num_warps_dq, num_stages_dq: dq/dr pass (grid over query blocks).
    block_q_dkv, block_k_dkv, num_warps_dkv, num_stages_dkv: dk/dv pass (grid over key blocks;
      block_q_dkv is the inner row block, block_k_dkv the program's key block).
  """

  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3
  block_q_dq: int = 64
  block_k_dq: int = 64
  num_warps_dq: int = 4
  num_stages_dq: int = 2
  block_q_dkv: int = 32
  block_k_dkv: int = 64
  num_warps_dkv: int = 4
  num_stages_dkv: int = 3

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GpuBlockSizes.{f.name} must be an int, got {value!r}.")
      if f.name.startswith("block_"):
        if value < 16 or value & (value - 1):
          raise ValueError(
            f"GpuBlockSizes.{f.name} must be a power of two >= 16 (Triton tile), got {value}."
          )
      elif f.name.startswith("num_warps"):
        if value < 1 or value > 16 or value & (value - 1):
          raise ValueError(
            f"GpuBlockSizes.{f.name} must be a power of two in [1, 16], got {value}."
          )
      elif not 1 <= value <= 8:
        raise ValueError(f"GpuBlockSizes.{f.name} must be in [1, 8], got {value}.")

  def kernel(self, name: str, q_len: int, kv_len: int) -> KernelConfig:
    """The config of kernel ``name`` ("fwd", "dq", "dkv") clipped to the sequence lengths."""
    bq, bk, warps, stages = (getattr(self, f) for f in _FIELDS[name])
    return KernelConfig(
      min(bq, pow2_at_least(q_len)), min(bk, pow2_at_least(kv_len)), warps, stages
    )

  def replace_kernel(self, name: str, cfg: KernelConfig) -> GpuBlockSizes:
    fields = _FIELDS[name]
    values = (cfg.block_q, cfg.block_k, cfg.num_warps, cfg.num_stages)
    return dataclasses.replace(self, **dict(zip(fields, values, strict=True)))


def pow2_at_least(n: int, floor: int = 16) -> int:
  """The smallest power of two >= max(n, floor)."""
  p = floor
  while p < n:
    p *= 2
  return p


def head_dim_bucket(head_dim: int) -> int:
  return pow2_at_least(head_dim)


def bucket_key(dtype: str, head_dim: int) -> str:
  return f"{dtype}/d{head_dim_bucket(head_dim)}"


@functools.cache
def _tuned(path: str = _JSON) -> dict:
  try:
    with open(path) as f:
      return json.load(f).get("entries", {})
  except FileNotFoundError:
    return {}


def default_block_sizes(dtype: str, head_dim: int, seq_len: int | None = None) -> GpuBlockSizes:
  """Tuned defaults for (dtype, head-dim bucket); dataclass defaults where none is tuned.

  An entry may hold length-specific configs ``"<kernel>@<L>"`` used when ``seq_len >= L``
  (the largest such ``L`` wins): the best forward tile differs between L=4096 and L=16384.
  """
  entry = _tuned().get(bucket_key(dtype, head_dim))
  if entry is None:
    # float16 shares bfloat16's tuning (same tensor-core rate and register footprint).
    entry = _tuned().get(bucket_key("bfloat16" if dtype == "float16" else dtype, head_dim))
  bs = GpuBlockSizes()
  if entry:
    for name in KERNELS:
      key, best = name, -1
      for k in entry:
        kname, _, threshold = k.partition("@")
        if kname == name and threshold and seq_len is not None and best < int(threshold) <= seq_len:
          key, best = k, int(threshold)
      if key in entry:
        bs = bs.replace_kernel(name, KernelConfig(**entry[key]))
  return bs
