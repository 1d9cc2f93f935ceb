"""The "reference" implementation: dense math, JAX autodiff."""

from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.reference import parallax_reference


def _fwd(q, r, k, v, segment_ids, spec):
  return parallax_reference(q, r, k, v, scale=spec.scale, mask=spec.mask, segment_ids=segment_ids)


IMPLEMENTATION = Implementation(
  name="reference", fwd=_fwd, bwd=None, platforms=("cpu", "gpu", "tpu")
)
