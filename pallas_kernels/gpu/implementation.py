"""The "pallas_gpu" implementation: wiring of the kernels into the op's registry."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.gpu import backward, forward
from pallas_kernels.gpu.block_sizes import GpuBlockSizes, default_block_sizes
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.validation import CallSpec

_DTYPES = ("float32", "bfloat16", "float16")


def _check(spec: CallSpec) -> None:
  if spec.dtype not in _DTYPES:
    raise NotImplementedError(
      f"implementation='pallas_gpu' takes {', '.join(_DTYPES)} inputs, got {spec.dtype} "
      "(use implementation='xla' or 'reference' for float64)."
    )
  bs = spec.block_sizes
  if bs is not None and not isinstance(bs, GpuBlockSizes):
    raise NotImplementedError(
      f"implementation='pallas_gpu' takes block_sizes=GpuBlockSizes(...), got {type(bs).__name__}."
    )
  if spec.head_dim > 256:
    raise NotImplementedError(
      f"implementation='pallas_gpu' supports head_dim <= 256, got {spec.head_dim} "
      "(the Q, R, K, V tiles would not fit in shared memory)."
    )


def _block_sizes(spec: CallSpec) -> GpuBlockSizes:
  _check(spec)
  return spec.block_sizes or default_block_sizes(
    spec.dtype, spec.head_dim, max(spec.mask.q_len, spec.mask.kv_len)
  )


def _fwd(q, r, k, v, segment_ids, spec: CallSpec):
  bs = _block_sizes(spec)
  cfg = bs.kernel("fwd", spec.mask.q_len, spec.mask.kv_len)
  return forward.parallax_fwd(
    q, r, k, v, segment_ids, scale=spec.scale, mask=spec.mask, cfg=cfg, interpret=spec.interpret
  )


def _bwd(q, r, k, v, segment_ids, residuals, do, spec: CallSpec):
  bs = _block_sizes(spec)
  return backward.parallax_bwd(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    jnp.asarray(do, q.dtype),
    scale=spec.scale,
    mask=spec.mask,
    cfg_dq=bs.kernel("dq", spec.mask.q_len, spec.mask.kv_len),
    cfg_dkv=bs.kernel("dkv", spec.mask.q_len, spec.mask.kv_len),
    interpret=spec.interpret,
  )


IMPLEMENTATION = Implementation(
  name="pallas_gpu", fwd=_fwd, bwd=_bwd, platforms=("gpu",), check=_check, interpretable=True
)
