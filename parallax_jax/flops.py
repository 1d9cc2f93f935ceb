"""The two FLOP counts of the project, defined here and nowhere else (docs/design.md §10).

Both count matmul FLOPs only (2 per multiply-add); attention is counted per visible (query,
key) pair and head, with ``visible_pairs`` as the one count of pairs a mask lets through.

* Model FLOPs (``model_flops_per_token``, ``attention_model_flops``): what MFU divides by. A
  training step is 3x the forward (the backward counted as twice the forward, the usual MFU
  convention) whatever the kernels execute: recomputation (remat, the attention backward's
  recomputed scores) and masked-tile waste are not counted. Tables say "MFU (model FLOPs)".
* Executed matmul FLOPs (``kernel_executed_flops``): what the attention kernels run, for
  kernel throughput. The backward recomputes the scores, so it is more than 2x the forward.
  Tables say "kernel TFLOP/s (executed matmuls)".
"""

from __future__ import annotations

import numpy as np

from parallax_jax.attention.masking import MaskSpec

# Matmuls per visible (query, key) pair and head: (forward, backward as the kernels run it).
# Softmax: QK^T and PV forward; QK^T again, dV, dP, dQ, dK backward. Parallax adds RK^T and
# (P*T)V forward; its closed-form backward runs 11.
ATTENTION_MATMULS = {"softmax": (2, 5), "parallax": (4, 11)}

MFU_HEADER = "MFU (model FLOPs)"
MODEL_TFLOPS_HEADER = "TFLOP/s (model FLOPs)"
KERNEL_TFLOPS_HEADER = "kernel TFLOP/s (executed matmuls)"


def visible_pairs(length: int, *, causal: bool = True, window_size: int | None = None) -> int:
  """(query, key) pairs a ``[length, length]`` mask lets through, without segment ids.

  Counted row by row from the one masking rule (``MaskSpec.key_range``), not re-derived here.
  """
  mask = MaskSpec(length, length, causal=causal, window_size=window_size)
  rows = np.arange(length, dtype=np.int64)
  lo, hi = mask.key_range(rows, rows)
  return int(np.maximum(hi - lo + 1, 0).sum())


def _matmuls(kind: str) -> tuple[int, int]:
  if kind not in ATTENTION_MATMULS:
    raise ValueError(f"attention kind must be one of {sorted(ATTENTION_MATMULS)}, got {kind!r}")
  return ATTENTION_MATMULS[kind]


def _per_matmul(batch, heads, length, head_dim, causal, window_size) -> int:
  """FLOPs of one ``[pairs, head_dim]`` matmul over every visible pair of every head."""
  pairs = visible_pairs(length, causal=causal, window_size=window_size)
  return 2 * head_dim * batch * heads * pairs


def attention_model_flops(
  kind: str,
  *,
  batch: int,
  heads: int,
  length: int,
  head_dim: int,
  causal: bool = True,
  window_size: int | None = None,
) -> float:
  """Model FLOPs of one attention call's forward + backward (3x the forward)."""
  per_matmul = _per_matmul(batch, heads, length, head_dim, causal, window_size)
  return 3 * _matmuls(kind)[0] * per_matmul


def kernel_executed_flops(
  kind: str,
  *,
  batch: int,
  heads: int,
  length: int,
  head_dim: int,
  causal: bool = True,
  window_size: int | None = None,
) -> dict[str, float]:
  """Matmul FLOPs the attention kernels execute: ``{"fwd": ..., "fwd_bwd": ...}``."""
  fwd, bwd = _matmuls(kind)
  per_matmul = _per_matmul(batch, heads, length, head_dim, causal, window_size)
  return {"fwd": fwd * per_matmul, "fwd_bwd": (fwd + bwd) * per_matmul}


def model_flops_per_token(cfg, seq_len: int) -> float:
  """Training model FLOPs per token of a ``ModelConfig`` at ``seq_len`` (3x the forward).

  Weight matmuls (projections, MLP, LM or regression head, input projection) plus causal
  attention averaged over the rows of a ``seq_len`` sequence. LLA is counted like softmax (two
  matmuls per pair; its per-query solves are not counted).
  """
  d, h, hkv, dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  proj = d * h * dh * (3 if cfg.uses_r else 2) + 2 * d * hkv * dh
  head = d * (cfg.output_dim or cfg.vocab_size)
  weights = cfg.num_layers * (proj + 3 * d * cfg.mlp_dim) + head + cfg.input_dim * d
  per_row = attention_model_flops(
    "parallax" if cfg.uses_r else "softmax",
    batch=1,
    heads=h,
    length=seq_len,
    head_dim=dh,
    window_size=cfg.window_size,
  )
  return 3 * 2 * weights + cfg.num_layers * per_row / seq_len
