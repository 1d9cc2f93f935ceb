"""Parallax attention: one op, several paths (reference, xla, Pallas kernels)."""

from parallax_jax.attention.api import parallax_attention
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.reference import parallax_reference
from parallax_jax.attention.residuals import Residuals
from parallax_jax.attention.xla import XlaBlockSizes, parallax_bwd, parallax_fwd

__all__ = [
  "MaskSpec",
  "Residuals",
  "XlaBlockSizes",
  "parallax_attention",
  "parallax_bwd",
  "parallax_fwd",
  "parallax_reference",
]
