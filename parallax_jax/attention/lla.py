"""Local Linear Attention (LLA, arXiv 2510.01450): a dense reference with an exact ridge solve.

Attention as test-time regression: keys are inputs, values are labels, query ``i`` is the
test point. Softmax attention is the Nadaraya-Watson (local *constant*) estimator with kernel
weights ``w_ij = exp(c q_i.k_j)`` over the keys ``j`` that query ``i`` sees. LLA fits a local
*affine* model ``f(x) = b + W (x - q_i)`` by ridge-regularised weighted least squares,

    min_{b, W}  1/2 sum_j p_ij |v_j - b - W z_ij|^2 + lambda/2 |W|_F^2,
    p_ij = w_ij / sum_j' w_ij',   z_ij = k_j - q_i,

and outputs the intercept ``b_i = f(q_i)``. The normal equations give the closed form
(docs/design.md §8.3; unnormalised ``w`` with ridge ``lambda * omega_i`` is the same problem)

    zbar_i  = sum_j p_ij z_ij                                      [D]
    Sigma_i = sum_j p_ij z_ij z_ij^T + lambda I                    [D, D]
    rho_i   = Sigma_i^{-1} zbar_i                                  (one dense solve per query)
    o_i     = sum_j p_ij (1 - rho_i.z_ij) v_j / (1 - rho_i.zbar_i)

With ``lambda > 0`` the denominator lies in (0, 1]: it is the Schur complement of a positive
definite moment matrix, ``1 - zbar^T (E[z z^T] + lambda I)^{-1} zbar >= lambda / (|zbar|^2 +
lambda)``. ``lambda = 0`` is plain local-linear regression: when every ``v_j`` is an affine
function ``a + B k_j`` of its key and the visible keys span their affine hull (at least
``D + 1`` keys in general position), the fit is exact and ``o_i = a + B q_i``. A row whose keys
do not span it (under a causal mask, the first ``D`` rows of every document) has no unique fit
at ``lambda = 0`` and comes out NaN or arbitrary; the model requires ``lla_ridge > 0``.

The code solves the equivalent centred system ``(Cov_p(k) + lambda I) u_i = zbar_i`` (``u_i =
rho_i / (1 - rho_i.zbar_i)``, Sherman-Morrison), ``o_i = vbar_i - Cov_p(u_i.k, v)``, with no
division by the denominator above. Float32 errors still grow like ``1 / lambda`` (moments of
``k`` carry ~``eps |k|^2``): unit-RMS ``q, k`` at ``D = 32`` give ~3e-6 at ``lambda = 1``, 3e-4
at 1e-2 and 4e-2 at 1e-4, against at most ~1e-5 from float32 rounding of the inputs alone.

This is a *reference*: it materialises ``[B, H, T, T]`` weights and ``[B, H, T, D, D]``
moment matrices and solves one ``[D, D]`` system per query (``jnp.linalg.solve``), so it is
for small models and tests (on several CPU devices a pure-XLA Gauss-Jordan solve replaces it,
see ``solver``). Everything is differentiable by JAX autodiff. Math runs in float32 (float64
inputs stay float64); the output has q's dtype.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.reference import effective_weights
from parallax_jax.attention.validation import mask_args, static_scale


def lla_attention(
  q: Float[Array, "B Tq Hq D"],
  k: Float[Array, "B Tk Hkv D"],
  v: Float[Array, "B Tk Hkv Dv"],
  *,
  ridge: float = 1.0,
  scale: float | None = None,
  causal: bool = True,
  window_size: int | None = None,
  segment_ids: Int[Array, "B T"] | None = None,
  solver: str = "auto",
) -> Float[Array, "B Tq Hq Dv"]:
  """Local Linear Attention (see the module docstring for the math).

  Args:
    q: queries ``[B, Tq, Hq, D]``. k, v: keys and values ``[B, Tk, Hkv, D]``; ``Hq`` a
      multiple of ``Hkv`` (query head ``h`` uses kv head ``h // (Hq // Hkv)``).
    ridge: ``lambda >= 0``, the ridge on the slope ``W`` (relative to the normalised weights).
    scale: ``c`` in ``w_ij = exp(c q_i.k_j)``; default ``1/sqrt(D)``. ``z = k - q`` is unscaled.
    causal: end-aligned causal mask (query ``i`` sees keys ``j <= Tk - Tq + i``).
    window_size: keep only the ``window_size`` most recent keys (needs ``causal``).
    segment_ids: ``[B, T]`` (``Tq == Tk``): attend only within a segment.
    solver: the per-query ``[D, D]`` solve: "lapack" (``jnp.linalg.solve``), "gauss_jordan"
      (pure XLA, unrolled over D), or "auto": "lapack" except with several CPU devices, where
      XLA deadlocks on LAPACK calls inside multi-device train steps (and, on one device,
      inside rematerialised blocks: the model passes "gauss_jordan" there).

  Returns:
    ``[B, Tq, Hq, Dv]`` in q's dtype. A row that sees no key returns 0.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [B, T, H, D]; got q{q.shape} k{k.shape} v{v.shape}")
  b, tq, hq, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  if k.shape[0] != b or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
    raise ValueError(f"k{k.shape} and v{v.shape} do not match q{q.shape}")
  if hq % hkv:
    raise ValueError(f"q heads ({hq}) must be a multiple of k/v heads ({hkv})")
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  # A Python number: NaN passed a bare `ridge < 0` and gave NaN rows; a traced one crashed in it.
  real = isinstance(ridge, numbers.Real) and not isinstance(ridge, bool)
  if not (real and math.isfinite(ridge) and ridge >= 0):
    raise ValueError(f"ridge must be a finite Python number >= 0, got {ridge!r}")
  if segment_ids is not None and (segment_ids.shape != (b, tq) or tq != tk):
    raise ValueError(f"segment_ids{segment_ids.shape} must be [B, T] = {(b, tq)} with Tq == Tk")
  # The op's checks: the window an int >= 1, capped at Tk (no int32 overflow in the mask).
  window_size = mask_args(causal, window_size, tk)
  out_dtype = q.dtype
  dt = jnp.promote_types(q.dtype, jnp.float32)
  c = static_scale(scale, d)  # a finite Python float, as every other attention path takes
  group = hq // hkv
  # [B, H, T, D] layout, kv heads repeated for GQA.
  qh = jnp.swapaxes(q, 1, 2).astype(dt)
  kh = jnp.repeat(jnp.swapaxes(k, 1, 2), group, axis=1).astype(dt)
  vh = jnp.repeat(jnp.swapaxes(v, 1, 2), group, axis=1).astype(dt)

  # p (and which rows see a key) from the op's one masking rule and softmax.
  mask = MaskSpec(q_len=tq, kv_len=tk, causal=causal, window_size=window_size)
  p, visible = effective_weights(q, None, k, scale=c, mask=mask, segment_ids=segment_ids)
  seen = jnp.any(visible, axis=-1, keepdims=True)  # [B, H, Tq, 1]

  # Solved in the centred form (Sherman-Morrison): with C_i = Cov_p(k) + lambda I (z = k - q_i
  # has k's covariance), rho_i / (1 - rho_i.zbar_i) = C_i^{-1} zbar_i =: u_i, and
  # o_i = vbar_i - sum_j p_ij (t_ij - tbar_i) v_j with t_ij = u_i.k_j. The uncentred form divides
  # by 1 - rho.zbar, which is ~lambda / |z|^2 and in float32 mostly rounding error at small
  # lambda (NaN at 1e-6); here a row that sees one key (a document's first) gives v_j exactly.
  kbar = jnp.einsum("bhij,bhjd->bhid", p, kh)
  outer = (kh[..., :, None] * kh[..., None, :]).reshape(*kh.shape[:3], d * d)  # [B, H, Tk, D*D]
  kk = jnp.einsum("bhij,bhjx->bhix", p, outer).reshape(*p.shape[:3], d, d)  # E_p[k k^T]
  cov = kk - kbar[..., :, None] * kbar[..., None, :] + ridge * jnp.eye(d, dtype=dt)
  cov = jnp.where(seen[..., None], cov, jnp.eye(d, dtype=dt))  # keep empty rows solvable
  u = _solve(cov, kbar - qh, solver)  # [B, H, Tq, D]
  t = jnp.einsum("bhid,bhjd->bhij", u, kh)  # u_i.k_j
  # tbar from the same t (not u.kbar): a row's t_ij - tbar_i is then exactly 0 on one key.
  tc = t - jnp.sum(p * t, axis=-1, keepdims=True)
  o = jnp.einsum("bhij,bhje->bhie", p - p * tc, vh)  # rows that see no key: p = 0, o = 0
  return jnp.swapaxes(o, 1, 2).astype(out_dtype)


SOLVERS = ("auto", "lapack", "gauss_jordan")


def _solve(a, b, solver: str):
  """``x = a^{-1} b`` per query: ``a [..., D, D]`` symmetric positive definite, ``b [..., D]``."""
  if solver == "auto":
    # XLA:CPU (jax 0.10) deadlocks when LAPACK custom calls (jnp.linalg.solve, cholesky) run in
    # a train step over several CPU devices (tests use 8): use the pure-XLA solve there. On
    # one CPU device LAPACK is safe and ~8x faster (fwd+bwd, D=32).
    multi_cpu = jax.default_backend() == "cpu" and jax.device_count() > 1
    solver = "gauss_jordan" if multi_cpu else "lapack"
  if solver == "lapack":
    return jnp.linalg.solve(a, b[..., None])[..., 0]
  return _gauss_jordan(a, b)


def _gauss_jordan(a, b):
  """Gauss-Jordan elimination without pivoting (stable for SPD ``a``), unrolled over D."""
  d = a.shape[-1]
  m = jnp.concatenate([a, b[..., None]], axis=-1)  # [..., D, D + 1]
  for i in range(d):
    row = m[..., i, :] / m[..., i, i][..., None]
    m = m - m[..., :, i][..., None] * row[..., None, :]
    m = m.at[..., i, :].set(row)
  return m[..., :, d]


__all__ = ["SOLVERS", "lla_attention"]
