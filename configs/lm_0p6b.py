"""Qwen3-0.6B-like Parallax LM (28 layers, d_model 1024, 16/8 heads of 128, MLP 3072, tied)."""

from parallax_jax.train.defaults import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(
    vocab_size=151936,
    d_model=1024,
    num_layers=28,
    num_heads=16,
    num_kv_heads=8,
    head_dim=128,
    mlp_dim=3072,
    attention="parallax",
    tie_embeddings=True,
    rope_theta=1_000_000.0,
    compute_dtype="bfloat16",
    remat="dots_attention",  # keep matmul outputs and the attention residuals
    logits_chunk=512,  # fused LM head + cross-entropy: no [B, T, 152k] logits
  )
  cfg.train.update(
    steps=100_000, batch_size=64, seq_len=4096, log_every=20, eval_every=2000, eval_batches=8
  )
  cfg.train.compilation_cache_dir = "~/.cache/parallax_jax/xla"  # restarts skip the compile
  cfg.optimizer.update(
    name="muon",
    learning_rate=0.02,
    adam_learning_rate=3e-3,
    schedule="wsd",
    warmup_steps=2000,
    weight_decay=0.1,
  )
  cfg.checkpoint.update(every_steps=1000, keep=3)
  return cfg
