"""Tiny Parallax LM on MQAR (multi-query associative recall, generated on the fly).

8 key-value pairs then 8 queries per row (keys 1..31, values 32..63: chance accuracy 1/32).
Trains on a 2-core CPU in about a minute; eval_accuracy (on the answers) reaches ~0.35, far
above chance (0.03):
  parallax-jax train --config configs/mqar_tiny.py --workdir runs/mqar_tiny
Caveat: with every key queried, part of that accuracy comes from elimination (the last
answer is the one value not yet answered: 100% on the last query, 11-55% on the others after
1200 steps); full in-context recall (an induction circuit) needs longer training.
"""

from parallax_jax.train.defaults import base_config


def get_config():
  cfg = base_config()
  cfg.data.update(source="mqar", mqar_vocab_size=64, mqar_num_pairs=8, mqar_num_queries=8)
  cfg.model.update(
    vocab_size=64,
    d_model=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    mlp_dim=256,
    attention="parallax",
    compute_dtype="float32",
  )
  cfg.train.update(
    steps=600, batch_size=64, seq_len=32, log_every=20, eval_every=100, eval_batches=4
  )
  cfg.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=50, schedule="cosine")
  cfg.checkpoint.update(every_steps=200, keep=2)
  return cfg
