"""Study 1: MQAR accuracy against the number of key-value pairs, softmax vs Parallax vs LLA.

Same widths for the three kinds (configs/mqar_tiny.py: 2 layers, d_model 128, 4 heads of 32);
Parallax has W_R on top (+16k parameters per layer). Every key is queried once (as in
Zoology's MQAR), so a row holds 4 x pairs tokens and its length grows with the pairs; 64 key
and 64 value ids (``data.mqar_vocab_size=129``, chance accuracy 1/64). LLA runs at 4 and 8
pairs only: its dense reference costs ~40x softmax per step on CPU.

  parallax-jax sweep --config configs/sweeps/study_mqar.py --workdir runs/study_mqar
"""

PAIRS = [4, 8, 16, 32]
LLA_PAIRS = [4, 8]  # the dense LLA reference (a D x D solve per query) is too slow beyond


def get_config():
  return {  # a plain dict: the keys are dotted
    "base": "configs/mqar_tiny.py",
    "variants": {
      f"pairs{n}": {
        "data.mqar_num_pairs": n,
        "data.mqar_num_queries": n,
        "train.seq_len": 4 * n,
      }
      for n in PAIRS
    },
    "axes": {"model.attention": ["softmax", "parallax", "lla"]},
    "exclude": [
      {"variant": f"pairs{n}", "model.attention": "lla"} for n in PAIRS if n not in LLA_PAIRS
    ],
    "overrides": {
      # the head its committed results ran with (the default until session 17; design §8.4)
      "model.tied_head_scale": "rsqrt_d",
      "data.mqar_vocab_size": 129,
      "model.vocab_size": 129,
      "train.steps": 800,
      "train.eval_every": 200,
      "train.eval_batches": 8,
      "checkpoint.every_steps": 400,
    },
    "metric": "eval_accuracy",
  }
