"""Fused Pallas GPU kernels (Triton lowering) for Parallax attention, forward and backward.

``IMPLEMENTATION`` is registered as ``implementation="pallas_gpu"``; it takes the op's
``BlockSizes`` (``default_block_sizes`` gives the tuned ones). Modules: ``block_sizes`` (checks
+ tuned defaults), ``schedule`` (the three-range tile loop over ``MaskSpec``'s classes),
``tile_math_base2`` (base-2 tile algebra), ``forward``, ``backward``, ``implementation``
(registry wiring), ``autotune`` (writes ``tuned_block_sizes.json``).

``decode`` is the decode op's "pallas_gpu" path (``parallax_jax.decode``, docs/design.md §13.3):
split-KV flash decoding in ``decode_kernel`` and the split merge in ``decode_merge``.
"""

from pallas_kernels.gpu.block_sizes import default_block_sizes
from pallas_kernels.gpu.implementation import IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "default_block_sizes"]
