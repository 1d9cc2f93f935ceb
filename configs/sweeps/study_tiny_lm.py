"""Study 2: tiny LM on the built-in corpus, softmax vs Parallax under AdamW and under Muon.

Per optimizer and seed, four models trained on the same data stream (same batch and sequence
length):
- parallax: configs/tiny.py as is;
- softmax: the same widths without W_R (fewer parameters, fewer FLOPs);
- softmax_params: softmax with its MLP widened to spend W_R's parameters (parameter-matched);
- softmax_compute: softmax trained for more steps, so its training FLOPs (attention included,
  ``ModelConfig.flops_per_token``) equal Parallax's (compute-matched).
And under Muon, parallax_r0: Parallax with W_R initialised to 0 (for the attention analysis).

  parallax-jax sweep --config configs/sweeps/study_tiny_lm.py --workdir runs/study_tiny_lm
"""

import dataclasses

from parallax_jax.model import ModelConfig
from parallax_jax.train.config import load_config

STEPS, SEQ_LEN, BATCH = 600, 256, 8
SEEDS = [0, 1]
OPTIMIZERS = {
  "adamw": {"optimizer.name": "adamw", "optimizer.learning_rate": 3e-3},
  # Muon on the matrices (W_R included), AdamW on embeddings and norms.
  "muon": {
    "optimizer.name": "muon",
    "optimizer.learning_rate": 0.02,
    "optimizer.adam_learning_rate": 3e-3,
    # Its AdamW group decayed norms and embeddings too (optax's muon) when this study ran; kept
    # so every run of it trains alike (the default before 2026-12-05)
    "optimizer.muon_adam_decay": "all",
  },
}


def _matched():
  """(mlp_dim of a softmax model with Parallax's parameter count, softmax steps at equal FLOPs)."""
  parallax = ModelConfig.from_dict(load_config("configs/tiny.py").model.to_dict())
  softmax = dataclasses.replace(parallax, attention="softmax")
  mlp_dim = min(
    range(parallax.mlp_dim, 2 * parallax.mlp_dim),
    key=lambda f: abs(dataclasses.replace(softmax, mlp_dim=f).num_params() - parallax.num_params()),
  )
  ratio = parallax.flops_per_token(SEQ_LEN) / softmax.flops_per_token(SEQ_LEN)
  return mlp_dim, round(STEPS * ratio)


def get_config():
  mlp_dim, compute_steps = _matched()
  models = {
    "parallax": {},
    "softmax": {"model.attention": "softmax"},
    "softmax_params": {"model.attention": "softmax", "model.mlp_dim": mlp_dim},
    "softmax_compute": {"model.attention": "softmax", "train.steps": compute_steps},
  }
  return {  # a plain dict: the override keys are dotted
    "base": "configs/tiny.py",
    "variants": {
      **{
        f"{opt}+{model}": {**opt_overrides, **model_overrides}
        for opt, opt_overrides in OPTIMIZERS.items()
        for model, model_overrides in models.items()
      },
      # W_R = 0 at init: exactly softmax at step 0, so whatever negative weights the
      # attention analysis finds were learned, not inherited from a random W_R.
      "muon+parallax_r0": {**OPTIMIZERS["muon"], "model.r_init": "zeros"},
    },
    "axes": {"train.seed": SEEDS},  # initialisation and data order
    "overrides": {
      # the head its committed results ran with (the default until session 17; design §8.4)
      "model.tied_head_scale": "rsqrt_d",
      "train.steps": STEPS,
      "train.seq_len": SEQ_LEN,
      "train.batch_size": BATCH,
      "train.log_every": 20,
      "train.eval_every": 200,
      "train.eval_batches": 8,
      "optimizer.warmup_steps": 50,
      "checkpoint.every_steps": 200,
    },
  }
