"""``TpuBlockSizes``: the tiling of the Mosaic TPU kernels, and its per-call resolution."""

from __future__ import annotations

import dataclasses
import math

# Key blocks sit on lanes, so every block is a multiple of the lane count.
from pallas_kernels.tpu.kernel_utils import LANES

_FIELDS = ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv")


@dataclasses.dataclass(frozen=True)
class TpuBlockSizes:
  """Block sizes of the "pallas_tpu" kernels (all multiples of 128).

  Each is an upper bound: a call uses ``min(block, round_up(T, 128))``, so short sequences get
  one block. The defaults suit TPU v5e/v6e (512 x 512 forward tiles; backward tiles that keep
  the seven float32 ``[bq, bk]`` intermediates of the closed-form backward in VMEM).

  Attributes:
    block_q, block_k: forward query rows and keys per tile.
    block_q_dq, block_k_dq: the dq/dr kernel (grid over query blocks). None: the forward ones.
    block_q_dkv, block_k_dkv: the dk/dv kernel (grid over key blocks). None: the forward ones.
  """

  block_q: int = 512
  block_k: int = 512
  block_q_dq: int | None = 256
  block_k_dq: int | None = 512
  block_q_dkv: int | None = 512
  block_k_dkv: int | None = 256

  def __post_init__(self):
    for name in _FIELDS:
      value = getattr(self, name)
      if value is None and name not in ("block_q", "block_k"):
        continue
      if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"TpuBlockSizes.{name} must be an int, got {value!r}.")
      if value < LANES or value % LANES:
        raise ValueError(
          f"TpuBlockSizes.{name} must be a positive multiple of {LANES} (TPU lane width), "
          f"got {value}."
        )

  @classmethod
  def uniform(cls, size: int) -> TpuBlockSizes:
    """Every block ``size`` (handy for tests and small problems)."""
    return cls(*(size,) * len(_FIELDS))

  def resolve(self, q_len: int, kv_len: int) -> ResolvedBlocks:
    """The blocks of one call: each capped at its sequence length rounded up to 128."""

    def fit(value, default, length):
      value = default if value is None else value
      return min(value, _round_up(length, LANES))

    return ResolvedBlocks(
      fwd=(fit(self.block_q, None, q_len), fit(self.block_k, None, kv_len)),
      dq=(fit(self.block_q_dq, self.block_q, q_len), fit(self.block_k_dq, self.block_k, kv_len)),
      dkv=(fit(self.block_q_dkv, self.block_q, q_len), fit(self.block_k_dkv, self.block_k, kv_len)),
    )


@dataclasses.dataclass(frozen=True)
class ResolvedBlocks:
  """``(block_q, block_k)`` of each kernel for one call's sequence lengths."""

  fwd: tuple[int, int]
  dq: tuple[int, int]
  dkv: tuple[int, int]

  def q_pad(self, q_len: int, *kernels: str) -> int:
    """Padded query length that every named kernel's block divides."""
    return _round_up(q_len, math.lcm(*(getattr(self, k)[0] for k in kernels)))

  def kv_pad(self, kv_len: int, *kernels: str) -> int:
    return _round_up(kv_len, math.lcm(*(getattr(self, k)[1] for k in kernels)))


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m
