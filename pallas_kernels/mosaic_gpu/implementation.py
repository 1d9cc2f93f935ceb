"""The "pallas_mosaic_gpu" implementation: wiring of the Mosaic GPU kernels into the registry.

The forward is ``forward.parallax_fwd``. The backward is chosen by ``BACKWARD``:

* ``"triton"`` (the default until the Mosaic backward has passed the GPU grid on the H200,
  docs/design.md §6.2): ``pallas_kernels.gpu.backward.parallax_bwd``, which consumes this
  forward's residuals unchanged (the residual contract of ``parallax_jax.attention.residuals``
  is shared). It runs with the "pallas_gpu" tuned dq/dkv tiles unless the call gives
  ``BlockSizes``, whose ``dq``/``dkv`` tiles it then takes (Triton rules).
* ``"mosaic"``: ``backward.parallax_bwd``, the warp-specialised Mosaic GPU dq/dr and dk/dv
  kernels (interpret-tested on CPU; ``BlockSizes.dq``/``dkv`` then follow ``backward.check``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax.numpy as jnp

from pallas_kernels.mosaic_gpu import backward as mosaic_backward
from pallas_kernels.mosaic_gpu import common, forward
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.validation import CallSpec

BACKWARDS = ("triton", "mosaic")
BACKWARD = "triton"


@contextlib.contextmanager
def use_backward(name: str):
  """Sets ``BACKWARD`` for the block, then restores it.

  The backward is read when ``parallax_attention`` is called (``_variant``) and fixed in the
  custom VJP's static arguments, so the block need only enclose the forward call.
  """
  global BACKWARD
  if name not in BACKWARDS:
    raise ValueError(f"backward must be one of {BACKWARDS}, got {name!r}.")
  saved, BACKWARD = BACKWARD, name
  try:
    yield
  finally:
    BACKWARD = saved


def _backward() -> str:
  if BACKWARD not in BACKWARDS:
    raise ValueError(
      f"pallas_kernels.mosaic_gpu.implementation.BACKWARD must be one of {BACKWARDS}, got "
      f"{BACKWARD!r}."
    )
  return BACKWARD


def _check(spec: CallSpec) -> None:
  common.check(spec)
  if _backward() == "mosaic":
    mosaic_backward.check(spec)
  elif spec.block_sizes is not None:  # the Triton backward's tiles (Triton rules)
    from pallas_kernels.gpu import block_sizes

    bs = spec.block_sizes
    block_sizes.check(dataclasses.replace(bs, fwd=bs.dq))


def _fwd(q, r, k, v, segment_ids, spec: CallSpec):
  tile = spec.block_sizes.fwd if spec.block_sizes is not None else None
  tile = tile or common.default_fwd_tile(spec.head_dim)
  return forward.parallax_fwd(
    q,
    r,
    k,
    v,
    segment_ids,
    scale=spec.scale,
    mask=spec.mask,
    block_q=tile.block_q,
    block_k=tile.block_k,
    num_stages=tile.num_stages or 2,
    interpret=spec.interpret,
  )


def _bwd(q, r, k, v, segment_ids, residuals, do, spec: CallSpec, variant: str | None = None):
  backward_name = variant or _backward()  # BACKWARD at the op's call (backward_variant)
  do = jnp.asarray(do, q.dtype)
  bs = spec.block_sizes
  if backward_name == "mosaic":
    return mosaic_backward.parallax_bwd(
      q,
      r,
      k,
      v,
      segment_ids,
      residuals,
      do,
      scale=spec.scale,
      mask=spec.mask,
      cfg_dq=bs.dq if bs is not None else None,
      cfg_dkv=bs.dkv if bs is not None else None,
      interpret=spec.interpret,
    )
  from pallas_kernels.gpu import backward, block_sizes

  q_len, kv_len = spec.mask.q_len, spec.mask.kv_len
  bs = bs or block_sizes.default_block_sizes(spec.dtype, spec.head_dim, max(q_len, kv_len))
  return backward.parallax_bwd(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    do,
    scale=spec.scale,
    mask=spec.mask,
    cfg_dq=block_sizes.clip(bs.dq, q_len, kv_len),
    cfg_dkv=block_sizes.clip(bs.dkv, q_len, kv_len),
    interpret=spec.interpret,
    fused=not spec.deterministic,  # the atomic single pass (docs/design.md §5.5)
  )


IMPLEMENTATION = Implementation(
  name=common.NAME,
  fwd=_fwd,
  bwd=_bwd,
  platforms=("gpu",),
  check=_check,
  interpretable=True,
  backward_variant=_backward,
)
