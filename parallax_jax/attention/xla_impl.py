"""The "xla" implementation: blockwise forward, closed-form backward, any backend."""

from parallax_jax.attention import xla
from parallax_jax.attention.implementations import Implementation


def _block_sizes(spec):
  bs = spec.block_sizes
  if bs is not None and not isinstance(bs, xla.XlaBlockSizes):
    raise NotImplementedError(
      f"implementation='xla' takes block_sizes=XlaBlockSizes(...), got {type(bs).__name__}."
    )
  return bs


def _fwd(q, r, k, v, segment_ids, spec):
  return xla.parallax_fwd(
    q, r, k, v, segment_ids, scale=spec.scale, mask=spec.mask, block_sizes=_block_sizes(spec)
  )


def _bwd(q, r, k, v, segment_ids, residuals, do, spec):
  return xla.parallax_bwd(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    do,
    scale=spec.scale,
    mask=spec.mask,
    block_sizes=_block_sizes(spec),
  )


IMPLEMENTATION = Implementation(
  name="xla",
  fwd=_fwd,
  bwd=_bwd,
  platforms=("cpu", "gpu", "tpu"),
  check=lambda spec: _block_sizes(spec) and None,
)
