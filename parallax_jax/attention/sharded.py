"""The op on a mesh: one ``jax.shard_map`` over the batch and head axes around an attention call.

Attention is independent per batch row and per head (GQA groups stay whole when the kv heads
are split), so every device runs the op on its own ``[B/b, T, H/h, D]`` slice and nothing is
communicated. Used by the model's layer (``parallax_jax.sharding.attention``) and by the ring
when the sequence axis has one device (``context_parallel``). Lives beside the op so that the
attention package never imports the model-level ``parallax_jax.sharding``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Axes = str | tuple[str, ...] | None


def shard_over_batch_and_heads(
  fn: Callable,
  q,
  r,
  k,
  v,
  segment_ids=None,
  *,
  mesh: Mesh,
  batch_axes: Axes,
  q_head_axes: Axes,
  kv_head_axes: Axes,
):
  """``fn(q, r, k, v, segment_ids)`` per device inside ``jax.shard_map``; returns ``[B, T, Hq, D]``.

  ``q, r: [B, T, Hq, D]`` (``r`` may be None: softmax), ``k, v: [B, T, Hkv, D]``,
  ``segment_ids: [B, T] | None``. The batch axis is split over ``batch_axes``, the head axes
  over ``q_head_axes`` / ``kv_head_axes`` (None: not split); T and D stay whole. The two head
  axes must be equal (GQA groups stay whole on each device), except that a single kv head may
  stay whole while the query heads are split.
  """
  if q_head_axes != kv_head_axes and not (kv_head_axes is None and k.shape[2] == 1):
    # Each device maps its local query head h to local kv head h // (local Hq // local Hkv):
    # the global pairing only when both head axes are split alike.
    raise ValueError(
      f"q_head_axes={q_head_axes!r} and kv_head_axes={kv_head_axes!r} must be equal: split "
      "unlike each other, query heads would meet the wrong kv heads. Split both alike or "
      "neither (None)."
    )
  q_spec, kv_spec = P(batch_axes, None, q_head_axes, None), P(batch_axes, None, kv_head_axes, None)
  has_r, has_seg = r is not None, segment_ids is not None
  args = [q, *([r] if has_r else []), k, v, *([segment_ids] if has_seg else [])]
  specs = [q_spec, *([q_spec] if has_r else []), kv_spec, kv_spec]
  specs += [P(batch_axes, None)] if has_seg else []

  def local(*xs):
    xs = list(xs)
    seg = xs.pop() if has_seg else None
    q_, r_ = xs[0], (xs[1] if has_r else None)
    return fn(q_, r_, *xs[-2:], seg)

  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=tuple(specs),
    out_specs=q_spec,
    # The Pallas kernels inside carry no varying-manual-axes types, so the check must be off.
    check_vma=False,
  )(*args)
