"""Parallax attention as Mosaic TPU Pallas kernels (``implementation="pallas_tpu"``).

Files: ``block_sizes`` (checks of the op's ``BlockSizes``, TPU defaults), ``schedule`` (grids
over ``MaskSpec``'s schedules, per-tile dispatch), ``layout`` (padding, heads-major transposes),
``kernel_utils`` (dots, lane-broadcast rows, compiler params), ``forward``, ``backward_dq``,
``backward_dkv`` (the three kernels) and ``implementation`` (the registry entry). Decode
(``parallax_decode``, docs/design.md §13.3): ``decode_kernel`` (the split-KV kernel) and
``decode`` (its wrapper and the decode registry entry). Runs on CPU with ``interpret=True``.
"""

from pallas_kernels.tpu.implementation import IMPLEMENTATION

__all__ = ["IMPLEMENTATION"]
