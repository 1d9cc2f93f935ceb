"""Building blocks: Flax's RMSNorm and LinearGeneral tagged with logical axes, SwiGLU MLP, RoPE.

Every parameter carries ``logical_axes`` metadata (one name per dimension, ``ModelConfig.axes``);
``train.step.logical_axes`` reads it and the sharding rules map the names onto the mesh.
"""

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
) -> nnx.Param:
  """A normal(0, std) parameter tagged with its logical axis names.

  Hand-written rather than ``nnx.Embed``: the embedding is also the tied LM head, and its path
  (``embed``, not ``embed/embedding``) names it in the optimizer's groups and in checkpoints.
  """
  value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class RMSNorm(nnx.RMSNorm):
  """``nnx.RMSNorm`` over the last axis, computed in float32; returns the input's dtype."""

  def __init__(self, dim: int, *, eps: float, logical_axis: str | None, param_dtype):
    super().__init__(
      dim,
      epsilon=eps,
      dtype=jnp.float32,  # statistics, scale and product in float32 (also for a bf16 input)
      param_dtype=param_dtype,
      # The scale starts at ones and needs no key: a private stream leaves the model's params
      # stream (every other parameter's initial value for a given seed) as it was.
      rngs=nnx.Rngs(0),
      scale_metadata={"logical_axes": (logical_axis,)},
    )

  def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    return super().__call__(x).astype(x.dtype)


def projection(
  in_shape: Sequence[int],
  out_shape: Sequence[int],
  axes: Sequence[str | None],
  *,
  rngs: nnx.Rngs,
  std: float,
  param_dtype,
  dtype,
  zeros: bool = False,
) -> nnx.LinearGeneral:
  """``nnx.LinearGeneral`` without bias contracting the input's last ``len(in_shape)`` axes.

  The kernel has shape ``in_shape + out_shape``, logical axis names ``axes``, and is
  normal(0, std) (or zero); inputs and kernel are cast to ``dtype`` (the compute dtype).
  """
  return nnx.LinearGeneral(
    tuple(in_shape),
    tuple(out_shape),
    axis=tuple(range(-len(in_shape), 0)),
    use_bias=False,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nnx.initializers.zeros if zeros else nnx.initializers.normal(std),
    # A zero kernel draws no key from the model's stream: a zero-initialised r_proj leaves
    # every other parameter equal to the softmax model's of the same seed.
    rngs=nnx.Rngs(0) if zeros else rngs,
    kernel_metadata={"logical_axes": tuple(axes)},
  )


class SwiGLU(nnx.Module):
  """``down(silu(gate(x)) * up(x))``."""

  def __init__(
    self, d_model: int, mlp_dim: int, axes, *, rngs: nnx.Rngs, std: float, param_dtype, dtype
  ):
    kw = dict(rngs=rngs, std=std, param_dtype=param_dtype, dtype=dtype)
    self.gate = projection((d_model,), (mlp_dim,), (axes.embed, axes.mlp), **kw)
    self.up = projection((d_model,), (mlp_dim,), (axes.embed, axes.mlp), **kw)
    self.down = projection((mlp_dim,), (d_model,), (axes.mlp, axes.embed), **kw)

  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rope(x: Float[Array, "B T H D"], positions: Int[Array, "B T"], theta: float):
  """Rotary embedding (NeoX / Qwen style: rotate the two halves of the head dim)."""
  d = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
