"""Wrapper-side layouts: ``[B, T, H, D]`` <-> padded heads-major ``[B, H, Tp, Dp]``.

Heads-major gives every kernel operand a ``(None, None, block, Dp)`` BlockSpec. ``D`` is zero
padded to a multiple of 128 lanes (zeros change no dot product and yield zero output columns);
``T`` is zero padded to a multiple of the blocks (padded keys stay finite and are masked,
padded rows are dropped).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.tpu.kernel_utils import LANES

STAT_LANES = 8  # forward row statistics leave the kernel as [Tp, 8] f32 (lse, bart, 0...)


def head_dim_pad(d: int) -> int:
  return pl.cdiv(d, LANES) * LANES


def to_heads_major(x, t_pad: int, d_pad: int):
  """[B, T, H, D] -> [B, H, t_pad, d_pad] (zero padded)."""
  _, t, _, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, t_pad - t), (0, 0), (0, d_pad - d)))
  return x.transpose(0, 2, 1, 3)


def from_heads_major(x, t: int, d: int):
  """[B, H, Tp, Dp] -> [B, t, H, d]."""
  return x[:, :, :t, :d].transpose(0, 2, 1, 3)


def segments(segment_ids, t_pad: int):
  """[B, T] ints -> [B, 1, t_pad] int32 (lane-dense rows; padding is masked by index)."""
  if segment_ids is None:
    return None
  seg = segment_ids.astype(jnp.int32)
  return jnp.pad(seg, ((0, 0), (0, t_pad - seg.shape[1])))[:, None, :]


def row_stats(t_pad: int, *stats):
  """Row statistics ``[B, H, T]`` -> one ``[B, H, len(stats), t_pad]`` f32 array."""
  x = jnp.stack([s.astype(jnp.float32) for s in stats], axis=2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, t_pad - x.shape[-1])))
