"""Gradient accumulation: one step over the global batch taken in ``train.microbatches`` pieces.

Only one piece's activations are live at a time, so a batch that does not fit in memory at
once still gives the same step: the pieces run one after another inside the jitted step
(``lax.scan``), their sums are added in float32, and the step divides once by the batch's
loss-token count. That makes the gradient the full batch's, whatever the pieces' token counts;
a mean of per-piece means would weight a piece with fewer loss tokens (padding, masked
prompts) more than its tokens. Only the order of float32 additions differs from taking the
batch at once.

Rows are dealt round-robin: piece ``i`` holds rows ``i, i + n, i + 2n, ...``. That is a reshape
``[B] -> [B/n, n]``, which keeps every row on the device that holds it when the rows are
sharded over ``D`` devices in contiguous blocks and ``B/n`` is a multiple of ``D`` (checked in
``train.config.resolve``): no piece moves data between devices. docs/design.md §17.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding


def split(batch: dict, n: int) -> dict:
  """``[B, ...]`` arrays -> ``[n, B/n, ...]``; piece ``i`` holds rows ``i::n``. None stays None."""

  def one(x):
    if x is None:
      return None
    rows = x.shape[0]
    if rows % n:
      raise ValueError(f"{rows} rows do not split into {n} microbatches")
    return jnp.swapaxes(x.reshape(rows // n, n, *x.shape[1:]), 0, 1)

  return {k: one(v) for k, v in batch.items()}


def sum_over_microbatches(fn: Callable, batch: dict, n: int, sharding: NamedSharding | None = None):
  """``sum_i fn(piece_i)`` over the ``n`` pieces of ``batch`` (``split``), one piece at a time.

  ``fn(piece) -> pytree`` of arrays to add (sums, not means). Floating leaves are added in
  float32 and returned in float32; integer leaves keep their dtype. ``sharding``: the batch's
  sharding, put on each piece (its rows stay where they are; the constraint keeps XLA from
  moving them).
  """
  pieces = split(batch, n)

  def constrained(piece):
    if sharding is None or sharding.mesh.size == 1:
      return piece
    return {
      k: None if x is None else jax.lax.with_sharding_constraint(x, sharding)
      for k, x in piece.items()
    }

  def wide(x):
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x

  # Zeros, not the first piece's result, start the sum: ``fn`` is traced (and compiled) once.
  shapes = jax.eval_shape(lambda p: jax.tree.map(wide, fn(p)), jax.tree.map(lambda x: x[0], pieces))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(acc, piece):
    return jax.tree.map(lambda a, x: a + wide(x), acc, fn(constrained(piece))), None

  total, _ = jax.lax.scan(body, zeros, pieces)
  return total
