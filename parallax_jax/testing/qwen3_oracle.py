"""Float64 NumPy forward of a Hugging Face Qwen3 causal LM, written from the architecture.

Reads the HF-named tensors and the config.json dict directly (it never calls
``parallax_jax.model``), so it is an independent reference for the importer:

  x = E[tokens]
  per layer:  h = RMSNorm(x) -> q, k, v = h Wq^T, h Wk^T, h Wv^T (split into heads)
              q, k = RMSNorm_head(q), RMSNorm_head(k)        (QK-norm over head_dim)
              q, k = RoPE(q), RoPE(k)                          (NeoX halves, base rope_theta)
              o = causal softmax(q k^T / sqrt(Dh)) v           (GQA: query head j reads kv
                                                                head j // (Hq / Hkv))
              x = x + o Wo^T
              h = RMSNorm(x);  x = x + (silu(h Wg^T) * h Wu^T) Wd^T
  logits = RMSNorm(x) H^T    (H = lm_head.weight, or E when tie_word_embeddings)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x_BTHD: np.ndarray, theta: float) -> np.ndarray:
  """HF ``apply_rotary_pos_emb``: ``x cos + rotate_half(x) sin`` at positions 0..T-1."""
  t, d = x_BTHD.shape[1], x_BTHD.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)  # [D/2]
  angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
  emb = np.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, T, 1, D]
  half = d // 2
  rotated = np.concatenate([-x_BTHD[..., half:], x_BTHD[..., :half]], axis=-1)
  return x_BTHD * np.cos(emb) + rotated * np.sin(emb)


def qwen3_logits(
  tensors: Mapping[str, np.ndarray], config: Mapping, tokens_BT: np.ndarray
) -> np.ndarray:
  """Logits ``[B, T, V]`` float64 of the Qwen3 model ``tensors`` (HF names) for ``tokens``."""
  w = lambda name: np.asarray(tensors[name], dtype=np.float64)
  eps, theta = float(config["rms_norm_eps"]), float(config["rope_theta"])
  hq, hkv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
  dh = int(config["head_dim"])
  tokens_BT = np.asarray(tokens_BT)
  b, t = tokens_BT.shape
  embed_VD = w("model.embed_tokens.weight")
  x_BTD = embed_VD[tokens_BT]
  causal_TT = np.tril(np.ones((t, t), dtype=bool))
  for i in range(int(config["num_hidden_layers"])):
    p = f"model.layers.{i}."
    h = _rms_norm(x_BTD, w(p + "input_layernorm.weight"), eps)
    q = (h @ w(p + "self_attn.q_proj.weight").T).reshape(b, t, hq, dh)
    k = (h @ w(p + "self_attn.k_proj.weight").T).reshape(b, t, hkv, dh)
    v = (h @ w(p + "self_attn.v_proj.weight").T).reshape(b, t, hkv, dh)
    q = _rope(_rms_norm(q, w(p + "self_attn.q_norm.weight"), eps), theta)
    k = _rope(_rms_norm(k, w(p + "self_attn.k_norm.weight"), eps), theta)
    kv_head = np.arange(hq) // (hq // hkv)  # HF repeat_kv: each kv head serves a run of q heads
    k, v = k[:, :, kv_head], v[:, :, kv_head]  # [B, T, Hq, Dh]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    s = np.where(causal_TT, s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    attn = s / s.sum(axis=-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, hq * dh)
    x_BTD = x_BTD + o @ w(p + "self_attn.o_proj.weight").T
    h = _rms_norm(x_BTD, w(p + "post_attention_layernorm.weight"), eps)
    gate, up = h @ w(p + "mlp.gate_proj.weight").T, h @ w(p + "mlp.up_proj.weight").T
    silu = gate / (1.0 + np.exp(-gate))
    x_BTD = x_BTD + (silu * up) @ w(p + "mlp.down_proj.weight").T
  x_BTD = _rms_norm(x_BTD, w("model.norm.weight"), eps)
  head_VD = embed_VD if config["tie_word_embeddings"] else w("lm_head.weight")
  return x_BTD @ head_VD.T
