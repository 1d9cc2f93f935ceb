"""parallax-jax: Parallax attention in JAX/Flax, with Pallas kernels for GPU and TPU."""

from parallax_jax import xla_cpu_flags

# Before anything can start a JAX backend: XLA reads its flags once (docs/design.md §11.3).
xla_cpu_flags.apply()

from parallax_jax.attention import (  # noqa: E402
  BlockSizes,
  MaskSpec,
  Residuals,
  Tile,
  parallax_attention,
  parallax_bwd,
  parallax_fwd,
  parallax_reference,
)
from parallax_jax.decode import DecodeTuning, parallax_decode  # noqa: E402

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
