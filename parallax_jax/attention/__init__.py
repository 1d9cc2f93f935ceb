"""Parallax attention: one op, several paths (reference, xla, Pallas kernels)."""

from parallax_jax.attention.api import parallax_attention
from parallax_jax.attention.block_sizes import BlockSizes, Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.reference import parallax_reference
from parallax_jax.attention.residuals import Residuals
from parallax_jax.attention.xla import parallax_bwd, parallax_fwd

__all__ = [
  "BlockSizes",
  "Tile",
  "MaskSpec",
  "Residuals",
  "parallax_attention",
  "parallax_bwd",
  "parallax_fwd",
  "parallax_reference",
]
