"""Fused Pallas GPU kernels (Triton lowering) for Parallax attention, forward and backward.

``IMPLEMENTATION`` is registered as ``implementation="pallas_gpu"``; ``GpuBlockSizes`` is its
``block_sizes=`` config. Modules: ``block_sizes`` (config + tuned defaults), ``schedule`` (tile
classification), ``tile_math_base2`` (base-2 tile algebra), ``forward``, ``backward``,
``implementation`` (registry wiring), ``autotune`` (writes ``tuned_block_sizes.json``).
"""

from pallas_kernels.gpu.block_sizes import GpuBlockSizes, default_block_sizes
from pallas_kernels.gpu.implementation import IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "GpuBlockSizes", "default_block_sizes"]
