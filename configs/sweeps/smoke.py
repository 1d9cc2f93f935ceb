"""Smoke sweep: Parallax vs softmax attention on a very small tiny-config model (CPU, minutes).

parallax-jax sweep --config configs/sweeps/smoke.py --workdir runs/sweep_smoke
"""

import ml_collections


def get_config():
  cfg = ml_collections.ConfigDict()
  cfg.base = "configs/tiny.py"
  cfg.mode = "grid"
  cfg.axes = ml_collections.ConfigDict(
    {"model.attention": ["parallax", "softmax"]}, allow_dotted_keys=True
  )
  cfg.overrides = ml_collections.ConfigDict(
    {
      "model.d_model": 64,
      "model.num_layers": 1,
      "model.head_dim": 16,
      "model.mlp_dim": 128,
      "train.steps": 60,
      "train.batch_size": 8,
      "train.seq_len": 64,
      "train.log_every": 5,
      "train.eval_every": 30,
      "train.eval_batches": 1,
      "optimizer.warmup_steps": 5,
      "optimizer.learning_rate": 1e-2,
      "checkpoint.every_steps": 30,
    },
    allow_dotted_keys=True,
  )
  return cfg
