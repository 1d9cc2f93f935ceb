"""In-context linear regression (Garg et al. 2022), stationary ("linreg") or drifting.

One row of ``seq_len = 2 n`` tokens, each a float vector of ``d + 1`` features
(``d = regression_dim``), pairs interleaved as x-tokens and y-tokens::

    [x_1, 0] [0, y_1] [x_2, 0] [0, y_2] ... [x_n, 0] [0, y_n]

``x_i ~ N(0, I_d)``, ``y_i = w_i . x_i + noise * N(0, 1)``, ``w_1 ~ N(0, I_d / d)`` (so
``E[y_1^2] = 1 + noise^2``). "linreg": ``w_i = w_1``. "drift_linreg": a random walk
``w_{i+1} = w_i + drift * eps_i``, ``eps_i ~ N(0, I_d)``: recent pairs say more about ``w_i``
than old ones, and ``E[y_i^2] = 1 + d drift^2 (i - 1) + noise^2`` grows along the row.

The model predicts ``y_i`` at the x-token of point ``i`` (it has seen pairs ``1 .. i-1``):
``targets[2i - 2] = y_i`` and ``loss_mask`` is 1 on every x-token (0 on y-tokens). The first
point has no context, so its best prediction is 0.

Eval rows also carry two reference predictions at the x-tokens, so eval can log their MSE
next to the model's:

- ``baseline_ols``: the posterior mean of ``y_i`` given the earlier pairs under the stationary
  prior, i.e. least squares on all earlier pairs (minimum-norm while underdetermined; ridge
  with ``lambda = d noise^2`` when ``noise > 0``). Bayes-optimal for "linreg", blind to drift.
- ``baseline_bayes``: the posterior mean under the true model (random-walk prior and noise),
  the Bayes-optimal prediction of both tasks: the MSE floor.

Both come from one Gaussian-process identity: with ``K_ij = Cov(y_i, y_j) = x_i . x_j
(1/d + drift^2 min(i, j)) + noise^2 [i = j]`` and ``K = L L^T`` (Cholesky), ``z = L^-1 y`` has
independent entries and ``E[y_i | y_<i] = y_i - L_ii z_i``.
"""

from __future__ import annotations

import numpy as np

from parallax_jax.data.config import DataConfig
from parallax_jax.errors import UserError

# Added to K's diagonal: keeps the noise-free (rank <= d) covariance positive definite. Acts as
# a ridge of ~1e-9 on w, far below any MSE the model reaches.
_JITTER = 1e-9


def num_points(seq_len: int) -> int:
  return seq_len // 2


def one_step_predictions(
  x_ND: np.ndarray, y_N: np.ndarray, *, noise: float, drift: float
) -> np.ndarray:
  """``E[y_i | x_<=i, y_<i]`` for every ``i`` (float64 ``[N]``) under the generative model
  with these ``noise`` and ``drift`` (``drift=0``: the stationary ridge / least squares)."""
  n, d = x_ND.shape
  steps = np.arange(n, dtype=np.float64)
  prior = 1.0 / d + drift**2 * np.minimum(steps[:, None], steps[None, :])
  cov = (x_ND @ x_ND.T) * prior + (noise**2 + _JITTER) * np.eye(n)
  chol = np.linalg.cholesky(cov)
  z = np.linalg.solve(chol, y_N)  # lower-triangular: z_i depends on y_<=i only
  return y_N - np.diag(chol) * z


def sample_points(
  rng: np.random.Generator, n: int, d: int, *, noise: float, drift: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(x [n, d], y [n], w [n, d])`` float64: ``n`` points of one row (module docstring)."""
  w0_D = rng.normal(0.0, d**-0.5, d)
  steps_ND = drift * rng.normal(size=(n, d))
  steps_ND[0] = 0.0  # w_1 = w0; w_{i+1} = w_i + drift * eps_i
  w_ND = w0_D + np.cumsum(steps_ND, axis=0)
  x_ND = rng.normal(size=(n, d))
  y_N = np.einsum("nd,nd->n", w_ND, x_ND) + noise * rng.normal(size=n)
  return x_ND, y_N, w_ND


class RegressionRow:
  """Row index -> batch features ``[seq_len]`` (``inputs``: ``[seq_len, d + 1]``).

  ``entropy``: the integers seeding the split; row ``n`` uses ``default_rng([*entropy, n])``.
  ``with_baselines`` adds ``baseline_ols`` and ``baseline_bayes`` (eval rows).
  """

  def __init__(self, cfg: DataConfig, seq_len: int, entropy: tuple[int, ...], with_baselines: bool):
    self.seq_len, self.entropy, self.with_baselines = seq_len, tuple(entropy), with_baselines
    self.dim, self.noise = cfg.regression_dim, float(cfg.regression_noise)
    self.drift = float(cfg.regression_drift)  # validated: 0 for "linreg"

  def __call__(self, index) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([*self.entropy, int(index)])
    n, d, t = num_points(self.seq_len), self.dim, self.seq_len
    x_ND, y_N, _ = sample_points(rng, n, d, noise=self.noise, drift=self.drift)
    inputs = np.zeros((t, d + 1), np.float32)
    inputs[0 : 2 * n : 2, :d] = x_ND
    inputs[1 : 2 * n : 2, d] = y_N
    targets = np.zeros(t, np.float32)
    targets[0 : 2 * n : 2] = y_N
    loss_mask = np.zeros(t, np.float32)
    loss_mask[0 : 2 * n : 2] = 1.0
    row = {
      "inputs": inputs,
      "targets": targets,
      "segment_ids": np.ones(t, np.int32),
      "positions": np.arange(t, dtype=np.int32),
      "loss_mask": loss_mask,
    }
    if self.with_baselines:
      for name, drift in (("ols", 0.0), ("bayes", self.drift)):
        pred = np.zeros(t, np.float32)
        pred[0 : 2 * n : 2] = one_step_predictions(x_ND, y_N, noise=self.noise, drift=drift)
        row[f"baseline_{name}"] = pred
    return row


def check_regression(cfg: DataConfig, seq_len: int, model=None) -> None:
  """Raises ``ValueError`` naming the field when the task does not fit the run."""
  if seq_len < 2 or seq_len % 2:
    raise UserError(
      f"data.source={cfg.source!r} needs an even train.seq_len >= 2 (an x-token and a y-token "
      f"per point), got {seq_len}"
    )
  if model is not None:
    if model.input_dim != cfg.regression_dim + 1:
      raise UserError(
        f"data.source={cfg.source!r} feeds vectors of data.regression_dim + 1 = "
        f"{cfg.regression_dim + 1} features: set model.input_dim={cfg.regression_dim + 1} "
        f"(got {model.input_dim})"
      )
    if model.output_dim != 1:
      raise UserError(
        f"data.source={cfg.source!r} predicts one number per point: set model.output_dim=1 "
        f"(got {model.output_dim})"
      )


def describe_regression(cfg: DataConfig, seq_len: int | None = None) -> dict:
  drift = cfg.regression_drift
  out = {
    "task": cfg.source,
    "dim": cfg.regression_dim,
    "noise": cfg.regression_noise,
    "drift": drift,
    "input_dim": cfg.regression_dim + 1,
  }
  if seq_len is not None:
    n = num_points(seq_len)
    out["num_points"] = n
    # E[y^2] averaged over the n predicted points: the MSE of predicting 0.
    out["zero_baseline_mse"] = (
      1.0 + cfg.regression_noise**2 + cfg.regression_dim * drift**2 * ((n - 1) / 2)
    )
  return out
