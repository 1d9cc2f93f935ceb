"""Compiled (not run) temporary memory of the op's forward+backward, for scaling checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from parallax_jax import parallax_attention


def temp_bytes(
  implementation: str, length: int, batch=1, heads=4, head_dim=64, dtype=jnp.float32
) -> int:
  shape = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)

  def loss(q, r, k, v):
    o = parallax_attention(q, r, k, v, implementation=implementation)
    return jnp.sum(o.astype(jnp.float32))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  compiled = grad.lower(shape, shape, shape, shape).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)
