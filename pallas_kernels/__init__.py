"""Pallas kernels for Parallax attention: ``gpu`` (Triton lowering) and ``tpu`` (Mosaic TPU).

Each family exposes an ``IMPLEMENTATION`` (see ``parallax_jax.attention.implementations``)
and is imported only when asked for.
"""
