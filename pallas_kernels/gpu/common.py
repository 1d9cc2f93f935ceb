"""Shared helpers of the GPU kernels: padding, matmuls, masks, compiler params."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gpu.block_sizes import pow2_at_least
from parallax_jax.attention.block_sizes import Tile


def padded_head_dim(d: int) -> int:
  """Triton tensors have power-of-two sizes and tensor-core dots need K >= 16."""
  return pow2_at_least(d)


def pad_to(x, axis: int, size: int, value=0):
  """Pads ``axis`` of ``x`` up to ``size`` (no-op when already that long)."""
  extra = size - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def pad_seq_dim(x, seq_len: int, head_dim: int):
  """``[B, T, H, D]`` -> ``[B, seq_len, H, head_dim]`` zero padded (finite padding keys)."""
  return pad_to(pad_to(x, 1, seq_len), 3, head_dim)


def precision(dtype):
  # float32 inputs keep IEEE fp32 dots (Triton's default for DEFAULT precision is TF32);
  # half-precision operands are exact on the tensor cores anyway.
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def dot(a, b, prec):
  """``a @ b`` with float32 accumulation."""
  return lax.dot_general(
    a, b, (((1,), (0,)), ((), ())), precision=prec, preferred_element_type=jnp.float32
  )


def dot_nt(a, b, prec):
  """``a @ b.T`` with float32 accumulation (Triton transposes the operand in shared memory)."""
  return lax.dot_general(
    a, b, (((1,), (1,)), ((), ())), precision=prec, preferred_element_type=jnp.float32
  )


def dot_tn(a, b, prec):
  """``a.T @ b`` with float32 accumulation (the transposed operand stays in shared memory)."""
  return lax.dot_general(
    a, b, (((0,), (0,)), ((), ())), precision=prec, preferred_element_type=jnp.float32
  )


def compiler_params(cfg: Tile):
  return pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
