"""LM head + cross-entropy fused over sequence chunks: the ``[B, T, V]`` logits never exist.

At a 152k vocabulary the float32 logits of one 8 x 4096 batch take 20 GB, and autodiff keeps
them and their gradient. ``chunked_cross_entropy`` computes, chunk by chunk along T, the logits,
the NLL, and already the gradients of the hidden states and of the head (``softmax - onehot``
is known in the forward), so the memory is ``O(B * chunk * V)`` and no matmul is recomputed.
``chunked_eval_sums`` is the eval step's counterpart (no gradient). docs/design.md §17.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from parallax_jax import sharding


def chunked_cross_entropy(
  x_BTD: Float[Array, "B T D"],
  w_VD: Float[Array, "V D"],
  targets_BT: Int[Array, "B T"],
  weights_BT: Float[Array, "B T"],
  *,
  scale: float,
  chunk: int,
) -> Float[Array, ""]:
  """``sum(weights * nll)`` of ``logits = scale * x @ w.T`` (float32 softmax).

  ``x`` and ``w`` in the compute dtype (the matmuls run in it, accumulating in float32);
  ``chunk`` positions of T per step (T is padded up to a multiple, with weight 0).
  Differentiable in ``x`` and ``w`` (``targets`` and ``weights`` get no gradient).
  """
  _check_chunk(chunk)
  return _fused(x_BTD, w_VD, targets_BT, weights_BT.astype(jnp.float32), scale, chunk)


def chunked_eval_sums(
  x_BTD: Float[Array, "B T D"],
  w_VD: Float[Array, "V D"],
  targets_BT: Int[Array, "B T"],
  weights_BT: Float[Array, "B T"],
  *,
  scale: float,
  chunk: int,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
  """``(sum(weights * nll), sum(weights * [argmax == target]))``, chunk by chunk: the eval
  step's sums without the ``[B, T, V]`` logits. No gradient.

  The logits are the dense head's (``Transformer._logits``: the matmul's output in the compute
  dtype, then float32), not ``chunked_cross_entropy``'s float32 ones, so a run's eval numbers
  do not depend on ``logits_chunk`` (and match those of runs evaluated before it was chunked).
  """
  _check_chunk(chunk)

  def body(_, xs):
    x_c, t_c, wt_c = xs
    return None, eval_sums(head_logits(x_c, w_VD, scale), t_c, wt_c)

  xs, _ = _chunked_inputs(x_BTD, targets_BT, weights_BT.astype(jnp.float32), chunk)
  _, (nll, hits) = jax.lax.scan(body, None, xs)
  return jnp.sum(nll), jnp.sum(hits)


def head_logits(x: Float[Array, "... D"], w_VD: Float[Array, "V D"], scale: float):
  """The dense LM head, ``[..., D] -> [..., V]``: the matmul in the compute dtype, then float32
  (``Transformer``'s logits, and the chunked eval's)."""
  return (jnp.einsum("...d,vd->...v", x, w_VD) * scale).astype(jnp.float32)


def eval_sums(
  logits_BTV: Float[Array, "B T V"], targets_BT: Int[Array, "B T"], weights_BT: Float[Array, "B T"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
  """``(sum(weights * nll), sum(weights * [argmax == target]))`` of float32 logits (the eval
  step's LM sums, dense or one chunk at a time)."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  hit = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  return jnp.sum(nll * weights_BT), jnp.sum(hit * weights_BT)


def _check_chunk(chunk: int) -> None:
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")


def _chunked_inputs(x, targets, weights, chunk):
  """``((x, targets, weights) in chunks, S)``: the scanned inputs of both chunked heads."""
  shards = _length_shards(x.shape[1])
  return tuple(_chunks(a, chunk, shards) for a in (x, targets, weights)), shards


def _length_shards(t: int) -> int:
  """How many blocks T is sharded in (context parallelism: the traced rules' "length" axes)."""
  rules = sharding.current_rules()
  shards = rules.size("length") if rules is not None and rules.axes("length") else 1
  return shards if t % shards == 0 else 1


def _chunks(a, chunk, shards):
  """``[B, T, ...] -> [n, B * S, chunk, ...]``, the scan axis first: each of the ``S`` blocks of
  ``T / S`` positions in ``n`` chunks (zero-padded per block), and scan step ``i`` takes chunk
  ``i`` of every block. Under context parallelism (``S`` sequence shards) every step's work is
  then spread over the shards; chunks of T taken whole would each live on one shard, and XLA
  would replicate the stacked chunks ("Involuntary full rematerialization"). ``S = 1`` is
  plain chunking along T."""
  b, t = a.shape[:2]
  local = t // shards
  pad = -local % chunk
  a = a.reshape(b, shards, local, *a.shape[2:])
  a = jnp.pad(a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3))
  n = (local + pad) // chunk
  a = jnp.moveaxis(a.reshape(b, shards, n, chunk, *a.shape[3:]), 2, 0)  # [n, B, S, chunk, ...]
  return a.reshape(n, b * shards, chunk, *a.shape[4:])


def _unchunks(a, b, t, shards):
  """The inverse of ``_chunks``: ``[n, B * S, chunk, ...] -> [B, T, ...]`` (padding dropped)."""
  n, _, chunk = a.shape[:3]
  a = jnp.moveaxis(a.reshape(n, b, shards, chunk, *a.shape[3:]), 0, 2)  # [B, S, n, chunk, ...]
  a = a.reshape(b, shards, n * chunk, *a.shape[4:])[:, :, : t // shards]
  return a.reshape(b, t, *a.shape[3:])


def _scan(x, w, targets, weights, scale, chunk, with_grads):
  def body(dw, xs):
    x_c, t_c, wt_c = xs
    logits = jnp.einsum("bcd,vd->bcv", x_c, w, preferred_element_type=jnp.float32) * scale
    # By hand, not optax.softmax_cross_entropy_with_integer_labels: lse is reused for p below.
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
    loss = jnp.sum((lse - picked) * wt_c)
    if not with_grads:
      return dw, (loss, None)
    # d loss / d logits = weights * (softmax - onehot); times scale for d (x @ w.T).
    p = jnp.exp(logits - lse[..., None])
    onehot = jax.nn.one_hot(t_c, logits.shape[-1], dtype=p.dtype)
    g = ((p - onehot) * (wt_c * scale)[..., None]).astype(x.dtype)
    dx_c = jnp.einsum("bcv,vd->bcd", g, w, preferred_element_type=jnp.float32)
    dw = dw + jnp.einsum("bcv,bcd->vd", g, x_c, preferred_element_type=jnp.float32)
    return dw, (loss, dx_c.astype(x.dtype))

  b, t = x.shape[:2]
  xs, shards = _chunked_inputs(x, targets, weights, chunk)
  dw0 = jnp.zeros(w.shape, jnp.float32) if with_grads else None
  dw, (losses, dx) = jax.lax.scan(body, dw0, xs)
  if not with_grads:
    return jnp.sum(losses)
  return jnp.sum(losses), (_unchunks(dx, b, t, shards), dw.astype(w.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(x, w, targets, weights, scale, chunk):
  return _scan(x, w, targets, weights, scale, chunk, with_grads=False)


def _fused_fwd(x, w, targets, weights, scale, chunk):
  loss, grads = _scan(x, w, targets, weights, scale, chunk, with_grads=True)
  return loss, (grads, targets, weights)


def _fused_bwd(scale, chunk, res, g):
  (dx, dw), targets, weights = res
  # Integer targets take a float0 cotangent; the weights are data, not parameters.
  dt = jnp.zeros(targets.shape, jax.dtypes.float0)
  return (g * dx).astype(dx.dtype), (g * dw).astype(dw.dtype), dt, jnp.zeros_like(weights)


_fused.defvjp(_fused_fwd, _fused_bwd)
