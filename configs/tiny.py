"""Tiny Parallax LM on the built-in corpus (Python stdlib sources, byte tokenizer).

Trains on a 2-core CPU in under a minute (300 steps) with clearly falling loss:
  parallax-jax train --config configs/tiny.py --workdir runs/tiny
"""

from parallax_jax.train.defaults import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(
    vocab_size=384,  # byte tokenizer (257 ids) padded to a multiple of 128
    d_model=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    mlp_dim=384,
    attention="parallax",
    compute_dtype="float32",
  )
  cfg.train.update(
    steps=300, batch_size=8, seq_len=128, log_every=10, eval_every=100, eval_batches=2
  )
  cfg.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=30, schedule="cosine")
  cfg.checkpoint.update(every_steps=100, keep=2)
  return cfg
