"""How a trained model attends: statistics of the effective weights, per layer and head.

Parallax mixes the values with ``a_ij = p_ij (1 + tbar_i - t_ij)`` (softmax: ``a = p``). Every
row sums to 1, but Parallax weights can be negative or above 1. Per layer and head, over the
visible (query, key) pairs of the batches' document rows at least ``min_row`` tokens into their
document (0-based position >= ``min_row``; every statistic), dense: for small models; segment
id 0 is padding, as the data pipelines write it, and its rows are left out:

- ``negative``: share of pairs with ``a_ij < 0`` (by more than ``MARGIN``);
- ``above_one``: share of pairs with ``a_ij > 1`` (by more than ``MARGIN``);
- ``negative_mass``: mean over rows of ``sum_j min(a_ij, 0)``;
- ``first_token``: mean over rows of the weight on the first key of the row's document (the
  attention sink), next to ``first_token_uniform``, what uniform attention would put there (0
  where a sliding window hides that key).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.reference import effective_weights
from parallax_jax.errors import UserError

# A weight counts as negative / above 1 beyond this margin: a row with one visible key has
# a = 1 exactly, which float32 rounding may put a hair above 1.
MARGIN = 1e-5
# The models whose attention has effective weights (LLA's has none).
KINDS = ("parallax", "softmax")
STATS = ("negative", "above_one", "negative_mass", "first_token", "first_token_uniform")


@dataclasses.dataclass(frozen=True)
class AttentionStats:
  """Each field: float64 ``[layers, heads]``, averaged over every row (pair) of the batches
  given."""

  negative: np.ndarray
  above_one: np.ndarray
  negative_mass: np.ndarray
  first_token: np.ndarray
  first_token_uniform: np.ndarray

  def summary(self) -> dict[str, float]:
    """Means over layers and heads, and per-layer means (``<stat>_by_layer``)."""
    out = {}
    for name in STATS:
      value = getattr(self, name)
      out[name] = float(value.mean())
      out[f"{name}_by_layer"] = [float(x) for x in value.mean(axis=1)]
    return out


def capture_scored(graphdef, params, batch) -> list[dict]:
  """Runs the model on ``batch`` and returns, per layer, the scored ``{"q", "k"[, "r"]}``
  (after QK-norm and RoPE: exactly what the attention op receives). Jitted: run eagerly, a
  12-layer model dispatched op by op took over 100 s for 16 batches on an H200."""
  return _capture_jit(graphdef, params, batch)


@functools.partial(jax.jit, static_argnums=(0,))
def _capture_jit(graphdef, params, batch) -> list[dict]:
  model = nnx.merge(graphdef, params)
  for block in model.blocks:
    block.attn.capture = True
  _, sown = nnx.capture(model, nnx.Intermediate)(
    batch["inputs"], batch["positions"], batch["segment_ids"]
  )
  sown = nnx.to_pure_dict(sown)
  return [sown["blocks"][i]["attn"]["scored"][0] for i in range(len(model.blocks))]


def _first_key(segment_ids):
  """``[B, T]`` bool: the key opens its document (row start, or a segment change)."""
  if segment_ids is None:
    raise ValueError("segment_ids is None: pass an all-ones [B, T] array for unpacked rows")
  prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segment_ids != prev


@functools.partial(jax.jit, static_argnums=(5,))
def _layer_stats(q, r, k, segment_ids, min_row, window_size):
  t = q.shape[1]
  mask = MaskSpec(q_len=t, kv_len=t, causal=True, window_size=window_size)
  a, visible = effective_weights(
    q, r, k, scale=q.shape[-1] ** -0.5, mask=mask, segment_ids=segment_ids
  )
  first = _first_key(segment_ids)
  # Position of each token in its document: rows too close to the start are skipped, and
  # padding (segment 0: a row's tail, or the all-zero rows that pad the last eval batch).
  start = jax.lax.cummax(jnp.where(first, jnp.arange(t)[None, :], 0), axis=1)
  rows = ((jnp.arange(t)[None, :] - start) >= min_row) & (segment_ids > 0)  # [B, T]
  rows = jnp.broadcast_to(rows[:, None, :], a.shape[:3])  # [B, H, T]
  pairs = visible & rows[..., None]
  n_pairs = jnp.sum(pairs, axis=(0, 2, 3))
  n_rows = jnp.sum(rows, axis=(0, 2))
  seen = jnp.sum(visible, axis=-1)  # keys each row sees
  on_first = jnp.where(first[:, None, None, :], a, 0.0)
  first_seen = jnp.sum(first[:, None, None, :] & visible, axis=-1)  # 0 outside a window

  def per_head_pairs(x):
    return jnp.sum(jnp.where(pairs, x, 0.0), axis=(0, 2, 3)) / jnp.maximum(n_pairs, 1)

  def per_head_rows(x):
    return jnp.sum(jnp.where(rows, x, 0.0), axis=(0, 2)) / jnp.maximum(n_rows, 1)

  # Means per head, and the counts they are over (``attention_stats`` weighs batches by them).
  return {
    "negative": per_head_pairs((a < -MARGIN).astype(a.dtype)),
    "above_one": per_head_pairs((a > 1 + MARGIN).astype(a.dtype)),
    "negative_mass": per_head_rows(jnp.sum(jnp.minimum(a, 0.0), axis=-1)),
    "first_token": per_head_rows(jnp.sum(on_first, axis=-1)),
    "first_token_uniform": per_head_rows(first_seen / jnp.maximum(seen, 1)),
    "pairs": n_pairs,
    "rows": n_rows,
  }


# Which count each statistic is a mean over.
_PER = {"negative": "pairs", "above_one": "pairs"} | {
  k: "rows" for k in ("negative_mass", "first_token", "first_token_uniform")
}


def attention_stats(graphdef, params, batches, *, min_row: int = 16) -> AttentionStats:
  """Statistics (module docstring) of a causal model over ``batches`` (dicts with ``inputs``,
  ``positions``, ``segment_ids``: 1, 2, ... per packed document, 0 padding; None: one document
  per row). Each statistic is the mean over every counted row (pair) of every batch, so a
  batch of padding rows weighs nothing."""
  cfg = nnx.merge(graphdef, params).cfg
  if cfg.attention not in KINDS:
    raise UserError(f"attention_stats covers parallax and softmax models, not {cfg.attention!r}")
  totals = None
  n = 0
  for batch in batches:
    if batch.get("segment_ids") is None:
      batch = {**batch, "segment_ids": jnp.ones(batch["inputs"].shape[:2], jnp.int32)}
    layers = []
    for scored in capture_scored(graphdef, params, batch):
      layers.append(
        _layer_stats(
          scored["q"], scored.get("r"), scored["k"], batch["segment_ids"], min_row, cfg.window_size
        )
      )
    stacked = {name: np.stack([np.asarray(x[name], np.float64) for x in layers]) for name in STATS}
    count = {c: np.stack([np.asarray(x[c], np.float64) for x in layers]) for c in ("pairs", "rows")}
    sums = {name: stacked[name] * count[_PER[name]] for name in STATS} | count
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    n += 1
  if not n:
    raise ValueError("batches is empty")
  if not totals["rows"].any():
    raise UserError(
      f"no row of the batches is {min_row} or more tokens into a document: lower min_row"
    )
  return AttentionStats(**{k: totals[k] / totals[_PER[k]] for k in STATS})
