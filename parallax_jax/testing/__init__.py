"""Shared test specifications: the attention case grid, its tolerances and the float64 oracle.

Plain data and small NumPy/JAX helpers, importable by ``tests/`` and by ``experiments/``
scripts (GPU smoke runs, benchmarks) without pytest.
"""
