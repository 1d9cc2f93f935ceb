"""The "pallas_gpu" implementation: wiring of the kernels into the op's registry."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.gpu import backward, block_sizes, forward
from parallax_jax.attention.block_sizes import BlockSizes
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.validation import CallSpec

_DTYPES = ("float32", "bfloat16", "float16")


def _check(spec: CallSpec) -> None:
  if spec.dtype not in _DTYPES:
    raise NotImplementedError(
      f"implementation='pallas_gpu' takes {', '.join(_DTYPES)} inputs, got {spec.dtype} "
      "(use implementation='xla' or 'reference' for float64)."
    )
  if spec.block_sizes is not None:
    block_sizes.check(spec.block_sizes)
  if spec.head_dim > 256:
    raise NotImplementedError(
      f"implementation='pallas_gpu' supports head_dim <= 256, got {spec.head_dim} "
      "(the Q, R, K, V tiles would not fit in shared memory)."
    )


def _tile(spec: CallSpec, pass_name: str):
  """The clipped tile of one pass: the call's ``BlockSizes`` or the tuned defaults."""
  _check(spec)
  bs: BlockSizes = spec.block_sizes or block_sizes.default_block_sizes(
    spec.dtype, spec.head_dim, max(spec.mask.q_len, spec.mask.kv_len)
  )
  return block_sizes.clip(getattr(bs, pass_name), spec.mask.q_len, spec.mask.kv_len)


def _fwd(q, r, k, v, segment_ids, spec: CallSpec):
  return forward.parallax_fwd(
    q,
    r,
    k,
    v,
    segment_ids,
    scale=spec.scale,
    mask=spec.mask,
    cfg=_tile(spec, "fwd"),
    interpret=spec.interpret,
  )


def _bwd(q, r, k, v, segment_ids, residuals, do, spec: CallSpec):
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
    cfg_dq=_tile(spec, "dq"),
    cfg_dkv=_tile(spec, "dkv"),
    interpret=spec.interpret,
    fused=not spec.deterministic,  # the atomic single pass (docs/design.md §5.5)
  )


IMPLEMENTATION = Implementation(
  name="pallas_gpu",
  fwd=_fwd,
  bwd=_bwd,
  platforms=("gpu",),
  check=_check,
  interpretable=True,
)
