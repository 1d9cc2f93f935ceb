"""Small helpers shared by the Mosaic TPU kernels and their ``pallas_call`` wrappers."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

LANES = 128  # TPU vreg lane count
# Scoped VMEM the kernels may use: above the 16/32 MiB default scoped limits of v5e/v6e, below
# v7x's 64 MiB; capped at 3/4 of the chip's VMEM where that is smaller.
VMEM_LIMIT_BYTES = 48 * 1024 * 1024

_NT = (((1,), (1,)), ((), ()))  # x @ y.T
_NN = (((1,), (0,)), ((), ()))  # x @ y


def precision(dtype):
  """float32 inputs ask for full-precision MXU passes; bf16/fp16 operands are exact anyway."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def dot_nt(x, y, prec):
  return lax.dot_general(x, y, _NT, precision=prec, preferred_element_type=jnp.float32)


def dot_nn(x, y, prec):
  return lax.dot_general(x, y, _NN, precision=prec, preferred_element_type=jnp.float32)


def load_rows(ref):
  """A lane-broadcast ``[rows, 128]`` scratch as a ``[rows]`` vector (all lanes are equal)."""
  return jnp.max(ref[...], axis=-1)


def store_rows(ref, x):
  """Stores a ``[rows]`` vector lane-broadcast into a ``[rows, 128]`` scratch."""
  ref[...] = lax.broadcast_in_dim(x, ref.shape, (0,))


def vmem_limit_bytes() -> int:
  try:
    capacity = pltpu.get_tpu_info().vmem_capacity_bytes
  except Exception:  # not on a TPU (interpret mode, cross-lowering) or an older jax
    return VMEM_LIMIT_BYTES
  return min(VMEM_LIMIT_BYTES, capacity * 3 // 4)


def compiler_params(semantics: tuple[str, ...]):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=vmem_limit_bytes())


def cost_estimate(
  matmuls: int, tiles: int, bq: int, bk: int, d: int, exps_per_pair: int, operands
) -> pl.CostEstimate:
  """XLA scheduling hint: ``matmuls`` [bq, bk, d] products per visited tile."""
  pairs = tiles * bq * bk
  return pl.CostEstimate(
    flops=int(2 * matmuls * pairs * d),
    transcendentals=int(exps_per_pair * pairs),
    bytes_accessed=int(sum(x.size * x.dtype.itemsize for x in operands)),
  )
