"""The decoder: embedding, pre-RMSNorm blocks (attention + SwiGLU), final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from parallax_jax import sharding
from parallax_jax.attention.api import CHECKPOINT_NAME
from parallax_jax.model.attention import Attention
from parallax_jax.model.config import ModelConfig
from parallax_jax.model.layers import RMSNorm, SwiGLU, param


def remat_policy(remat: str):
  """``model.remat`` -> ``jax.checkpoint`` policy (``None`` when the block is not rematted).

  "full": keep only the block input; the backward reruns the whole block (attention kernel
  included). "dots": keep the outputs of weight matmuls (projections, MLP); recompute norms,
  RoPE, activations and attention. "dots_attention": also keep the attention output and the
  Parallax op's residuals (its forward kernel then runs once per step). The cuDNN softmax path
  has no named residuals, so for softmax "dots_attention" equals "dots".
  """
  cp = jax.checkpoint_policies
  return {
    "full": cp.nothing_saveable,
    "dots": cp.dots_with_no_batch_dims_saveable,
    "dots_attention": cp.save_from_both_policies(
      cp.dots_with_no_batch_dims_saveable, cp.save_only_these_names(CHECKPOINT_NAME)
    ),
  }.get(remat)


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, axis_name=cfg.axes.norm, dtype=pdt)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, axis_name=cfg.axes.norm, dtype=pdt)
    self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, cfg.axes, rngs=rngs, std=cfg.init_std, dtype=pdt)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)

  def __call__(self, x, positions, segment_ids):
    x = x + self.attn(self.attn_norm(x), positions, segment_ids)
    return x + self.mlp(self.mlp_norm(x), self.compute_dtype)


class Transformer(nnx.Module):
  """``tokens [B, T] -> logits [B, T, V]`` (float32 logits)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    ax, pdt = cfg.axes, jnp.dtype(cfg.param_dtype)
    self.embed = param(
      rngs, (cfg.vocab_size, cfg.d_model), (ax.vocab, ax.embed), std=cfg.init_std, dtype=pdt
    )
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, axis_name=ax.norm, dtype=pdt)
    if not cfg.tie_embeddings:
      self.head = param(
        rngs, (cfg.d_model, cfg.vocab_size), (ax.embed, ax.vocab), std=cfg.init_std, dtype=pdt
      )

  def __call__(
    self,
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B T V"]:
    x = self.hidden(tokens, positions, segment_ids)
    w_VD, scale = self.lm_head()
    return (jnp.einsum("btd,vd->btv", x, w_VD) * scale).astype(jnp.float32)

  def hidden(
    self,
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B T D"]:
    """The final-normed residual stream (compute dtype), the LM head's input."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.compute_dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    stream_axes = (cfg.axes.batch, cfg.axes.length, None)  # the residual stream [B, T, D]
    x = sharding.constrain(self.embed[...].astype(dt)[tokens], stream_axes)
    policy = remat_policy(cfg.remat)
    for block in self.blocks:
      if policy is not None:
        x = nnx.remat(lambda blk, x: blk(x, positions, segment_ids), policy=policy)(block, x)
      else:
        x = block(x, positions, segment_ids)
      x = sharding.constrain(x, stream_axes)
    return self.final_norm(x)

  def lm_head(self) -> tuple[Float[Array, "V D"], float]:
    """The LM head as ``(w [V, D] in the compute dtype, scale)``: ``logits = scale x @ w.T``."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.compute_dtype)
    if cfg.tie_embeddings:
      # Tied head, scaled by 1/sqrt(d): the final stream correlates with its own input
      # token's embedding, and unscaled that token's logit would start at init_std * d.
      return self.embed[...].astype(dt), cfg.d_model**-0.5
    return self.head[...].astype(dt).T, 1.0
