"""The Mosaic TPU kernels' block sizes: checks, defaults and their per-call resolution."""

from __future__ import annotations

import dataclasses
import math

from jax.experimental import pallas as pl

from pallas_kernels.tpu.kernel_utils import LANES
from parallax_jax.attention.block_sizes import BlockSizes, Tile, check_for

# TPU v5e/v6e: 512 x 512 forward tiles; backward tiles that keep the seven float32 [bq, bk]
# intermediates of the closed-form backward in VMEM.
DEFAULT = BlockSizes(fwd=Tile(512, 512), dq=Tile(256, 512), dkv=Tile(512, 256))


def check(block_sizes: BlockSizes) -> None:
  """Key blocks sit on lanes, so every block is a multiple of the lane count."""
  check_for("pallas_tpu", block_sizes, multiple_of=LANES)


def resolve(block_sizes: BlockSizes | None, q_len: int, kv_len: int) -> ResolvedBlocks:
  """The blocks of one call: each an upper bound, capped at its length rounded up to 128 (short
  sequences get one block)."""
  bs = block_sizes or DEFAULT
  check(bs)

  def fit(tile: Tile):
    return min(tile.block_q, _round_up(q_len, LANES)), min(tile.block_k, _round_up(kv_len, LANES))

  return ResolvedBlocks(fwd=fit(bs.fwd), dq=fit(bs.dq), dkv=fit(bs.dkv))


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
  return pl.cdiv(x, m) * m
