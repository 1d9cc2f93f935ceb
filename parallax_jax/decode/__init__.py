"""Decode: Parallax attention of a few new queries over a KV cache (docs/design.md §13).

``parallax_decode`` is the one entry point (paths "xla", "pallas_gpu", "pallas_tpu" in the
``DECODE`` registry); ``DecodeTuning`` overrides the kernels' split count and tiles.
"""

from parallax_jax.decode.api import DECODE, parallax_decode
from parallax_jax.decode.validation import DecodeSpec, DecodeTuning

__all__ = ["DECODE", "DecodeSpec", "DecodeTuning", "parallax_decode"]
