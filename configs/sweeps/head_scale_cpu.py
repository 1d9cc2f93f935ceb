"""The tied LM head's logit scale on CPU (issue 16's AdamW plateau): "rsqrt_d" against "one".

The GPU study's AdamW runs stalled near the unigram loss (experiments/results/studies_gpu/
results.md). With ``model.tied_head_scale="rsqrt_d"`` (the default until session 17) every
logit is at most ``g sqrt(d) rms(e_v)``, 0.32 at init here, and AdamW moves each element of e_v
and g by at most its rate per step; ``"one"`` is Qwen3's tied head (design §8.4).
configs/tiny.py widened to d_model 256 (4 heads of 64, MLP 768; byte tokenizer), 300 steps of
8 x 128 tokens, held-out loss on 8 batches every 50 steps. Arms, per optimizer and seed (0, 1):
the two scales, under AdamW at 1e-3 and 4e-3 and under Muon (0.02; embeddings and norms by
AdamW at 3e-3, as in the GPU study); and AdamW at 1e-3 and Muon again with a 8192-entry BPE
instead of bytes. About 40 s per
point on a 2-core CPU (byte tokens), 20 points.

  parallax-jax sweep --config configs/sweeps/head_scale_cpu.py --workdir runs/head_scale_cpu
  python -m experiments.seed_pairs runs/head_scale_cpu/results.csv --base rsqrt_d
"""

SEEDS = (0, 1)
OPTIMIZERS = {
  "adamw_lr1e-3": {"optimizer.name": "adamw", "optimizer.learning_rate": 1e-3},
  "adamw_lr4e-3": {"optimizer.name": "adamw", "optimizer.learning_rate": 4e-3},
  "muon": {
    "optimizer.name": "muon",
    "optimizer.learning_rate": 0.02,
    "optimizer.adam_learning_rate": 3e-3,
    # Its AdamW group decayed norms and embeddings too (optax's muon) when this study ran; kept
    # so every run of it trains alike (the default before 2026-12-05)
    "optimizer.muon_adam_decay": "all",
  },
}
# The same with a 8192-entry byte-level BPE (trained at each run's start on 8 MiB of the
# training split; deterministic): a vocabulary that needs a wider logit range than bytes.
BPE = {"data.tokenizer": "train:bpe:8192:8", "model.vocab_size": 8192}
OPTIMIZERS |= {
  "adamw_lr1e-3_bpe8k": {**OPTIMIZERS["adamw_lr1e-3"], **BPE},
  "muon_bpe8k": {**OPTIMIZERS["muon"], **BPE},
}
SCALES = ("rsqrt_d", "one")


def get_config():
  return {  # a plain dict: the override keys are dotted
    "base": "configs/tiny.py",
    "variants": {
      f"{opt}+{scale}_s{seed}": {
        **overrides,
        "model.tied_head_scale": scale,
        "train.seed": seed,
      }
      for opt, overrides in OPTIMIZERS.items()
      for scale in SCALES
      for seed in SEEDS
    },
    "overrides": {
      "model.d_model": 256,
      "model.num_heads": 4,
      "model.num_kv_heads": 2,
      "model.head_dim": 64,
      "model.mlp_dim": 768,
      "train.steps": 300,
      "train.eval_every": 50,
      "train.eval_batches": 8,
      "checkpoint.every_steps": 300,
    },
    "metric": "eval_loss",
  }
