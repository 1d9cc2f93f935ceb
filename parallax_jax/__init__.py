"""parallax-jax: Parallax attention in JAX/Flax, with Pallas kernels for GPU and TPU."""

from parallax_jax.attention import (
  BlockSizes,
  MaskSpec,
  Residuals,
  Tile,
  parallax_attention,
  parallax_bwd,
  parallax_fwd,
  parallax_reference,
)
from parallax_jax.decode import DecodeTuning, parallax_decode

__version__ = "0.1.0"

__all__ = [
  "BlockSizes",
  "DecodeTuning",
  "MaskSpec",
  "Residuals",
  "Tile",
  "parallax_attention",
  "parallax_bwd",
  "parallax_decode",
  "parallax_fwd",
  "parallax_reference",
]
