"""The decoder: embedding, pre-RMSNorm blocks (attention + SwiGLU), final norm, LM head.

With ``input_dim`` / ``output_dim`` (``ModelConfig``) the embedding / LM head become linear maps
of float vectors (regression tasks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from parallax_jax import sharding
from parallax_jax.attention.api import CHECKPOINT_NAME
from parallax_jax.model.attention import Attention
from parallax_jax.model.config import ModelConfig
from parallax_jax.model.layers import RMSNorm, SwiGLU, param, projection


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
    pdt, dt = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    norm = lambda: RMSNorm(
      cfg.d_model, eps=cfg.norm_eps, logical_axis=cfg.axes.norm, param_dtype=pdt
    )
    self.attn_norm = norm()
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = SwiGLU(
      cfg.d_model, cfg.mlp_dim, cfg.axes, rngs=rngs, std=cfg.init_std, param_dtype=pdt, dtype=dt
    )

  def __call__(self, x, positions, segment_ids):
    x = x + self.attn(self.attn_norm(x), positions, segment_ids)
    return x + self.mlp(self.mlp_norm(x))


class Transformer(nnx.Module):
  """``tokens [B, T] -> logits [B, T, V]`` (float32); with ``cfg.input_dim`` the inputs are
  ``[B, T, input_dim]`` floats, with ``cfg.output_dim`` the output is ``[B, T, output_dim]``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    ax, pdt, std = cfg.axes, jnp.dtype(cfg.param_dtype), cfg.init_std
    dt = jnp.dtype(cfg.compute_dtype)
    if cfg.input_dim:
      # The input axis is tiny: replicated (None). The bias keeps the input's scale visible
      # through the first RMSNorm, which would map x and 2x to the same normed vector.
      self.input_proj = projection(
        (cfg.input_dim,),
        (cfg.d_model,),
        (None, ax.embed),
        rngs=rngs,
        std=std,
        param_dtype=pdt,
        dtype=dt,
      )
      self.input_bias = param(rngs, (cfg.d_model,), (ax.embed,), std=std, dtype=pdt)
    else:
      self.embed = param(
        rngs, (cfg.vocab_size, cfg.d_model), (ax.vocab, ax.embed), std=std, dtype=pdt
      )
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, logical_axis=ax.norm, param_dtype=pdt)
    if cfg.output_dim:
      self.output_head = projection(
        (cfg.d_model,),
        (cfg.output_dim,),
        (ax.embed, None),
        rngs=rngs,
        std=std,
        param_dtype=pdt,
        dtype=dt,
      )
    elif not cfg.tie_embeddings:
      self.head = param(
        rngs, (cfg.d_model, cfg.vocab_size), (ax.embed, ax.vocab), std=std, dtype=pdt
      )

  def __call__(
    self,
    inputs: Int[Array, "B T"] | Float[Array, "B T F"],
    positions: Int[Array, "B T"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B T V"] | Float[Array, "B T K"]:
    x = self.hidden(inputs, positions, segment_ids)
    if self.cfg.output_dim:
      return self.output_head(x).astype(jnp.float32)
    w_VD, scale = self.lm_head()
    return (jnp.einsum("btd,vd->btv", x, w_VD) * scale).astype(jnp.float32)

  def hidden(
    self,
    inputs: Int[Array, "B T"] | Float[Array, "B T F"],
    positions: Int[Array, "B T"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B T D"]:
    """The final-normed residual stream (compute dtype), the output head's input."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.compute_dtype)
    batch_shape = inputs.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(batch_shape[1]), batch_shape)
    stream_axes = (cfg.axes.batch, cfg.axes.length, None)  # the residual stream [B, T, D]
    if cfg.input_dim:
      x = self.input_proj(inputs) + self.input_bias[...].astype(dt)
    else:
      x = self.embed[...].astype(dt)[inputs]
    x = sharding.constrain(x, stream_axes)
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
