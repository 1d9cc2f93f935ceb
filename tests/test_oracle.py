"""The NumPy oracle's own gradients against central finite differences (float64)."""

import numpy as np
import pytest

from parallax_jax.testing import oracle


@pytest.mark.parametrize(
  "causal,window,segments,tk",
  [
    (True, None, None, None),
    (True, 3, None, None),
    (False, None, None, 7),
    (True, None, (2, 3), None),
  ],
)
def test_oracle_grads_match_finite_differences(causal, window, segments, tk):
  rng = np.random.default_rng(0)
  b, t, hq, hkv, d = 1, 5, 2, 1, 3
  tk = tk or t
  q, r, g = (rng.standard_normal((b, t, hq, d)) for _ in range(3))
  k, v = (rng.standard_normal((b, tk, hkv, d)) for _ in range(2))
  seg = None
  if segments:
    seg = np.repeat(np.arange(len(segments)), segments)[None]
  mask = oracle.visible_mask(t, tk, causal=causal, window_size=window, segment_ids=seg)
  scale = 0.7
  analytic = oracle.grads(q, r, k, v, g, scale=scale, mask=mask)

  def loss(q, r, k, v):
    return np.sum(oracle.forward(q, r, k, v, scale=scale, mask=mask)[0] * g)

  args = [q, r, k, v]
  eps = 1e-6
  for idx, grad in enumerate(analytic):
    fd = np.zeros_like(args[idx])
    for pos in np.ndindex(args[idx].shape):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[idx][pos] += eps
      minus[idx][pos] -= eps
      fd[pos] = (loss(*plus) - loss(*minus)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-8, rtol=1e-6)


def test_oracle_mask_conventions():
  # End-aligned causal with Tq < Tk: the single query sees every key.
  assert oracle.visible_mask(1, 4, causal=True, window_size=None).all()
  # Window of 2 keeps the diagonal and one key before it.
  m = oracle.visible_mask(4, 4, causal=True, window_size=2)[0]
  assert m.sum(axis=1).tolist() == [1, 2, 2, 2] and m[3, 2] and m[3, 3] and not m[3, 1]
