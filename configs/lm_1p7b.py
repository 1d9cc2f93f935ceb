"""Qwen3-1.7B-like Parallax LM: lm_0p6b with d_model 2048, MLP 6144 and a larger batch."""

from pathlib import Path

from parallax_jax.train.config import load_config


def get_config():
  cfg = load_config(Path(__file__).with_name("lm_0p6b.py"))
  cfg.model.update(d_model=2048, mlp_dim=6144)
  cfg.train.update(batch_size=128)
  return cfg
