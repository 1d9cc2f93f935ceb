"""GPU study (issue 16): softmax vs Parallax, ~100M-parameter Qwen3-style LM, one H200 per run.

Model: configs/lm_0p6b.py narrowed to 12 layers, d_model 768, 6 query / 3 KV heads of 128
(the head size the GPU kernels are tuned for), SwiGLU MLP 2048, tied embeddings, vocab 32000:
102M parameters softmax, 110M Parallax (W_R: 768 x 768 per layer). Data: source
"python_corpus" (the H200 image's installed .py/.md/.rst/.txt, 319 MiB; 2% of the files held
out by a hash of their path) through a 32k byte-level BPE trained at the start of each run on
64 MiB of the training split (deterministic: every run trains the same one).
Rows of 2048 tokens, batch 64 (131,072 tokens per step), cosine schedule, 10% warmup.

Step count, for ~8 minutes of one device call per run (estimate, to check on the first run):
FLOPs per token at seq 2048 (`ModelConfig.flops_per_token`) are 0.884 G Parallax and 0.728 G
softmax. bench_train_lm_0p6b_2026-12-02 measured 373 (Parallax) and 413 (softmax) TFLOP/s of
model FLOPs on an H200 at 0.6B; at that rate this model would run 422k and 567k tokens/s.
Narrower matmuls reach a lower MFU. Measured (session 9, 400 steps = 52M tokens, about half a
pass over the corpus): median 294k tokens/s Parallax and 345k softmax (MFU about 25%); a run
takes 290-400 s of one device call, start-up (corpus index, tokenizer training, compilation)
and the four evals included. STEPS stays 400 for every run.

Arms (variants; `<optimizer>+<model>[_lr<scale>]_s<seed>`):
- main pair: parallax and softmax, under Muon (W_R in the Muon group: every matrix is) and
  under AdamW, seeds 0 and 1;
- learning-rate scans, per optimizer and kind separately, seed 0: the base LR x0.5 and x2;
- parallax_r0: W_R = 0 at init, exactly softmax at step 0, per optimizer, seeds 0 and 1;
- Muon's main trio (softmax, parallax, parallax_r0) also at seed 2 (the seed spread);
- softmax_params: MLP widened to Parallax's parameter count; softmax_compute: more steps, to
  Parallax's training FLOPs (attention included); both per optimizer, seed 0.
- softmax's Muon follow-up (session 14): x0.25 at seed 0 and x0.5 at seed 1, since x0.5 won
  the first scan at its edge.
- AdamW's base LR is 1e-3 (session 15; it was 2e-3, at which both Parallax runs stalled near
  the unigram loss); the two 2e-3 runs are the scan's x2 points, and parallax_r0 keeps its x2
  run too (`adamw+parallax_r0_lr2_s0`). Session 16 found every kind slower still at 1e-3 (the
  rate is too low, not too high), so the AdamW scan goes up: x4 for the three kinds and x8 for
  softmax (`ADAMW_UP_SCAN`).
- `*_head1`: Qwen3's unscaled tied head (`model.tied_head_scale="one"`; every other arm is
  pinned to the scaled one it ran with), each the `HEAD_ONE` point it names with the head alone
  changed: softmax at each optimizer's base rate (session 16), then, once it had won by far
  (session 17), Parallax (like_q and W_R = 0) per optimizer and the Muon pair's seed 1; after
  Parallax led at both seeds under Muon (session 18), Muon's matched controls, third seed and
  LR scans, and AdamW's LR scan; then (session 29) one more step for each scan won at its edge
  (`HEAD_ONE_EDGES`: like_q at Muon x4 and AdamW x0.25, softmax at AdamW x0.5); then (session
  30) W_R = 0 at AdamW x0.5 and AdamW's seed-1 pair at 5e-4 (`HEAD_ONE_SEEDS`); then (session
  31) W_R = 0's seed 1 there, an AdamW compute-matched softmax and both AdamW scans one step
  lower; then (session 32) that compute-matched softmax's seed 1 and W_R = 0 at Muon x2; then
  (session 33) AdamW's W_R = 0, softmax and compute-matched softmax at seed 2 and its
  parameter-matched softmax.
- `DROPPED` (session 33): the scaled head's AdamW points not yet run when every unscaled-head
  point was done. With the scaled head every kind sits on a plateau under AdamW (perplexity
  450-550 at every rate up to 4e-3), so they could not change the study's answer.
`PRIORITY` orders them for the device sessions (experiments/results/studies_gpu/results.md).

One device call runs one point (or a few): `parallax-jax sweep --points` takes their variant
names or fnmatch patterns, as arguments or a comma list (e.g. "muon+*_s1"); without it, every
point.

  parallax-jax sweep --config configs/sweeps/gpu_study_lm.py --points muon+parallax_s0 \\
      --workdir runs/gpu_study_lm
  parallax-jax sweep --config configs/sweeps/gpu_study_lm.py --workdir runs/gpu_study_lm --dry-run
"""

import dataclasses

from parallax_jax.model import ModelConfig
from parallax_jax.train.config import apply_overrides, load_config

BASE = "configs/lm_0p6b.py"
STEPS, SEQ_LEN, BATCH = 400, 2048, 64
MODEL = {
  "model.vocab_size": 32000,  # = the BPE's 32000 ids, a multiple of 128
  "model.d_model": 768,
  "model.num_layers": 12,
  "model.num_heads": 6,
  "model.num_kv_heads": 3,
  "model.head_dim": 128,
  "model.mlp_dim": 2048,
  "model.remat": "none",  # ~60 GiB of activations at batch 64 (0.6B: 92 GiB at 65k tokens)
  "model.logits_chunk": 512,
  # Pinned: the first arms ran with the scaled tied head; HEAD_ONE's arms use the unscaled one.
  "model.tied_head_scale": "rsqrt_d",
}
CORPUS_SHA256 = "a55c363dc8765dddf6f6079cda91bd92e4b7681d97cd0b984dc6a6538c134198"
DATA = {
  "data.source": "python_corpus",
  "data.tokenizer": "train:bpe:32000",
  "data.eval_fraction": 0.02,
  "data.read_threads": 12,  # BPE encoding: ~0.4M tokens/s per thread on a slow core
  # The H200 image's corpus every run 1-44 read (22,665 files, 334,615,998 bytes). Session 30
  # installed its wheels into site-packages, which added 201 files: its four runs read another
  # corpus and trained another tokenizer. Pinned since: such a run stops before training.
  "data.source_sha256": CORPUS_SHA256,
}
OPTIMIZERS = {  # base learning rates; the scans multiply the first one
  # AdamW ran at 2e-3 first (session 15): Parallax and Parallax with W_R = 0 both stalled near
  # the unigram loss (held-out ppl 655 and 540, grad-norm spike 18 at the end of the warmup), so
  # the base moved to 1e-3 and those two runs are the x2 points of its scan.
  "adamw": {"optimizer.name": "adamw", "optimizer.learning_rate": 1e-3},
  "muon": {
    "optimizer.name": "muon",
    "optimizer.learning_rate": 0.02,
    "optimizer.adam_learning_rate": 3e-3,  # embeddings and norms, not scanned
    # Its AdamW group decayed norms and embeddings too (optax's muon) when this study began;
    # kept so every run of it trains alike (the default before 2026-12-05)
    "optimizer.muon_adam_decay": "all",
  },
}
LR_SCALES = (0.5, 2.0)
SEEDS = (0, 1)
# Muon's main trio gets a third seed: the two seeds of session 11 moved softmax's held-out
# perplexity by 9% (53.3, 58.3), more than any attention effect measured so far.
MUON_EXTRA_SEEDS = (2,)
# Softmax's Muon scan was won by its low edge (x0.5, session 14): the scan goes one step further
# and the winning rate gets its seed-1 run, so the pair is compared at each kind's best rate.
MUON_SOFTMAX_FOLLOW_UP = {"muon+softmax_lr0.25_s0": (0.25, 0), "muon+softmax_lr0.5_s1": (0.5, 1)}
# W_R = 0 under AdamW at x2 (2e-3): it ran when that was AdamW's base rate (above).
ADAMW_R0_AT_2X = "adamw+parallax_r0_lr2_s0"
# AdamW at 1e-3 (session 16) was behind its 2e-3 runs for all three kinds (held-out perplexity
# softmax 774 against 513, like_q 1038 against 655, W_R = 0 795 against 540): the scan goes up.
SOFTMAX, R0 = {"model.attention": "softmax"}, {"model.r_init": "zeros"}  # model overrides
ADAMW_UP_SCAN = {  # name: (model overrides, LR scale)
  "adamw+softmax_lr4_s0": (SOFTMAX, 4.0),
  "adamw+parallax_r0_lr4_s0": (R0, 4.0),
  "adamw+parallax_lr4_s0": ({}, 4.0),
  "adamw+softmax_lr8_s0": (SOFTMAX, 8.0),
}
# The tied head's logit scale (session 16): on CPU (configs/sweeps/head_scale_cpu.py) Qwen3's
# unscaled tied head beat the scaled one by 1.09 nats under AdamW at 1e-3, 0.41 at 4e-3 and 0.46
# under Muon with bytes, 1.15 / 0.71 (AdamW / Muon) with an 8k BPE (two seeds each). Does it at
# this size? Softmax at each optimizer's base rate. Session 17: it took softmax from 773.8 to
# 38.0 (AdamW 1e-3) and from 53.34 to 8.99 (Muon), so every arm so far carried a head that held
# it back: the main arms are rerun with it. Session 18: Parallax led at both seeds under Muon
# (-0.152, -0.185 nats) and like_q trailed under AdamW (+0.872, a gradient-norm spike of 2308
# at the warmup's end), so Muon's controls, third seed and scans follow, then AdamW's scan.
# Each name is an `<arm>_s<seed>` point above, rerun as `<arm>_head1_s<seed>` with the head
# alone changed (`head_one`).
HEAD_ONE = (
  # sessions 16-17: each optimizer's main arms at its base rate, and the Muon pair's seed 1
  "adamw+softmax_s0",
  "muon+softmax_s0",
  "muon+parallax_s0",
  "muon+parallax_r0_s0",
  "muon+softmax_s1",
  "muon+parallax_s1",
  "adamw+parallax_s0",
  "adamw+parallax_r0_s0",
  # session 18: Muon's matched controls, third seed and LR scans; AdamW's LR scan
  "muon+softmax_compute_s0",
  "muon+softmax_lr0.5_s0",
  "muon+softmax_s2",
  "muon+parallax_s2",
  "muon+parallax_r0_s1",
  "muon+softmax_params_s0",
  "muon+parallax_lr2_s0",
  "muon+softmax_lr2_s0",
  "muon+parallax_lr0.5_s0",
  "adamw+softmax_lr2_s0",
  "adamw+parallax_lr0.5_s0",
  "adamw+parallax_lr2_s0",
  "adamw+parallax_r0_lr2_s0",
  # session 31: W_R = 0 under AdamW at 5e-4 ends 0.146 nats below softmax's best (3.489 against
  # 3.635), the largest lead so far; does it survive equal FLOPs? (softmax's AdamW scan is flat
  # between 5e-4 and 1e-3: 3.635, 3.637, so its base rate serves, as under Muon)
  "adamw+softmax_compute_s0",
  # session 33: the AdamW parameter-matched softmax (MLP 2304), at the base rate as under Muon
  "adamw+softmax_params_s0",
)


# Session 19: with the unscaled head, the compute-matched softmax (486 steps) ended below both
# Parallax arms at seed 0 (1.989 nats against 2.045 like_q and 2.033 W_R = 0), where per step
# Parallax led at all three seeds. Its seed 1 is the next run: name -> the point it reruns at
# the seed its name ends with (no scaled-head twin: that head is not rerun).
HEAD_ONE_SEEDS = {
  "muon+softmax_compute_head1_s1": "muon+softmax_compute_head1_s0",
  # Session 30 (runs on another corpus, indicative): under AdamW softmax is flat between 5e-4
  # and 1e-3 (3.633, 3.637) and like_q is best at 5e-4 (2.5e-4: 3.870; 1e-3: 4.509), so AdamW's
  # pair gets its seed 1 at 5e-4 for both kinds
  "adamw+softmax_lr0.5_head1_s1": "adamw+softmax_lr0.5_head1_s0",
  "adamw+parallax_lr0.5_head1_s1": "adamw+parallax_lr0.5_head1_s0",
  # Session 31: W_R = 0 is AdamW's best arm at 5e-4 (3.489, softmax 3.635): its seed 1
  "adamw+parallax_r0_lr0.5_head1_s1": "adamw+parallax_r0_lr0.5_head1_s0",
  # Session 32: W_R = 0's AdamW lead held at seed 1 (-0.141 nats; seed 0 -0.146), and at seed 0
  # the AdamW compute-matched softmax is 0.037 below it (3.452 against 3.489), as under Muon:
  # the compute-matched softmax's seed 1 decides whether that sign holds
  "adamw+softmax_compute_head1_s1": "adamw+softmax_compute_head1_s0",
}


# Session 29: three scans were won at their edge with the unscaled head: like_q under Muon (x2
# 2.020 < x1 2.045 < x0.5 2.094 nats), like_q under AdamW (x0.5 3.686 against x1's 4.509, a
# gradient-norm spike) and softmax under AdamW (x1 3.637 < x2 3.802). Each goes one step further
# so that neither kind loses by its rate: name -> (the head1 point it rescales, LR factor).
HEAD_ONE_EDGES = {
  "muon+parallax_lr4_head1_s0": ("muon+parallax_head1_s0", 4.0),
  "adamw+softmax_lr0.5_head1_s0": ("adamw+softmax_head1_s0", 0.5),
  "adamw+parallax_lr0.25_head1_s0": ("adamw+parallax_head1_s0", 0.25),
  # session 30: W_R = 0's AdamW scan was won at its low edge (1e-3 3.559; 2e-3 4.124, run on
  # another corpus, indicative): one step lower
  "adamw+parallax_r0_lr0.5_head1_s0": ("adamw+parallax_r0_head1_s0", 0.5),
  # session 31: W_R = 0's scan was won at its low edge again (5e-4 3.489 < 1e-3 3.559 < 2e-3
  # 3.738), and softmax's by 0.002 nats (5e-4 3.635, 1e-3 3.637): one step lower for both
  "adamw+parallax_r0_lr0.25_head1_s0": ("adamw+parallax_r0_head1_s0", 0.25),
  "adamw+softmax_lr0.25_head1_s0": ("adamw+softmax_head1_s0", 0.25),
  # session 32: not an edge but the one rate the init question lacks. W_R = 0 is below like_q
  # in every paired run (ten), but under Muon only at equal rates: like_q at its best Muon rate
  # (x2, 2.020) is below W_R = 0 at x1 (2.033), and W_R = 0 was never scanned there
  "muon+parallax_r0_lr2_head1_s0": ("muon+parallax_r0_head1_s0", 2.0),
}
# Session 33: at equal FLOPs under AdamW the compute-matched softmax and W_R = 0 split the two
# seeds (-0.037, +0.031 nats) and the control's seeds differ by 0.132: a third seed of the
# three AdamW points the comparison reads. (The AdamW parameter-matched softmax joins HEAD_ONE.)
HEAD_ONE_SEEDS.update(
  {
    "adamw+softmax_compute_head1_s2": "adamw+softmax_compute_head1_s0",
    "adamw+parallax_r0_lr0.5_head1_s2": "adamw+parallax_r0_lr0.5_head1_s0",
    "adamw+softmax_lr0.5_head1_s2": "adamw+softmax_lr0.5_head1_s0",
  }
)
# Session 33: the scaled head's AdamW points still to run, dropped from the plan (docstring).
DROPPED = (
  "adamw+softmax_lr8_s0",
  "adamw+parallax_lr0.5_s0",
  "adamw+softmax_lr0.5_s0",
  "adamw+parallax_s1",
  "adamw+softmax_s1",
  "adamw+softmax_compute_s0",
  "adamw+softmax_params_s0",
  "adamw+parallax_r0_s1",
)


def head_one(name: str) -> str:
  """`<arm>_s<seed>` -> `<arm>_head1_s<seed>`: the name of the point's unscaled-head rerun."""
  arm, seed = name.rsplit("_s", 1)
  return f"{arm}_head1_s{seed}"


PRIORITY = (  # device sessions run these in order: each step answers a question on its own
  # done (session 9): Parallax trails softmax by 0.16 nats; half the LR changes nothing
  "muon+parallax_s0",
  "muon+softmax_s0",
  "muon+parallax_lr0.5_s0",
  # done (session 10): twice the LR gains 1.1 ppl (61.5); W_R = 0 at init gains 5.9 (56.7)
  "muon+parallax_lr2_s0",
  "muon+parallax_r0_s0",
  # done (session 11): seed 1 reverses the order (softmax 58.3, parallax 57.9, r0 56.4);
  # twice softmax's LR changes nothing (53.32)
  "muon+parallax_r0_s1",
  "muon+softmax_s1",
  "muon+parallax_s1",
  "muon+softmax_lr2_s0",
  # done (session 12): softmax 53.77, r0 55.89; r0 - softmax over three seeds
  # +0.022 ± 0.046 nats, inside the seed spread
  "muon+softmax_s2",
  "muon+parallax_r0_s2",
  # done (session 13): like_q 59.27, like_q - softmax over three seeds +0.083 ± 0.083 nats
  # (not beyond the seed spread); compute-matched softmax (486 steps) 36.33
  "muon+parallax_s2",
  "muon+softmax_compute_s0",
  # done (session 14): parameter-matched softmax (MLP 2304) 56.12, no better than softmax;
  # softmax at half its LR 47.75, 0.111 nats below x1 (one seed; softmax's seed span 0.088)
  "muon+softmax_params_s0",
  "muon+softmax_lr0.5_s0",
  # done (session 15): softmax's Muon x0.25 57.92 (worse than x0.5 and x1), x0.5 at seed 1
  # 55.41 (-0.050 nats against x1); AdamW at 2e-3 stalled (W_R = 0 540, Parallax 655)
  "muon+softmax_lr0.25_s0",
  "muon+softmax_lr0.5_s1",
  "adamw+parallax_r0_lr2_s0",
  "adamw+parallax_lr2_s0",
  # done (session 16): AdamW at 1e-3 is behind 2e-3 for every kind (softmax 774 against 513):
  # the rate was too low, not too high; like_q's gradient norm spikes at the warmup's end (93)
  "adamw+softmax_s0",
  "adamw+parallax_s0",
  "adamw+softmax_lr2_s0",
  "adamw+parallax_r0_s0",
  # done (session 17): the unscaled head, softmax: AdamW 1e-3 38.0 (scaled 773.8), Muon 8.99
  # (scaled 53.34); softmax at AdamW 4e-3 with the scaled head 454.7 (2e-3: 513.3); Parallax
  # like_q with the unscaled head under Muon 7.73, 0.152 nats below softmax's 8.99 (one seed)
  "adamw+softmax_head1_s0",
  "adamw+softmax_lr4_s0",
  "muon+softmax_head1_s0",
  "muon+parallax_head1_s0",
  # done (session 18): the unscaled head: W_R = 0 under Muon 7.63; the Muon pair at seed 1,
  # softmax 9.53, like_q 7.91 (like_q - softmax -0.152 and -0.185 nats at seeds 0 and 1);
  # AdamW like_q 90.87 (+0.872 against softmax's 37.98), W_R = 0 35.12 (-0.078)
  "muon+parallax_r0_head1_s0",
  "muon+softmax_head1_s1",
  "muon+parallax_head1_s1",
  "adamw+parallax_head1_s0",
  "adamw+parallax_r0_head1_s0",
  # done (session 19): the compute-matched softmax beats both Parallax arms at seed 0 (1.989
  # against 2.045 / 2.033); softmax at half the rate is worse with this head (+0.088); the
  # third seed keeps Parallax ahead per step (-0.073; mean -0.137 over three seeds); W_R = 0's
  # seed 1 leads too (-0.210)
  *[head_one(name) for name in HEAD_ONE[8:13]],
  # done (session 20): the compute-matched softmax at seed 1 is ahead of both Parallax arms
  # again (1.997 against 2.069 / 2.045)
  "muon+softmax_compute_head1_s1",
  # done (session 21): the parameter-matched softmax (MLP 2304) is level with softmax (2.188,
  # -0.009 nats) and 0.143 / 0.155 behind like_q / W_R = 0 at seed 0
  head_one(HEAD_ONE[13]),
  # done (session 28, on an H100): MQAR's 4-layer group (gpu_study_mqar.py); like_q at twice
  # its Muon rate 2.020 (-0.024 nats against x1), still 0.031 above the compute-matched softmax
  head_one(HEAD_ONE[14]),
  # done (session 29, H100): softmax at twice its Muon rate 2.195 (x1 2.196: flat, so the
  # compute-matched gap is not softmax's rate); like_q at half its Muon rate 2.094 (x1 2.045,
  # x2 2.020); AdamW softmax x2 3.802 (x1 3.637); AdamW like_q x0.5 3.686 (x1 4.509)
  *[head_one(name) for name in HEAD_ONE[15:19]],
  # done (session 31, H100; session 30 had run 45-48 on another corpus, kept apart in
  # studies_gpu/corpus_7ef9c500): AdamW softmax 5e-4 3.635 (session 30: 3.633), like_q 2.5e-4
  # 3.900; the seed-1 pair at 5e-4 softmax 3.694, like_q 3.725 (+0.031; seed 0 +0.051);
  # W_R = 0 at 5e-4 3.489 (-0.146 against softmax); like_q Muon x4 2.040 (x2 2.020); W_R = 0
  # AdamW 2e-3 3.738 (session 30's, a gradient-norm spike of 126: 4.124)
  "adamw+softmax_lr0.5_head1_s0",
  "adamw+parallax_lr0.25_head1_s0",
  "adamw+softmax_lr0.5_head1_s1",
  "adamw+parallax_lr0.5_head1_s1",
  "adamw+parallax_r0_lr0.5_head1_s0",
  "muon+parallax_lr4_head1_s0",
  head_one("adamw+parallax_r0_lr2_s0"),
  # done (session 32, H100): W_R = 0 at AdamW 5e-4, seed 1 3.553 (-0.141 against softmax's
  # seed 1; two seeds -0.144 ± 0.002); the AdamW compute-matched softmax 3.452, 0.037 below
  # W_R = 0 (seed 0); one step lower both scans lose (W_R = 0 2.5e-4 3.642, softmax 3.909);
  # like_q at AdamW 2e-3 3.723, no spike (5e-4 3.686, 1e-3 4.509 with one)
  "adamw+parallax_r0_lr0.5_head1_s1",
  head_one("adamw+softmax_compute_s0"),
  "adamw+parallax_r0_lr0.25_head1_s0",
  "adamw+softmax_lr0.25_head1_s0",
  head_one("adamw+parallax_lr2_s0"),
  # done (session 33, H100): the AdamW compute-matched softmax at seed 1 3.584, 0.031 above
  # W_R = 0 (seed 0: 0.037 below; a tie); W_R = 0 at Muon x2 2.029, 0.008 above like_q at x2
  # (the default r_init stays like_q); scaled head at AdamW 4e-3: W_R = 0 6.277, like_q 6.318
  # (softmax 6.120), all on the plateau
  "adamw+softmax_compute_head1_s1",
  "muon+parallax_r0_lr2_head1_s0",
  "adamw+parallax_r0_lr4_s0",
  "adamw+parallax_lr4_s0",
  # done (session 34, H100; the plan's last four): AdamW's equal-FLOPs comparison at seed 2,
  # the control 3.472, 0.032 above W_R = 0's 3.440 (three seeds +0.008 ± 0.034: a tie);
  # softmax at 5e-4 3.609 (W_R = 0 -0.169; three seeds -0.152 ± 0.014); the AdamW
  # parameter-matched softmax 3.645, level with softmax at 1e-3 (3.637)
  "adamw+softmax_compute_head1_s2",
  "adamw+parallax_r0_lr0.5_head1_s2",
  "adamw+softmax_lr0.5_head1_s2",
  head_one("adamw+softmax_params_s0"),
)
OVERRIDES = {
  **MODEL,
  **DATA,
  "train.steps": STEPS,
  "train.seq_len": SEQ_LEN,
  "train.batch_size": BATCH,
  "train.log_every": 20,
  "train.eval_every": 100,
  "train.eval_batches": 16,  # 2.1M held-out tokens: about the whole held-out split
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": STEPS // 10,
  "checkpoint.every_steps": STEPS,  # the final one only (and on preemption)
  "checkpoint.keep": 1,
}


def _model() -> ModelConfig:
  cfg = load_config(BASE)
  cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in MODEL.items()])
  return ModelConfig.from_dict(cfg.model.to_dict())


def _matched() -> tuple[int, int]:
  """(mlp_dim of a softmax model with Parallax's parameters, softmax steps at equal FLOPs)."""
  parallax = _model()
  softmax = dataclasses.replace(parallax, attention="softmax")
  mlp_dim = min(
    range(parallax.mlp_dim, 2 * parallax.mlp_dim),
    key=lambda f: abs(dataclasses.replace(softmax, mlp_dim=f).num_params() - parallax.num_params()),
  )
  ratio = parallax.flops_per_token(SEQ_LEN) / softmax.flops_per_token(SEQ_LEN)
  return mlp_dim, round(STEPS * ratio)


def variants() -> dict[str, dict]:
  mlp_dim, compute_steps = _matched()
  out = {}
  for opt, opt_overrides in OPTIMIZERS.items():
    lr = opt_overrides["optimizer.learning_rate"]
    kinds = {"parallax": {}, "softmax": SOFTMAX}
    for seed in SEEDS:
      for kind, kind_overrides in kinds.items():
        out[f"{opt}+{kind}_s{seed}"] = {**opt_overrides, **kind_overrides, "train.seed": seed}
    for kind, kind_overrides in kinds.items():
      for scale in LR_SCALES:
        out[f"{opt}+{kind}_lr{scale:g}_s0"] = {
          **opt_overrides,
          **kind_overrides,
          "optimizer.learning_rate": lr * scale,
          "train.seed": 0,
        }
    softmax = {**opt_overrides, "model.attention": "softmax", "train.seed": 0}
    out[f"{opt}+softmax_params_s0"] = {**softmax, "model.mlp_dim": mlp_dim}
    out[f"{opt}+softmax_compute_s0"] = {
      **softmax,
      "train.steps": compute_steps,
      "optimizer.warmup_steps": compute_steps // 10,
    }
    for seed in SEEDS:  # W_R = 0 at init: it won the Muon runs of session 10 (56.7 vs 62.5)
      out[f"{opt}+parallax_r0_s{seed}"] = {
        **opt_overrides,
        "model.r_init": "zeros",
        "train.seed": seed,
      }
  for seed in MUON_EXTRA_SEEDS:
    muon = OPTIMIZERS["muon"]
    out[f"muon+softmax_s{seed}"] = {**muon, "model.attention": "softmax", "train.seed": seed}
    out[f"muon+parallax_s{seed}"] = {**muon, "train.seed": seed}
    out[f"muon+parallax_r0_s{seed}"] = {**muon, "model.r_init": "zeros", "train.seed": seed}
  muon = OPTIMIZERS["muon"]
  for name, (scale, seed) in MUON_SOFTMAX_FOLLOW_UP.items():
    out[name] = {
      **muon,
      "model.attention": "softmax",
      "optimizer.learning_rate": muon["optimizer.learning_rate"] * scale,
      "train.seed": seed,
    }
  adamw = OPTIMIZERS["adamw"]
  out[ADAMW_R0_AT_2X] = {
    **adamw,
    "model.r_init": "zeros",
    "optimizer.learning_rate": 2 * adamw["optimizer.learning_rate"],
    "train.seed": 0,
  }
  for name, (model_overrides, scale) in ADAMW_UP_SCAN.items():
    out[name] = {
      **adamw,
      **model_overrides,
      "optimizer.learning_rate": scale * adamw["optimizer.learning_rate"],
      "train.seed": 0,
    }
  for name in HEAD_ONE:  # after every point they rerun
    out[head_one(name)] = {**out[name], "model.tied_head_scale": "one"}
  for name, (source, factor) in HEAD_ONE_EDGES.items():
    lr = out[source]["optimizer.learning_rate"]
    out[name] = {**out[source], "optimizer.learning_rate": lr * factor}
  for name, source in HEAD_ONE_SEEDS.items():  # after the edges: a seed of one is one of them
    out[name] = {**out[source], "train.seed": int(name.rsplit("_s", 1)[1])}
  for name in DROPPED:  # after the reruns that derive from them
    del out[name]
  return out


def get_config():
  return {  # a plain dict: the override keys are dotted
    "base": BASE,
    "variants": variants(),
    "overrides": OVERRIDES,
    "metric": "eval_perplexity",
  }
