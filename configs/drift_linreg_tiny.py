"""Tiny Parallax model on drifting in-context linear regression, generated on the fly.

Like configs/linreg_tiny.py, but the weights follow a random walk along the row
(w_{i+1} = w_i + 0.1 eps_i, eps_i ~ N(0, I_8)) and y has noise std 0.1, so recent pairs matter
more than old ones: the non-stationary setting where local-linear attention should help.
  parallax-jax train --config configs/drift_linreg_tiny.py --workdir runs/drift_linreg_tiny
Eval (256 fixed rows, MSE over all 32 points; E[y_i^2] grows along the row with the drift):
  eval_mse_baseline_zero   2.157  predicting 0
  eval_mse_baseline_ols    0.828  ridge on all earlier pairs (the stationary optimum: blind to
                                  drift; with no noise it would interpolate stale pairs and
                                  blow up, hence regression_noise=0.1)
  eval_mse_baseline_bayes  0.593  posterior mean knowing the drift and noise (Kalman): the floor
  eval_mse                 1.123 / 0.764 / 0.711 at steps 200 / 400 / 600, below ridge: the
                           model weights recent pairs more
Measured on a 2-core CPU shared with other jobs: 0.7-1.9 s/step, 13 minutes (about 4 minutes
at the idle 0.35 s/step of configs/linreg_tiny.py, the same model and shapes).
"""

from pathlib import Path

from parallax_jax.train.config import load_config


def get_config():
  cfg = load_config(Path(__file__).with_name("linreg_tiny.py"))  # same model and optimizer
  cfg.data.update(
    source="drift_linreg", regression_dim=8, regression_noise=0.1, regression_drift=0.1
  )
  return cfg
