"""GPU study (issue 16), part 2: MQAR recall against the number of key-value pairs at a scale
where softmax learns it (Zoology-like), softmax vs Parallax, on one H200.

Model: configs/mqar_tiny.py widened to d_model 256, 4 heads of 64 (4 KV heads), MLP 512, 2
layers (and 4 layers at 64 pairs). Task: every key queried once, so a row
is 4 x pairs tokens (16..256); 512 key and 512 value ids (data.mqar_vocab_size=1025, chance
accuracy 1/512). Training: 10,000 AdamW steps of 128 rows, cosine, 500 warmup steps, each
kind at two learning rates (1e-3, 3e-3) so that neither loses by its learning rate. Metric:
answer accuracy on 8 fixed held-out batches (`eval_accuracy`).

Device time (estimate, to check on the first call): the models are tiny (3.2M parameters), so
a step is launch-bound, ~10-20 ms: 10k steps take ~2-4 minutes plus ~1 minute of start-up, and
one device call runs 2-3 points.

One device call runs a few points: `parallax-jax sweep --points` takes their variant names or
fnmatch patterns, comma-separated (e.g. "L2_pairs64_*"); without it, every point.

  parallax-jax sweep --config configs/sweeps/gpu_study_mqar.py --points 'L2_pairs4_*_lr0.003' \\
      --workdir runs/gpu_study_mqar
"""

BASE = "configs/mqar_tiny.py"
PAIRS = (4, 16, 32, 64)
DEEP_PAIRS = (64,)  # 4 layers where 2 may not suffice
LEARNING_RATES = (1e-3, 3e-3)
KINDS = ("softmax", "parallax")
PRIORITY = (  # device calls run these groups in order
  "L2_pairs64_*",
  "L2_pairs32_*",
  "L2_pairs16_*",
  "L2_pairs4_*",
  "L4_*",
)


def variants() -> dict[str, dict]:
  out = {}
  for layers, pair_counts in ((2, PAIRS), (4, DEEP_PAIRS)):
    for n in pair_counts:
      for kind in KINDS:
        for lr in LEARNING_RATES:
          out[f"L{layers}_pairs{n}_{kind}_lr{lr:g}"] = {
            "model.num_layers": layers,
            "model.attention": kind,
            "optimizer.learning_rate": lr,
            "data.mqar_num_pairs": n,
            "data.mqar_num_queries": n,
            "train.seq_len": 4 * n,
          }
  return out


def get_config():
  return {  # a plain dict: the keys are dotted
    "base": BASE,
    "variants": variants(),
    "overrides": {
      "data.mqar_vocab_size": 1025,
      "model.vocab_size": 1152,  # >= 1025, a multiple of 128
      "model.d_model": 256,
      "model.num_heads": 4,
      "model.num_kv_heads": 4,
      "model.head_dim": 64,
      "model.mlp_dim": 512,
      "model.compute_dtype": "bfloat16",
      "train.steps": 10_000,
      "train.batch_size": 128,
      "train.log_every": 100,
      "train.eval_every": 1000,
      "train.eval_batches": 8,
      "optimizer.name": "adamw",
      "optimizer.schedule": "cosine",
      "optimizer.warmup_steps": 500,
      "checkpoint.every_steps": 10_000,
      "checkpoint.keep": 1,
    },
    "metric": "eval_accuracy",
  }
