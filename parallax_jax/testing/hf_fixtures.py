"""Tiny random Hugging Face Qwen3 directories for tests (no torch, no transformers).

``tiny_qwen3_config`` is a config.json dict with Qwen3's field names; ``tiny_qwen3_tensors``
draws random tensors with Qwen3's names and ``[out, in]`` layouts (written from the
architecture, not from ``parallax_jax.interop.hf_names``); ``write_hf_dir`` writes
config.json, the safetensors (one file, or shards plus ``model.safetensors.index.json``) and a
small byte-level BPE ``tokenizer.json`` trained with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

SENTENCES = [
  "The quick brown fox jumps over the lazy dog.",
  "Parallax attention subtracts a learned covariance correction from softmax attention.",
  "A tiny model reads a few sentences and learns a few merges.",
  "def add(a, b):\n    return a + b\n",
]


def tiny_qwen3_config(
  *,
  tied: bool = True,
  vocab_size: int = 384,
  hidden_size: int = 32,
  num_layers: int = 2,
  num_heads: int = 4,
  num_kv_heads: int = 2,
  head_dim: int = 16,
  intermediate_size: int = 64,
  **extra,
) -> dict:
  """A Qwen3 config.json dict (the fields save_pretrained writes); ``extra`` adds or replaces."""
  config = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "head_dim": head_dim,
    "hidden_act": "silu",
    "hidden_size": hidden_size,
    "initializer_range": 0.02,
    "intermediate_size": intermediate_size,
    "max_position_embeddings": 4096,
    "max_window_layers": num_layers,
    "model_type": "qwen3",
    "num_attention_heads": num_heads,
    "num_hidden_layers": num_layers,
    "num_key_value_heads": num_kv_heads,
    "rms_norm_eps": 1e-6,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "sliding_window": None,
    "tie_word_embeddings": tied,
    "torch_dtype": "float32",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": vocab_size,
  }
  config.update(extra)
  return config


def tiny_qwen3_tensors(config: Mapping, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
  """Random tensors of ``config``'s model, HF names and layouts. Norm weights are ``1 + noise``
  and projections large enough that every tensor visibly moves the logits."""
  rng = np.random.default_rng(seed)
  d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  hq, hkv, dh = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
  normal = lambda *shape, std: (std * rng.standard_normal(shape)).astype(dtype)
  norm = lambda n: (1.0 + 0.2 * rng.standard_normal(n)).astype(dtype)
  out = {"model.embed_tokens.weight": normal(v, d, std=1.0)}
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = norm(d)
    out[p + "self_attn.q_proj.weight"] = normal(hq * dh, d, std=d**-0.5)
    out[p + "self_attn.k_proj.weight"] = normal(hkv * dh, d, std=d**-0.5)
    out[p + "self_attn.v_proj.weight"] = normal(hkv * dh, d, std=d**-0.5)
    out[p + "self_attn.o_proj.weight"] = normal(d, hq * dh, std=(hq * dh) ** -0.5)
    out[p + "self_attn.q_norm.weight"] = norm(dh)
    out[p + "self_attn.k_norm.weight"] = norm(dh)
    out[p + "post_attention_layernorm.weight"] = norm(d)
    out[p + "mlp.gate_proj.weight"] = normal(f, d, std=d**-0.5)
    out[p + "mlp.up_proj.weight"] = normal(f, d, std=d**-0.5)
    out[p + "mlp.down_proj.weight"] = normal(d, f, std=f**-0.5)
  out["model.norm.weight"] = norm(d)
  if not config["tie_word_embeddings"]:
    out["lm_head.weight"] = normal(v, d, std=d**-0.5)
  return out


def write_tokenizer(path: str | Path, vocab_size: int = 300) -> Path:
  """A byte-level BPE ``tokenizer.json`` with ``<|endoftext|>`` (id 0), trained on a few
  sentences; it has at most ``vocab_size`` ids."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(SENTENCES, trainer=trainer)
  path = Path(path)
  tok.save(str(path))
  return path


def write_hf_dir(
  directory: str | Path,
  config: Mapping,
  tensors: Mapping[str, np.ndarray],
  *,
  shards: int = 1,
  tokenizer: bool = True,
) -> Path:
  """Writes a HF model directory: config.json, tensors (``shards > 1``: that many files and
  the index, as save_pretrained names them) and ``tokenizer.json``."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(dict(config), indent=2))
  names = list(tensors)
  if shards == 1:
    save_file(dict(tensors), str(directory / "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), shards), start=1):
      file = f"model-{k:05d}-of-{shards:05d}.safetensors"
      chunk = {names[j]: tensors[names[j]] for j in part}
      save_file(chunk, str(directory / file), metadata={"format": "pt"})
      weight_map.update({name: file for name in chunk})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}}
    index["weight_map"] = weight_map
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  if tokenizer:
    write_tokenizer(directory / "tokenizer.json")
  return directory


def write_tiny_qwen3(
  directory: str | Path, *, seed: int = 0, shards: int = 1, **config_kwargs
) -> tuple[dict, dict[str, np.ndarray]]:
  """``write_hf_dir`` of a ``tiny_qwen3_config(**config_kwargs)`` model with random tensors;
  returns ``(config, tensors)``."""
  config = tiny_qwen3_config(**config_kwargs)
  tensors = tiny_qwen3_tensors(config, seed)
  write_hf_dir(directory, config, tensors, shards=shards)
  return config, tensors
