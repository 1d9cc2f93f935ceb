"""Dense Parallax attention (docs/design.md §1.1): the short, obviously-right oracle.

Materialises the full ``[B, Hq, Tq, Tk]`` score matrix, computes in float32 (float64 when given
float64 inputs) and is differentiated by JAX autodiff. Use it for tests and small problems.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from parallax_jax.attention.implementations import Implementation
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
  a, _ = effective_weights(q, r, k, scale=scale, mask=mask, segment_ids=segment_ids)
  group = q.shape[2] // k.shape[2]
  v = jnp.repeat(v.astype(a.dtype), group, axis=2)  # GQA: query head h uses kv head h // group
  o = jnp.einsum("bhij,bjhd->bihd", a, v, precision="highest")
  return o.astype(q.dtype)


def effective_weights(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"] | None,
  k: Float[Array, "B Tk Hkv D"],
  *,
  scale: float,
  mask: MaskSpec,
  segment_ids: Int[Array, "B T"] | None = None,
) -> tuple[Float[Array, "B Hq Tq Tk"], Bool[Array, "B Hq Tq Tk"]]:
  """``(a, visible)``: the weights ``a_ij = p_ij (1 + tbar_i - t_ij)`` that mix the values.

  ``r=None`` gives softmax attention's ``p``. Every row that sees a key sums to 1; Parallax
  weights can be negative or above 1. float32 (float64 for float64 inputs); 0 where not visible.
  """
  compute = jnp.promote_types(q.dtype, jnp.float32)
  group = q.shape[2] // k.shape[2]
  q = q.astype(compute)
  k = jnp.repeat(k.astype(compute), group, axis=2)  # GQA: query head h uses kv head h // group

  s = scale * jnp.einsum("bihd,bjhd->bhij", q, k, precision="highest")
  i = jnp.arange(mask.q_len)[:, None]
  j = jnp.arange(mask.kv_len)[None, :]
  seg_q = seg_k = None
  if segment_ids is not None:
    seg_q, seg_k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]
  visible = jnp.broadcast_to(mask.visible(i, j, seg_q, seg_k), s.shape)

  s = jnp.where(visible, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows with no visible key
  w = jnp.where(visible, jnp.exp(s - m), 0.0)
  d1 = jnp.sum(w, axis=-1, keepdims=True)
  p = w / jnp.where(d1 > 0, d1, 1.0)
  if r is None:
    return p, visible
  t = jnp.einsum("bihd,bjhd->bhij", r.astype(compute), k, precision="highest")
  tbar = jnp.sum(p * t, axis=-1, keepdims=True)
  return p * (1.0 + tbar - t), visible  # sums to 1 on every row that sees a key


def _check(spec) -> None:
  if spec.block_sizes is not None:
    raise NotImplementedError(
      "implementation='reference' is dense and takes no block_sizes; leave it None."
    )


def _impl_fwd(q, r, k, v, segment_ids, spec):
  return parallax_reference(q, r, k, v, scale=spec.scale, mask=spec.mask, segment_ids=segment_ids)


IMPLEMENTATION = Implementation(
  name="reference", fwd=_impl_fwd, bwd=None, platforms=("cpu", "gpu", "tpu"), check=_check
)
