"""The "pallas_tpu" implementation: Mosaic TPU forward, dq/dr and dk/dv kernels.

``fwd``/``bwd`` follow ``parallax_jax.attention.implementations`` and exchange exactly the
``Residuals`` of the "xla" path, so the two are interchangeable. The backward row statistics
``T = dO.o`` and ``b = dO.barv`` are computed by XLA outside the kernels (a memory-bound pass
over ``dO``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.tpu import backward_dkv, backward_dq, block_sizes, forward, layout
from pallas_kernels.tpu.block_sizes import ResolvedBlocks
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.residuals import Residuals
from parallax_jax.attention.tile_math import bwd_row_stats
from parallax_jax.attention.validation import CallSpec

_DTYPES = ("float32", "bfloat16", "float16")


def check(spec: CallSpec) -> None:
  """Raises NotImplementedError for a call these kernels cannot serve."""
  if spec.dtype not in _DTYPES:
    raise NotImplementedError(
      f"implementation='pallas_tpu' takes {', '.join(_DTYPES)} inputs, got {spec.dtype} "
      f"(TPUs have no {spec.dtype} matmul); use implementation='xla' or 'reference'."
    )
  if spec.block_sizes is not None:
    block_sizes.check(spec.block_sizes)


def _blocks(spec: CallSpec) -> ResolvedBlocks:
  check(spec)
  return block_sizes.resolve(spec.block_sizes, spec.mask.q_len, spec.mask.kv_len)


@functools.partial(jax.jit, static_argnums=5)
def fwd(q, r, k, v, segment_ids, spec: CallSpec) -> tuple[jax.Array, Residuals]:
  bq, bk = _blocks(spec).fwd
  return forward.forward(
    q,
    r,
    k,
    v,
    segment_ids,
    scale=spec.scale,
    mask=spec.mask,
    bq=bq,
    bk=bk,
    interpret=spec.interpret,
  )


@functools.partial(jax.jit, static_argnums=7)
def bwd(q, r, k, v, segment_ids, residuals: Residuals, do, spec: CallSpec):
  blocks = _blocks(spec)
  q_len, kv_len, d = spec.mask.q_len, spec.mask.kv_len, spec.head_dim
  do = do.astype(q.dtype)
  delta_o, b_row = (jnp.swapaxes(x, 1, 2) for x in bwd_row_stats(do, residuals.o, residuals.barv))

  q_pad = blocks.q_pad(q_len, "dq", "dkv")
  kv_pad = blocks.kv_pad(kv_len, "dq", "dkv")
  dp = layout.head_dim_pad(d)
  q_, r_, do_ = (layout.to_heads_major(x, q_pad, dp) for x in (q, r, do))
  k_, v_ = (layout.to_heads_major(x, kv_pad, dp) for x in (k, v))
  stats = layout.row_stats(q_pad, residuals.lse, residuals.bart, delta_o, b_row)
  q_seg = layout.segments(segment_ids, q_pad)
  k_seg = layout.segments(segment_ids, kv_pad)
  common = dict(scale=spec.scale, mask=spec.mask, interpret=spec.interpret)

  dq, dr = backward_dq.dq_dr(
    q_, r_, do_, stats, k_, v_, q_seg, k_seg, bq=blocks.dq[0], bk=blocks.dq[1], **common
  )
  dk, dv = backward_dkv.dk_dv(
    q_, r_, do_, stats, k_, v_, q_seg, k_seg, bq=blocks.dkv[0], bk=blocks.dkv[1], **common
  )
  return (
    layout.from_heads_major(dq, q_len, d),
    layout.from_heads_major(dr, q_len, d),
    layout.from_heads_major(dk, kv_len, d),
    layout.from_heads_major(dv, kv_len, d),
  )


IMPLEMENTATION = Implementation(
  name="pallas_tpu", fwd=fwd, bwd=bwd, platforms=("tpu",), check=check, interpretable=True
)
