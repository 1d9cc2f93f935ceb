"""Tiny Parallax model on in-context linear regression (Garg et al. 2022), generated on the fly.

Rows of 32 (x, y) pairs, x in R^8, y = w . x with w ~ N(0, I/8) fresh per row, interleaved as 64
tokens of 9 features; the model predicts y_i at x_i's token (parallax_jax.data.regression).
  parallax-jax train --config configs/linreg_tiny.py --workdir runs/linreg_tiny
Eval (256 fixed rows, MSE over all 32 points of a row, the first of which has no context):
  eval_mse_baseline_zero  0.969  predicting 0 (E[y^2] = 1)
  eval_mse_baseline_ols   0.144  least squares on the earlier pairs (optimal here; exact once
                                 8 pairs are seen, so all its error is in the first 8 points)
  eval_mse                0.285 / 0.219 / 0.192 at steps 200 / 400 / 600
Measured on a 2-core CPU: 0.35 s/step when idle (about 4 minutes in all), 0.68 s/step (7.3
minutes) while other jobs shared the cores.
"""

from parallax_jax.train.defaults import base_config


def get_config():
  cfg = base_config()
  cfg.data.update(source="linreg", regression_dim=8, regression_noise=0.0)
  cfg.model.update(
    input_dim=9,
    output_dim=1,
    d_model=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    mlp_dim=256,
    attention="parallax",
    compute_dtype="float32",
  )
  cfg.train.update(
    steps=600, batch_size=64, seq_len=64, log_every=50, eval_every=200, eval_batches=4
  )
  cfg.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=100, schedule="cosine")
  cfg.checkpoint.update(every_steps=200, keep=2)
  return cfg
