"""Dense Parallax attention (PARALLAX.md 1.3): the short, obviously-right oracle.

Materialises the full ``[B, Hq, Tq, Tk]`` score matrix, computes in float32 (float64 when given
float64 inputs) and is differentiated by JAX autodiff. Use it for tests and small problems.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from parallax_jax.attention.masking import MaskSpec


def parallax_reference(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"],
  k: Float[Array, "B Tk Hkv D"],
  v: Float[Array, "B Tk Hkv D"],
  *,
  scale: float,
  mask: MaskSpec,
  segment_ids: Int[Array, "B T"] | None = None,
) -> Float[Array, "B Tq Hq D"]:
  """o_i = sum_j p_ij (1 + tbar_i - t_ij) v_j with p = softmax(scale q.k), t = r.k (unscaled).

  Rows that see no key return 0. Output in q's dtype.
  """
  out_dtype = q.dtype
  compute = jnp.promote_types(q.dtype, jnp.float32)
  group = q.shape[2] // k.shape[2]
  q, r = q.astype(compute), r.astype(compute)
  # GQA: query head h uses kv head h // group.
  k = jnp.repeat(k.astype(compute), group, axis=2)
  v = jnp.repeat(v.astype(compute), group, axis=2)

  s = scale * jnp.einsum("bihd,bjhd->bhij", q, k, precision="highest")
  t = jnp.einsum("bihd,bjhd->bhij", r, k, precision="highest")
  i = jnp.arange(mask.q_len)[:, None]
  j = jnp.arange(mask.kv_len)[None, :]
  seg_q = seg_k = None
  if segment_ids is not None:
    seg_q, seg_k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]
  visible = mask.visible(i, j, seg_q, seg_k)
  visible = jnp.broadcast_to(visible, s.shape)

  s = jnp.where(visible, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows with no visible key
  w = jnp.where(visible, jnp.exp(s - m), 0.0)
  d1 = jnp.sum(w, axis=-1, keepdims=True)
  p = w / jnp.where(d1 > 0, d1, 1.0)
  tbar = jnp.sum(p * t, axis=-1, keepdims=True)
  a = p * (1.0 + tbar - t)  # effective weights; sum to 1 on every row that sees a key
  o = jnp.einsum("bhij,bjhd->bihd", a, v, precision="highest")
  return o.astype(out_dtype)
