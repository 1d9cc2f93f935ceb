"""Building blocks: RMSNorm, projections with logical axes, SwiGLU MLP, RoPE."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int


def param(
  rngs: nnx.Rngs,
  shape: Sequence[int],
  axes: Sequence[str | None],
  *,
  std: float,
  dtype,
  zeros: bool = False,
) -> nnx.Param:
  """A normal(0, std) (or zero) parameter tagged with its logical axis names."""
  value = jnp.zeros(shape, dtype) if zeros else std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class RMSNorm(nnx.Module):
  """``x / rms(x) * scale`` over the last axis, computed in float32."""

  def __init__(self, dim: int, *, eps: float, axis_name: str | None, dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), dtype), logical_axes=(axis_name,))

  def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Projection(nnx.Module):
  """``einsum(x, W)`` with ``W`` of shape ``in_shape + out_shape`` (no bias)."""

  def __init__(
    self,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    axes: Sequence[str | None],
    *,
    rngs: nnx.Rngs,
    std: float,
    dtype,
    zeros: bool = False,
  ):
    self.n_in = len(in_shape)
    self.kernel = param(rngs, (*in_shape, *out_shape), axes, std=std, dtype=dtype, zeros=zeros)

  def __call__(self, x, dtype):
    w = self.kernel[...].astype(dtype)
    n_out = w.ndim - self.n_in
    batch = x.ndim - self.n_in
    letters = "abcdefghijklmnopqrstuvwxyz"
    xs = letters[:batch]
    ins = letters[batch : batch + self.n_in]
    outs = letters[batch + self.n_in : batch + self.n_in + n_out]
    return jnp.einsum(f"{xs}{ins},{ins}{outs}->{xs}{outs}", x.astype(dtype), w)


class SwiGLU(nnx.Module):
  """``down(silu(gate(x)) * up(x))``."""

  def __init__(self, d_model: int, mlp_dim: int, axes, *, rngs: nnx.Rngs, std: float, dtype):
    self.gate = Projection(
      (d_model,), (mlp_dim,), (axes.embed, axes.mlp), rngs=rngs, std=std, dtype=dtype
    )
    self.up = Projection(
      (d_model,), (mlp_dim,), (axes.embed, axes.mlp), rngs=rngs, std=std, dtype=dtype
    )
    self.down = Projection(
      (mlp_dim,), (d_model,), (axes.mlp, axes.embed), rngs=rngs, std=std, dtype=dtype
    )

  def __call__(self, x, dtype):
    return self.down(jax.nn.silu(self.gate(x, dtype)) * self.up(x, dtype), dtype)


def rope(x: Float[Array, "B T H D"], positions: Int[Array, "B T"], theta: float):
  """Rotary embedding (NeoX / Qwen style: rotate the two halves of the head dim)."""
  d = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
