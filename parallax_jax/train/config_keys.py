"""Every config key's one-line meaning and whether a run may change it when it resumes.

The one place both are written (``parallax-jax config`` prints the meanings; ``run_record``
applies the resume rule; a test checks the table covers ``defaults.base_config()`` exactly).

Resume rule, per key:
  FIXED   refused when a workdir's run is resumed with another value: the key shapes the
          checkpoint's tree (model widths, dtypes, the optimizer and its masks), defines the
          function trained, or changes what the data iterator's saved position means (source,
          split, tokenizer, seed, batch and row size).
  TOGGLE  refused only when switched between off (None/0) and on: that adds or removes a
          part of the optimizer state; other changes of value are safe.
  SAFE    accepted and recorded in the run's history: cadence, logging, layout (mesh,
          sharding, rematerialisation, kernels: the same computation) and optimizer
          hyperparameters that keep the state's tree (like train.steps, which stretches the
          LR schedule, they change the rest of the run, not what the checkpoint holds).
"""

from __future__ import annotations

import json
from collections.abc import Callable

FIXED, TOGGLE, SAFE = "fixed", "toggle", "safe"

KEYS: dict[str, tuple[str, str]] = {
  # model: the network (parallax_jax.model.config.ModelConfig)
  "model.vocab_size": (FIXED, "token ids the embedding and LM head cover (>= the tokenizer's)"),
  "model.d_model": (FIXED, "width of the residual stream"),
  "model.num_layers": (FIXED, "number of transformer blocks"),
  "model.num_heads": (FIXED, "query heads per block (a multiple of num_kv_heads)"),
  "model.num_kv_heads": (FIXED, "key/value heads per block (grouped-query attention)"),
  "model.head_dim": (FIXED, "width of one attention head (even: RoPE rotates pairs)"),
  "model.mlp_dim": (FIXED, "hidden width of the SwiGLU MLP"),
  "model.attention": (FIXED, "'parallax' (adds r_proj), 'softmax' or 'lla'"),
  "model.r_init": (
    FIXED,
    "r_proj init: 'like_q', or 'zeros' (starts as a softmax model; trains better under AdamW)",
  ),
  "model.qk_norm": (FIXED, "RMSNorm on q, k (and r) per head"),
  "model.tie_embeddings": (FIXED, "LM head shares the token embedding matrix"),
  "model.tied_head_scale": (
    FIXED,
    "tied head's logits x.E^T / sqrt(d) ('rsqrt_d') or x.E^T ('one')",
  ),
  "model.rope_theta": (FIXED, "RoPE base frequency"),
  "model.norm_eps": (FIXED, "RMSNorm epsilon"),
  "model.window_size": (FIXED, "sliding attention window in tokens; None: full causal"),
  "model.init_std": (FIXED, "std of the normal init of weight matrices"),
  "model.param_dtype": (FIXED, "dtype of the stored parameters"),
  "model.compute_dtype": (FIXED, "dtype of activations and matmuls"),
  "model.remat": (SAFE, "rematerialisation per block: 'none', 'full', 'dots', 'dots_attention'"),
  "model.logits_chunk": (SAFE, "cross-entropy in chunks of this many positions; 0: dense logits"),
  "model.attention_impl": (
    SAFE,
    "attention path (parallax: 'xla', 'pallas_gpu', 'pallas_mosaic_gpu', 'pallas_tpu', "
    "'reference'; softmax: 'xla', 'cudnn'); None: best available",
  ),
  "model.attention_deterministic": (
    SAFE,
    "False: the fused GPU backward with atomic dq/dr (not bitwise reproducible; slower on H200)",
  ),
  "model.decode_impl": (SAFE, "decode attention path (generate); None: attention_impl or best"),
  "model.decode_num_splits": (SAFE, "split-KV count of the decode kernels; None: heuristic"),
  "model.lla_ridge": (FIXED, "attention='lla': ridge lambda of the local linear solve (> 0)"),
  "model.input_dim": (FIXED, "> 0: float input vectors of this size instead of token ids"),
  "model.output_dim": (FIXED, "> 0: linear regression head of this size instead of the LM head"),
  # data: parallax_jax.data.config.DataConfig
  "data.source": (FIXED, "'builtin', 'python_corpus' (installed text), a path/glob, or a task"),
  "data.format": (FIXED, "'auto' (from extensions), 'text', 'jsonl', 'arrayrecord' or 'npy'"),
  "data.jsonl_field": (FIXED, "string field holding the document in JSONL/ArrayRecord records"),
  "data.text_split": (FIXED, "text files become documents per 'file', 'paragraph' or 'line'"),
  "data.tokenizer": (
    FIXED,
    "'byte', 'train:bpe:VOCAB[:MIB]' (trained), a tokenizers .json or SentencePiece .model",
  ),
  "data.eval_fraction": (FIXED, "share of documents held out for eval, in [0, 1); 0: none"),
  "data.shuffle_seed": (FIXED, "mixed with train.seed to order the training documents"),
  "data.add_eos": (FIXED, "wrap every document as [EOS] doc [EOS]"),
  "data.read_threads": (SAFE, "threads reading and tokenizing documents"),
  "data.source_sha256": (
    SAFE,
    "pins the corpus: a prefix of the sha256 a run records in data.source; '': not checked",
  ),
  "data.mqar_vocab_size": (FIXED, "source='mqar': token ids used by keys and values"),
  "data.mqar_num_pairs": (FIXED, "source='mqar': key-value pairs per row"),
  "data.mqar_num_queries": (FIXED, "source='mqar': queries per row (<= pairs)"),
  "data.regression_dim": (FIXED, "source='linreg'/'drift_linreg': dimension d of x"),
  "data.regression_noise": (FIXED, "source='linreg'/'drift_linreg': std of the noise on y"),
  "data.regression_drift": (FIXED, "source='drift_linreg': std of each weight increment"),
  # train: parallax_jax.train.config.TrainConfig
  "train.steps": (SAFE, "total optimizer steps (the LR schedule spans them)"),
  "train.seed": (FIXED, "init and data-order seed, 0 .. 2**32 - 1 (the PRNG key keeps 32 bits)"),
  "train.batch_size": (FIXED, "global batch in rows of seq_len tokens"),
  "train.seq_len": (FIXED, "tokens per row"),
  "train.microbatches": (
    SAFE,
    "gradient accumulation: the batch taken in this many pieces (the same step up to float32 "
    "rounding: its sums add in another order; less memory)",
  ),
  "train.log_every": (SAFE, "steps between metrics.jsonl records"),
  "train.eval_every": (SAFE, "steps between evals (and at the end); 0: never"),
  "train.eval_batches": (SAFE, "held-out batches per eval"),
  "train.progress_bar": (
    SAFE,
    "progress on process 0: a tqdm bar on a terminal, else a line per log_every; false: neither",
  ),
  "train.compilation_cache_dir": (
    SAFE,
    "persistent compilation cache (a restart loads the compiled step); '': off",
  ),
  "train.profile_steps": (
    SAFE,
    "steps traced by the JAX profiler into tensorboard/plugins/profile; 0: none",
  ),
  "train.profile_skip_steps": (SAFE, "steps of each start before the trace (the first compiles)"),
  # optimizer: parallax_jax.train.optimizer.OptimizerConfig
  "optimizer.name": (FIXED, "'adamw', or 'muon' (AdamW for embeddings, head and norms)"),
  "optimizer.learning_rate": (SAFE, "peak LR (Muon's group under 'muon')"),
  "optimizer.adam_learning_rate": (SAFE, "'muon': peak LR of its AdamW group; None: learning_rate"),
  "optimizer.schedule": (SAFE, "'cosine', 'wsd' (warmup-stable-decay) or 'constant', after warmup"),
  "optimizer.warmup_steps": (
    SAFE,
    "steps of linear LR warmup from 0 (at most train.steps - 1: a shorter run warms up faster)",
  ),
  "optimizer.decay_fraction": (SAFE, "schedule='wsd': share of steps spent decaying"),
  "optimizer.min_lr_ratio": (SAFE, "final LR as a fraction of the peak"),
  "optimizer.weight_decay": (SAFE, "decoupled weight decay of matrices"),
  "optimizer.decay_embeddings": (SAFE, "apply weight decay to the embeddings too"),
  "optimizer.b1": (SAFE, "Adam beta1"),
  "optimizer.b2": (SAFE, "Adam beta2"),
  "optimizer.eps": (SAFE, "Adam (and Muon) epsilon"),
  "optimizer.clip_norm": (TOGGLE, "clip the global gradient norm to this; None or 0: no clipping"),
  "optimizer.muon_beta": (SAFE, "Muon momentum"),
  "optimizer.muon_ns_steps": (SAFE, "Muon Newton-Schulz iterations"),
  "optimizer.muon_adam_decay": (
    FIXED,
    "'muon': its AdamW group decays 'matrices' (as 'adamw'; norms never) or 'all' (optax's own, "
    "norms too: runs before 2026-12-05)",
  ),
  # checkpoint: parallax_jax.train.config.CheckpointConfig
  "checkpoint.every_steps": (SAFE, "steps between checkpoints (and at the end)"),
  "checkpoint.keep": (SAFE, "checkpoints kept (the newest)"),
  "checkpoint.async_save": (SAFE, "write checkpoints in the background"),
  "checkpoint.init_from": (FIXED, "params-only checkpoint to start from (e.g. convert-softmax's)"),
  # mesh: parallax_jax.train.config.MeshConfig
  "mesh.data": (SAFE, "data-parallel mesh axis size; -1: the remaining devices"),
  "mesh.fsdp": (SAFE, "fully-sharded data-parallel axis size; -1: the remaining devices"),
  "mesh.tensor": (SAFE, "tensor-parallel axis size; -1: the remaining devices"),
  "mesh.sequence": (SAFE, "context-parallel axis size; -1: the remaining devices"),
  # sharding: parallax_jax.sharding.ShardingConfig
  "sharding.strategy": (SAFE, "'dp', 'fsdp', 'tp', 'fsdp_tp' or 'cp': which rules apply"),
  "sharding.rules": (SAFE, "per strategy: logical axis -> mesh axes"),
  # distributed: parallax_jax.distributed.DistributedConfig
  "distributed.initialize": (SAFE, "'auto' (from the environment), 'always', 'never'"),
  "distributed.coordinator_address": (SAFE, "host:port of process 0; None: from the environment"),
  "distributed.num_processes": (SAFE, "processes in the job; None: from the environment"),
  "distributed.process_id": (SAFE, "this process's index; None: from the environment"),
}


def _earlier_tied_head_scale(model: dict) -> str:
  # session 16 added the key, session 17 changed its default to "one": before the key a tied
  # head was always scaled, an untied one never (the value "one" says so)
  return "rsqrt_d" if model.get("tie_embeddings", True) else "one"


# Keys added to the code after runs were recorded, each with a function of its section (a plain
# dict) giving the value that reproduces what the code did before the key. A config holding
# that value is the same config as one without the key: a recorded run that lacks the key ran
# with that value (``run_record`` reads it so, whatever the key's default is now), and a sweep
# point's fingerprint leaves the key out at that value (``without_added_defaults``), so
# finished points stay finished.
ADDED_KEYS: dict[str, Callable[[dict], object]] = {
  "model.tied_head_scale": _earlier_tied_head_scale,
  # session 24: gradient accumulation and profiler traces (before them: one piece, no trace)
  "train.microbatches": lambda train: 1,
  "train.profile_steps": lambda train: 0,
  "train.profile_skip_steps": lambda train: 2,
  # 2026-12-05: Muon's AdamW group decayed every parameter it held, norms included
  "optimizer.muon_adam_decay": lambda optimizer: (
    "all" if optimizer.get("name") == "muon" else "matrices"  # (adamw never read it)
  ),
  # session 30: the corpus pin (before it: nothing checked). Here so that a run recorded before
  # it can be read with one (``eval --workdir W --config.data.source_sha256=...``)
  "data.source_sha256": lambda data: "",
}


# Keys that only check a run's inputs and change nothing it computes: a sweep point's
# fingerprint leaves them out (``without_check_keys``), so pinning the corpus of a sweep whose
# points have run keeps them finished (``sweep --collect`` checks what each point read).
CHECK_KEYS = ("data.source_sha256",)


def _section_of(config: dict, key: str) -> tuple[dict | None, str]:
  """``(the section of config (nested, plain) that holds key's last part, or None; that part)``."""
  *path, name = key.split(".")
  section = config
  for part in path:
    section = section.get(part) if isinstance(section, dict) else None
  return (section if isinstance(section, dict) else None), name


def without_check_keys(config: dict) -> dict:
  """A copy of ``config`` (nested, plain) without the ``CHECK_KEYS``."""
  out = json.loads(json.dumps(config, default=str))
  for key in CHECK_KEYS:
    section, name = _section_of(out, key)
    if section is not None:
      section.pop(name, None)
  return out


def _added_key_sections(config: dict):
  """``(section, name, earlier value)`` of each ``ADDED_KEYS`` key whose section ``config``
  (nested, plain) holds."""
  for key, earlier in ADDED_KEYS.items():
    section, name = _section_of(config, key)
    if section is not None:
      yield section, name, earlier(section)


def with_added_defaults(config: dict) -> dict:
  """A copy of ``config`` (nested, plain) with every missing ``ADDED_KEYS`` key at its earlier
  value: how a run recorded before the key existed ran."""
  out = json.loads(json.dumps(config, default=str))
  for section, name, value in _added_key_sections(out):
    section.setdefault(name, value)
  return out


def without_added_defaults(config: dict) -> dict:
  """A copy of ``config`` (nested, plain) without the ``ADDED_KEYS`` keys that hold their
  earlier value: the config as the code before them wrote it."""
  out = json.loads(json.dumps(config, default=str))
  for section, name, value in _added_key_sections(out):
    if name in section and section[name] == value:
      del section[name]
  return out


def entry(key: str) -> tuple[str, str] | None:
  """``(rule, meaning)`` of a flattened key; nested keys (``sharding.rules.dp``) use their
  table prefix's entry."""
  parts = key.split(".")
  for n in range(len(parts), 0, -1):
    found = KEYS.get(".".join(parts[:n]))
    if found:
      return found
  return None


def flatten(d: dict, prefix: str = "") -> dict:
  """``{"model.d_model": 128, ...}``; values of table keys (``sharding.rules``) stay whole."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and key not in KEYS:
      out.update(flatten(v, f"{key}."))
    else:
      out[key] = v
  return out


def refused_on_resume(key: str, old, new) -> bool:
  """Does changing ``key`` from ``old`` to ``new`` break resuming a run?"""
  rule = (entry(key) or (FIXED, ""))[0]  # a key the table does not know: be safe, refuse
  if rule == TOGGLE:
    return bool(old) != bool(new)
  return rule == FIXED
