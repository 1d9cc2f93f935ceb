"""The decoder: embedding, pre-RMSNorm blocks (attention + SwiGLU), final norm, LM head.

With ``input_dim`` / ``output_dim`` (``ModelConfig``) the embedding / LM head become linear maps
of float vectors (regression tasks).

Inference (docs/design.md §13.4): ``init_cache``, ``prefill`` (right-padded prompts, optionally
in chunks) and ``decode_step`` (one token per row) run the same weights on a ``KVCache``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from parallax_jax import sharding
from parallax_jax.attention.api import CHECKPOINT_NAME
from parallax_jax.model import kv_cache
from parallax_jax.model.attention import Attention
from parallax_jax.model.config import ModelConfig
from parallax_jax.model.cross_entropy import head_logits
from parallax_jax.model.kv_cache import KVCache
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

  def prefill_chunk(self, x, start, k_cache, v_cache):
    """``__call__`` on prompt positions ``start ..`` through the layer's cache."""
    h, k_cache, v_cache = self.attn.prefill_chunk(self.attn_norm(x), start, k_cache, v_cache)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), k_cache, v_cache

  def decode(self, x, lengths, k_cache, v_cache):
    """``__call__`` on one new token per row at position ``lengths[b]``."""
    h, k_cache, v_cache = self.attn.decode(self.attn_norm(x), lengths, k_cache, v_cache)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), k_cache, v_cache


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


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
    return self._logits(x)

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
      # "rsqrt_d": the final stream correlates with its own input token's embedding, and
      # unscaled that token's logit could start near init_std * d. "one": Qwen3's tied head.
      scale = cfg.d_model**-0.5 if cfg.tied_head_scale == "rsqrt_d" else 1.0
      return self.embed[...].astype(dt), scale
    return self.head[...].astype(dt).T, 1.0

  # Inference ----------------------------------------------------------------------------------
  def _check_decodes(self, what: str) -> None:
    cfg = self.cfg
    if cfg.input_dim or cfg.output_dim:
      raise ValueError(
        f"Transformer.{what}: a regression model (model.input_dim={cfg.input_dim}, "
        f"model.output_dim={cfg.output_dim}) reads float vectors and has no LM head; only "
        f"token models (both 0) decode."
      )
    if cfg.attention not in ("parallax", "softmax"):
      raise NotImplementedError(
        f"Transformer.{what}: decode supports attention='parallax' and 'softmax', "
        f"not {cfg.attention!r}."
      )

  def _check_step(
    self, what: str, tokens, rank: int, layout: str, cache: KVCache
  ) -> tuple[int, ...]:
    """Checks a decoding model, int ``tokens`` of ``rank`` (described as ``layout``) and a cache
    that fits them; returns the tokens' shape."""
    self._check_decodes(what)
    cfg = self.cfg
    if getattr(tokens, "ndim", None) != rank or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(
        f"{what}: tokens must be int {layout}, got "
        f"{getattr(tokens, 'shape', type(tokens).__name__)} {getattr(tokens, 'dtype', '')}."
      )
    kv_cache.check_cache(
      cache,
      num_layers=cfg.num_layers,
      batch=tokens.shape[0],
      num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,
    )
    return tuple(tokens.shape)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty ``KVCache``: zeros ``[batch, max_len, Hkv, D]`` per layer in ``dtype`` (None:
    the compute dtype; attention then runs in that dtype), ``lengths`` 0."""
    self._check_decodes("init_cache")
    cfg = self.cfg
    dtype = jnp.dtype(cfg.compute_dtype if dtype is None else dtype)
    return kv_cache.empty_cache(
      cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim, dtype
    )

  def prefill(
    self,
    tokens: Int[Array, "B T"],
    prompt_lengths: Int[Array, " B"],
    cache: KVCache,
    *,
    chunk_size: int | None = None,
  ) -> tuple[Float[Array, "B V"], KVCache]:
    """Runs right-padded prompts into an empty cache; returns the next-token logits.

    Row ``b``'s prompt is ``tokens[b, :prompt_lengths[b]]`` (token ``i`` at position ``i``);
    k, v of positions ``0 .. T - 1`` go to slots ``0 .. T - 1`` (a row's padding slots are
    never visible: ``cache.lengths`` becomes ``prompt_lengths``).

    Args:
      tokens: ``[B, T]`` int token ids, ``T <= cache.max_len``.
      prompt_lengths: ``[B]`` ints in ``1 .. T`` (checked when concrete).
      cache: an empty cache (``init_cache``; lengths 0, checked when concrete).
      chunk_size: positions per chunk (static): chunk ``[s, e)`` attends to slots ``0 .. e-1``
        through the training op (causal, end-aligned), so no ``[T, T]`` problem is built
        beyond the op's own tiling. None: the whole prompt in one chunk.

    Returns:
      ``(logits [B, V] float32 at position prompt_lengths[b] - 1, cache)``.
    """
    cfg = self.cfg
    b, t = self._check_step("prefill", tokens, 2, "[B, T] (right-padded prompts)", cache)
    if t > cache.max_len:
      raise ValueError(
        f"prefill: the prompts have T={t} positions but the cache holds max_len="
        f"{cache.max_len}: build the cache with init_cache(max_len >= {t}) or trim the prompts."
      )
    if chunk_size is None:
      chunk_size = t
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
      raise ValueError(f"prefill: chunk_size must be a positive int or None, got {chunk_size!r}.")
    prompt_lengths = jnp.asarray(prompt_lengths)
    if tuple(prompt_lengths.shape) != (b,) or not jnp.issubdtype(prompt_lengths.dtype, jnp.integer):
      raise ValueError(
        f"prefill: prompt_lengths must be int [B] = ({b},), got "
        f"{tuple(prompt_lengths.shape)} {prompt_lengths.dtype}."
      )
    if _is_concrete(prompt_lengths):
      values = np.asarray(prompt_lengths)
      if values.min() < 1 or values.max() > t:
        raise ValueError(
          f"prefill: prompt_lengths must lie in 1 .. T={t} (tokens.shape[1]), got "
          f"{values.tolist()}."
        )
    if _is_concrete(cache.lengths) and np.asarray(cache.lengths).any():
      raise ValueError(
        "prefill: the cache must be empty (lengths 0; init_cache), got lengths "
        f"{np.asarray(cache.lengths).tolist()}; continue a filled cache with decode_step."
      )

    dt = jnp.dtype(cfg.compute_dtype)
    x_BTD = self.embed[...].astype(dt)[tokens]
    ks, vs = list(cache.k), list(cache.v)
    outs = []
    for start in range(0, t, chunk_size):
      x = x_BTD[:, start : start + chunk_size]
      for i, block in enumerate(self.blocks):
        x, ks[i], vs[i] = block.prefill_chunk(x, start, ks[i], vs[i])
      outs.append(x)
    x_BTD = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    last = prompt_lengths.astype(jnp.int32) - 1
    x_BD = self.final_norm(x_BTD[jnp.arange(b), last])
    cache = KVCache(k=tuple(ks), v=tuple(vs), lengths=prompt_lengths.astype(jnp.int32))
    return self._logits(x_BD), cache

  def decode_step(
    self, tokens: Int[Array, " B"], cache: KVCache
  ) -> tuple[Float[Array, "B V"], KVCache]:
    """One new token per row at position ``cache.lengths[b]``; returns its next-token logits.

    Writes the token's k, v into slot ``lengths[b]`` of every layer and advances ``lengths``
    by one. A full row (``lengths[b] == max_len``) raises when ``lengths`` is concrete; under
    ``jit`` its write is dropped, its ``lengths`` stays ``max_len`` and its logits are
    meaningless (the token is not in the cache): stop rows before they fill the cache.

    Returns:
      ``(logits [B, V] float32, cache)``.
    """
    cfg = self.cfg
    (b,) = self._check_step("decode_step", tokens, 1, "[B] (one new token per row)", cache)
    lengths = cache.lengths.astype(jnp.int32)
    if _is_concrete(lengths):
      values = np.asarray(lengths)
      bad = (values < 0) | (values >= cache.max_len)
      if bad.any():
        row = int(bad.argmax())
        raise ValueError(
          f"decode_step: row {row} has lengths={values[row]} but the cache holds max_len="
          f"{cache.max_len} slots (0 <= lengths < max_len needed): stop the row or build a "
          f"longer cache."
        )
    dt = jnp.dtype(cfg.compute_dtype)
    x = self.embed[...].astype(dt)[tokens][:, None]  # [B, 1, D]
    ks, vs = list(cache.k), list(cache.v)
    for i, block in enumerate(self.blocks):
      x, ks[i], vs[i] = block.decode(x, lengths, ks[i], vs[i])
    x_BD = self.final_norm(x[:, 0])
    cache = KVCache(k=tuple(ks), v=tuple(vs), lengths=kv_cache.next_lengths(lengths, cache.max_len))
    return self._logits(x_BD), cache

  def _logits(self, x: Float[Array, "... D"]) -> Float[Array, "... V"]:
    """The LM head on final-normed vectors ``[..., D]``, float32."""
    return head_logits(x, *self.lm_head())
