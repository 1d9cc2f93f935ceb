"""The XLA:CPU flags the package sets on import (``parallax_jax/xla_cpu_flags.py``,
docs/design.md §11.3): the computation jaxlib 0.10.2 miscompiled, checked against float64 NumPy,
and when the flag is (not) added."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallax_jax import xla_cpu_flags


def test_a_merge_jaxlib_0_10_2_miscompiled_is_computed_right():
  """Two reductions over a split axis of one shared broadcast weight, then combined: with a
  size-1 axis and 4+ rows, jaxlib 0.10.2's YNN fusions returned numbers off by up to 1e31."""
  b, splits, h, rows, d = 5, 2, 1, 20, 64
  rng = np.random.default_rng(0)
  c = rng.standard_normal((b, splits, h, rows)).astype(np.float32)
  a1, a2 = (rng.standard_normal((b, splits, h, rows, d)).astype(np.float32) for _ in range(2))

  def merge(c, a1, a2):
    s1 = jnp.sum(c[..., None] * a1, axis=1)
    s2 = jnp.sum(c[..., None] * a2, axis=1)
    return s1 - s2 * s1

  c64, a164, a264 = (x.astype(np.float64) for x in (c, a1, a2))
  s1 = (c64[..., None] * a164).sum(1)
  want = s1 - (c64[..., None] * a264).sum(1) * s1
  got = np.asarray(jax.jit(merge)(c, a1, a2), np.float64)
  assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()


@pytest.mark.parametrize(
  "version, flags, added",
  [
    ("0.10.2", "", True),
    ("0.10.2", "--xla_force_host_platform_device_count=8", True),
    ("0.10.2", "--xla_cpu_experimental_ynn_fusion_type=ynn", False),  # the user's own choice
    ("0.11.2", "", False),  # not measured there: an unknown flag would be fatal
  ],
)
def test_the_flag_is_added_on_affected_jaxlib_only(version, flags, added, monkeypatch):
  monkeypatch.setattr(xla_cpu_flags, "_cpu_backend_started", lambda: False)
  env = {"XLA_FLAGS": flags}
  assert xla_cpu_flags.apply(env, version) is added
  want = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip() if added else flags
  assert env["XLA_FLAGS"] == want


def test_too_late_is_said_not_ignored(monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu_flags, "_cpu_backend_started", lambda: True)
  env = {}
  assert not xla_cpu_flags.apply(env, "0.10.2") and "XLA_FLAGS" not in env
  assert "import parallax_jax first" in caplog.text
