"""Hopper-native Parallax kernels written with Pallas Mosaic GPU (``implementation=
"pallas_mosaic_gpu"``): TMA rings, wgmma, warp specialisation.

Modules: ``common`` (scope checks, padding, the interpret-mode shims), ``forward`` (the
forward kernel), ``backward`` (entry, checks and operand packing of the two backward kernels
``backward_dq`` and ``backward_dkv``, with helpers in ``backward_common``), ``implementation``
(registry wiring; ``BACKWARD`` picks the Mosaic or the Triton backward).
"""

from pallas_kernels.mosaic_gpu.implementation import IMPLEMENTATION

__all__ = ["IMPLEMENTATION"]
