"""Self-attention block: Parallax (q, r, k, v), its softmax twin or LLA (q, k, v)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from parallax_jax import sharding
from parallax_jax.attention import parallax_attention
from parallax_jax.attention.lla import lla_attention
from parallax_jax.attention.masking import MaskSpec, same_segment
from parallax_jax.model.config import ModelConfig
from parallax_jax.model.layers import RMSNorm, projection, rope


def softmax_attention(q, k, v, *, segment_ids, window_size, implementation):
  """Causal softmax attention through ``jax.nn.dot_product_attention`` (cuDNN on GPU)."""
  if implementation is None:
    implementation = "cudnn" if jax.default_backend() == "gpu" else "xla"
  t = q.shape[1]
  rules = MaskSpec(q_len=t, kv_len=t, causal=True, window_size=window_size)
  mask = None
  if segment_ids is not None:  # [B, 1, T, T]; causality and the window go as cuDNN's flags
    mask = same_segment(segment_ids[:, None, :, None], segment_ids[:, None, None, :])
  return jax.nn.dot_product_attention(
    q,
    k,
    v,
    mask=mask,
    is_causal=rules.causal,
    local_window_size=rules.jax_nn_local_window(),
    implementation=implementation,
  )


class Attention(nnx.Module):
  """Projections, QK(R)-norm, RoPE on q (r) k at the query positions, attention, output."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # Attention analysis (parallax_jax/analysis): when True, a call sows the scored
    # q, (r), k as nnx.Intermediate "scored"; off in training (it would keep them alive).
    self.capture = False
    ax, d, h, hkv, dh = cfg.axes, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(rngs=rngs, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.compute_dtype))
    std = cfg.init_std
    q_axes = (ax.embed, ax.q_heads, ax.head_dim)
    kv_axes = (ax.embed, ax.kv_heads, ax.head_dim)
    self.q_proj = projection((d,), (h, dh), q_axes, std=std, **kw)
    self.k_proj = projection((d,), (hkv, dh), kv_axes, std=std, **kw)
    self.v_proj = projection((d,), (hkv, dh), kv_axes, std=std, **kw)
    # Output projection scaled down with depth (GPT-2 / nanodo style residual init).
    o_axes = (ax.q_heads, ax.head_dim, ax.embed)
    self.o_proj = projection((h, dh), (d,), o_axes, std=std / math.sqrt(2 * cfg.num_layers), **kw)
    if cfg.uses_r:
      self.r_proj = projection((d,), (h, dh), q_axes, std=std, zeros=cfg.r_init == "zeros", **kw)
    if cfg.qk_norm:
      norm = lambda: RMSNorm(
        dh, eps=cfg.norm_eps, logical_axis=ax.norm, param_dtype=kw["param_dtype"]
      )
      self.q_norm, self.k_norm = norm(), norm()
      if cfg.uses_r:
        self.r_norm = norm()

  def __call__(
    self,
    x: Float[Array, "B T D"],
    positions: Int[Array, "B T"],
    segment_ids: Int[Array, "B T"] | None,
  ) -> Float[Array, "B T D"]:
    cfg = self.cfg
    b, t = x.shape[:2]
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    chex.assert_shape(q, (b, t, cfg.num_heads, cfg.head_dim))
    chex.assert_shape([k, v], (b, t, cfg.num_kv_heads, cfg.head_dim))
    chex.assert_shape(positions, (b, t))
    if segment_ids is not None:
      chex.assert_shape(segment_ids, (b, t))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    r = None
    if cfg.uses_r:
      r = self.r_proj(x)
      if cfg.qk_norm:
        r = self.r_norm(r)
      r = rope(r, positions, cfg.rope_theta)  # r sits at the query positions, like q
    if self.capture:
      self.sow(nnx.Intermediate, "scored", {"q": q, "k": k, **({} if r is None else {"r": r})})
    o = sharding.attention(
      self._attend, q, r, k, v, segment_ids, axes=cfg.axes, ring=self._ring if cfg.uses_r else None
    )
    chex.assert_equal_shape([o, q])
    return self.o_proj(o)

  def _attend(self, q, r, k, v, segment_ids):
    """The op on local (unpartitioned) arrays: Parallax, LLA, or softmax when ``r is None``."""
    cfg = self.cfg
    if cfg.attention == "lla":
      return lla_attention(
        q, k, v, ridge=cfg.lla_ridge, window_size=cfg.window_size, segment_ids=segment_ids
      )
    if r is None:
      return softmax_attention(
        q,
        k,
        v,
        segment_ids=segment_ids,
        window_size=cfg.window_size,
        implementation=cfg.attention_impl,
      )
    return parallax_attention(
      q,
      r,
      k,
      v,
      causal=True,
      window_size=cfg.window_size,
      segment_ids=segment_ids,
      implementation=cfg.attention_impl,
    )

  def _ring(self, q, r, k, v, segment_ids, rules):
    """Context parallelism: ring attention over the sequence axis (batches in zigzag order)."""
    from parallax_jax.attention.context_parallel import ring_parallax_attention

    ax = self.cfg.axes
    (seq_axis,) = rules.axes(ax.length)
    heads = rules.axes(ax.q_heads)
    kwargs = {} if segment_ids is None else {"segment_ids": segment_ids}
    return ring_parallax_attention(
      q,
      r,
      k,
      v,
      mesh=rules.mesh,
      axis_name=seq_axis,
      causal=True,
      window_size=self.cfg.window_size,
      load_balance=True,
      batch_axes=rules.axes(ax.batch),
      head_axis=heads[0] if heads else None,
      **kwargs,
    )
