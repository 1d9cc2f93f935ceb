"""Self-attention block: Parallax (q, r, k, v), its softmax twin or LLA (q, k, v).

Training and scoring run ``Attention.__call__``; inference runs ``prefill_chunk`` and ``decode``
on the layer's KV cache (``model/kv_cache.py``, docs/design.md §13.4).
"""

from __future__ import annotations

import logging
import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from parallax_jax import sharding
from parallax_jax.attention import parallax_attention
from parallax_jax.attention.lla import lla_attention
from parallax_jax.attention.masking import MaskSpec, kv_lengths_mask, same_segment
from parallax_jax.decode import DECODE, DecodeTuning, parallax_decode
from parallax_jax.model import kv_cache
from parallax_jax.model.config import SOFTMAX_IMPLS, ModelConfig
from parallax_jax.model.layers import RMSNorm, projection, rope

log = logging.getLogger("parallax_jax")
_LOGGED_FALLBACKS: set[str] = set()


def _softmax(q, k, v, implementation, **kwargs):
  """``jax.nn.dot_product_attention``; ``implementation=None``: cuDNN on GPU where it accepts
  the call (it refuses float32 and some shapes at trace time), else "xla", the fallback
  logged once per reason. An explicit name is passed through and raises if refused."""
  if implementation is not None or jax.default_backend() != "gpu":
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation or "xla", **kwargs)
  try:
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
  except (NotImplementedError, ValueError, RuntimeError) as e:
    reason = f"{type(e).__name__}: {e}"
    if reason not in _LOGGED_FALLBACKS:
      _LOGGED_FALLBACKS.add(reason)
      log.info("softmax attention: cudnn refused (%s); using 'xla'.", reason)
    return jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)


def softmax_attention(q, k, v, *, segment_ids, window_size, implementation):
  """Causal softmax attention through ``jax.nn.dot_product_attention`` (``_softmax``: cuDNN
  on GPU where it serves the call, e.g. not float32)."""
  t = q.shape[1]
  rules = MaskSpec(q_len=t, kv_len=t, causal=True, window_size=window_size)
  mask = None
  if segment_ids is not None:  # [B, 1, T, T]; causality and the window go as cuDNN's flags
    mask = same_segment(segment_ids[:, None, :, None], segment_ids[:, None, None, :])
  return _softmax(
    q,
    k,
    v,
    implementation,
    mask=mask,
    is_causal=rules.causal,
    local_window_size=rules.jax_nn_local_window(),
  )


def masked_softmax_attention(q, k, v, visible, *, implementation):
  """``jax.nn.dot_product_attention`` with an explicit boolean mask (broadcast to
  ``[B, H, Tq, Tk]``), for the cached paths whose queries are not aligned with the keys'
  start (jax.nn's ``is_causal`` and windows are top-left aligned, §13.1 is end-aligned).
  ``implementation`` as in ``_softmax``."""
  return _softmax(q, k, v, implementation, mask=visible)


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
    if segment_ids is not None:
      chex.assert_shape(segment_ids, (b, t))
    q, r, k, v = self._project(x, positions)
    if self.capture:
      self.sow(nnx.Intermediate, "scored", {"q": q, "k": k, **({} if r is None else {"r": r})})
    o = sharding.attention(
      self._attend, q, r, k, v, segment_ids, axes=cfg.axes, ring=self._ring if cfg.uses_r else None
    )
    chex.assert_equal_shape([o, q])
    return self.o_proj(o)

  def _project(self, x: Float[Array, "B T D"], positions: Int[Array, "B T"]):
    """``q, r, k, v`` of the tokens ``x`` at ``positions``: projections, norms, RoPE on q, r, k
    (``r`` is None without it; all in the compute dtype)."""
    cfg = self.cfg
    b, t = x.shape[:2]
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    chex.assert_shape(q, (b, t, cfg.num_heads, cfg.head_dim))
    chex.assert_shape([k, v], (b, t, cfg.num_kv_heads, cfg.head_dim))
    chex.assert_shape(positions, (b, t))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    r = None
    if cfg.uses_r:
      r = self.r_proj(x)
      if cfg.qk_norm:
        r = self.r_norm(r)
      r = rope(r, positions, cfg.rope_theta)  # r sits at the query positions, like q
    return q, r, k, v

  def prefill_chunk(
    self,
    x: Float[Array, "B C D"],
    start: int,
    k_cache: Float[Array, "B S Hkv D"],
    v_cache: Float[Array, "B S Hkv D"],
  ) -> tuple[Float[Array, "B C D"], Float[Array, "B S Hkv D"], Float[Array, "B S Hkv D"]]:
    """Prompt positions ``start .. start + C - 1`` (static ``start``, the same for every row):
    writes their k, v into those cache slots and attends to slots ``0 .. start + C - 1`` with
    the training op, causal and end-aligned (``Tq = C``, ``Tk = start + C``).

    Attention runs in the cache's dtype; the output is in ``x``'s dtype.
    """
    cfg = self.cfg
    b, c = x.shape[:2]
    positions = jnp.broadcast_to(start + jnp.arange(c, dtype=jnp.int32), (b, c))
    q, r, k, v = self._project(x, positions)
    k_cache = kv_cache.write_chunk(k_cache, k, start)
    v_cache = kv_cache.write_chunk(v_cache, v, start)
    end = start + c
    k_seen, v_seen = k_cache[:, :end], v_cache[:, :end]
    q = q.astype(k_cache.dtype)
    if r is not None:
      o = parallax_attention(
        q,
        r.astype(k_cache.dtype),
        k_seen,
        v_seen,
        causal=True,
        window_size=cfg.window_size,
        implementation=cfg.attention_impl,
        deterministic=cfg.attention_deterministic,
      )
    elif start == 0:  # Tq == Tk: the training path itself
      o = softmax_attention(
        q,
        k_seen,
        v_seen,
        segment_ids=None,
        window_size=cfg.window_size,
        implementation=cfg.attention_impl,
      )
    else:
      rules = MaskSpec(q_len=c, kv_len=end, causal=True, window_size=cfg.window_size)
      visible = rules.visible(jnp.arange(c)[:, None], jnp.arange(end)[None, :])
      o = masked_softmax_attention(
        q, k_seen, v_seen, visible[None, None], implementation=self._softmax_impl()
      )
    return self.o_proj(o.astype(x.dtype)), k_cache, v_cache

  def decode(
    self,
    x: Float[Array, "B 1 D"],
    lengths: Int[Array, " B"],
    k_cache: Float[Array, "B S Hkv D"],
    v_cache: Float[Array, "B S Hkv D"],
  ) -> tuple[Float[Array, "B 1 D"], Float[Array, "B S Hkv D"], Float[Array, "B S Hkv D"]]:
    """One new token per row at position ``lengths[b]``: writes its k, v into slot
    ``lengths[b]`` (dropped for a full row) and attends to the ``lengths + 1`` valid slots.

    Parallax: ``parallax_decode``; softmax: ``jax.nn.dot_product_attention`` with the mask of
    ``masking.kv_lengths_mask`` (window included). Attention runs in the cache's dtype.
    """
    cfg = self.cfg
    b = x.shape[0]
    s_len = k_cache.shape[1]
    chex.assert_shape(x, (b, 1, cfg.d_model))
    chex.assert_shape(lengths, (b,))
    q, r, k, v = self._project(x, lengths[:, None])
    k_cache = kv_cache.write_token(k_cache, k[:, 0], lengths)
    v_cache = kv_cache.write_token(v_cache, v[:, 0], lengths)
    valid = kv_cache.next_lengths(lengths, s_len)
    q = q.astype(k_cache.dtype)
    if r is not None:
      o = parallax_decode(
        q,
        r.astype(k_cache.dtype),
        k_cache,
        v_cache,
        lengths=valid,
        window_size=cfg.window_size,
        implementation=self._decode_impl(),
        tuning=DecodeTuning(num_splits=cfg.decode_num_splits),
      )
    else:
      rules = kv_lengths_mask(1, s_len, valid[:, None, None, None], cfg.window_size)
      visible = rules.visible(jnp.zeros((1, 1, 1, 1), jnp.int32), jnp.arange(s_len))  # [B,1,1,S]
      o = masked_softmax_attention(
        q, k_cache, v_cache, visible, implementation=self._softmax_impl()
      )
    return self.o_proj(o.astype(x.dtype)), k_cache, v_cache

  def _decode_impl(self) -> str | None:
    """``cfg.decode_impl``, else ``cfg.attention_impl`` when ``parallax_decode`` has a path of
    that name, else None (the best path)."""
    cfg = self.cfg
    if cfg.decode_impl is not None:
      return cfg.decode_impl  # explicit: parallax_decode raises if it cannot serve the call
    return cfg.attention_impl if cfg.attention_impl in DECODE.names() else None

  def _softmax_impl(self) -> str | None:
    cfg = self.cfg
    if cfg.decode_impl is not None:
      return cfg.decode_impl
    return cfg.attention_impl if cfg.attention_impl in SOFTMAX_IMPLS else None

  def _attend(self, q, r, k, v, segment_ids):
    """The op on local (unpartitioned) arrays: Parallax, LLA, or softmax when ``r is None``."""
    cfg = self.cfg
    if cfg.attention == "lla":
      # XLA:CPU (jax 0.10) deadlocks on LAPACK's solve inside a rematerialised block even on
      # one device (every remat policy hung the first step): the pure-XLA solve there.
      remat_cpu = cfg.remat != "none" and jax.default_backend() == "cpu"
      return lla_attention(
        q,
        k,
        v,
        ridge=cfg.lla_ridge,
        window_size=cfg.window_size,
        segment_ids=segment_ids,
        solver="gauss_jordan" if remat_cpu else "auto",
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
      deterministic=cfg.attention_deterministic,
    )

  def _ring(self, q, r, k, v, segment_ids, rules):
    """Context parallelism: ring attention over the sequence axis (batches in zigzag order)."""
    from parallax_jax.attention.context_parallel import ring_parallax_attention

    ax = self.cfg.axes
    (seq_axis,) = rules.axes(ax.length)
    # The ring splits q and kv heads alike over one mesh axis: kv heads that do not split
    # over it evenly (rules that split q heads only) keep heads whole, as sharding.attention does.
    heads = rules.axes(ax.q_heads)
    if heads and k.shape[2] % rules.mesh.shape[heads[0]]:
      heads = None
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
