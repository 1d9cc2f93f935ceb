"""GPU study (issue 16), part 2: MQAR recall against the number of key-value pairs at a scale
where softmax learns it (Zoology-like), softmax vs Parallax, on one H200.

Model: configs/mqar_tiny.py widened to d_model 256, 4 heads of 64 (4 KV heads), MLP 512, 2
layers (and 4 layers at 64 pairs). Task: every key queried once, so a row
is 4 x pairs tokens (16..256); 512 key and 512 value ids (data.mqar_vocab_size=1025, chance
accuracy 1/512). Training: 10,000 AdamW steps of 128 rows, cosine, 500 warmup steps, each
kind at two learning rates (1e-3, 3e-3) so that neither loses by its learning rate, and at
3e-4 too at 32 and 64 pairs (``LOW_RATE``). Metric:
answer accuracy on 8 fixed held-out batches (`eval_accuracy`).

Device time (measured in sessions 20-21): the models are tiny (3.2M parameters), so a step is
launch-bound. Four points at once (`--parallel 4`) take 216-398 s each (fewer pairs, shorter
rows), a device call of one group 238-406 s.

Seeds: every point runs at seed 0; the groups in ``SEED_ONE`` also at seed 1 (``..._s1``):
recall is learnt in a sudden jump whose step varies, so one seed per point cannot tell a kind
that fails from one that was slow.

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
# L2_pairs64 added in session 20 (only Parallax at 1e-3 learnt it, at step ~7500; not at seed 1);
# L2_pairs32 in session 21 (Parallax learnt it at both rates, softmax at neither)
SEED_ONE = ("L2_pairs64", "L2_pairs32")
# Softmax learnt recall only at the scan's low edge (1e-3) and failed there at 32 and 64 pairs,
# so those groups also run both kinds a step lower (added in session 21; seed 0 only), the scan
# rule of the LM study: a kind must not lose by its learning rate.
LOW_RATE = 3e-4
LOW_RATE_GROUPS = ("L2_pairs32", "L2_pairs64")
PRIORITY = (  # device calls run these groups (fnmatch patterns of four points) in order
  # done (session 20): 64 pairs: softmax stays on the plateau at both rates (accuracy 0.08),
  # Parallax learns it at 1e-3 (0.9997), not at 3e-3; 16 pairs: softmax learns it at 1e-3 (by
  # step 2000), not at 3e-3 (0.214), Parallax at both
  "L2_pairs64_*_lr0.001",
  "L2_pairs64_*_lr0.003",
  "L2_pairs16_*",
  # done (session 21): 64 pairs at seed 1: no run learnt it, Parallax at 1e-3 included (0.082);
  # 32 pairs: Parallax at both rates (by step 4000 / 2000), softmax at neither (0.131); 4 pairs:
  # softmax at 1e-3 (0.9995), not at 3e-3 (0.516), Parallax at both
  "L2_pairs64_*_s1",
  "L2_pairs32_*",
  "L2_pairs4_*",
  # done (session 22): at 3e-4 no run learnt it (32 pairs: softmax 0.140, Parallax 0.132; 64
  # pairs: 0.084 / 0.082); 32 pairs at seed 1: Parallax at 1e-3 (by step 5000), not at 3e-3,
  # softmax at neither
  "L2_*_lr0.0003",
  "L2_pairs32_*_s1",
  # done (session 28, on an H100): 4 layers at 64 pairs: no run learnt it (softmax 0.081 /
  # 0.038 at 1e-3 / 3e-3, Parallax 0.084 / 0.083)
  "L4_*",
)


def variants() -> dict[str, dict]:
  out = {}
  for layers, pair_counts in ((2, PAIRS), (4, DEEP_PAIRS)):
    for n in pair_counts:
      group = f"L{layers}_pairs{n}"
      low = (LOW_RATE,) if group in LOW_RATE_GROUPS else ()
      for kind in KINDS:
        for lr in LEARNING_RATES + low:
          name = f"{group}_{kind}_lr{lr:g}"
          out[name] = {
            "model.num_layers": layers,
            "model.attention": kind,
            "optimizer.learning_rate": lr,
            "data.mqar_num_pairs": n,
            "data.mqar_num_queries": n,
            "train.seq_len": 4 * n,
          }
          if group in SEED_ONE and lr in LEARNING_RATES:
            out[f"{name}_s1"] = {**out[name], "train.seed": 1}
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
