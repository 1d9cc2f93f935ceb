"""The "xla" path's temporary memory grows linearly in T (compiled memory analysis)."""

from parallax_jax.benchmarking.memory import temp_bytes


def test_xla_temp_memory_is_linear_reference_quadratic():
  xla = [temp_bytes("xla", t) for t in (1024, 2048, 4096)]
  ref = [temp_bytes("reference", t) for t in (1024, 2048)]
  assert all(1.8 < b / a < 2.2 for a, b in zip(xla, xla[1:], strict=False)), xla
  assert ref[1] / ref[0] > 3.5, ref
  assert xla[-1] < ref[0], (xla, ref)
