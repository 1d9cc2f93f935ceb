"""``shard_over_batch_and_heads`` on 8 fake CPU devices: the per-device call on local slices
gives the unsharded call's result, with r and segment ids present or absent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from parallax_jax.attention.sharded import shard_over_batch_and_heads

B, T, HQ, HKV, D = 4, 8, 8, 4, 2


def _fn(seen):
  """Mixes along T (cumsum) and within each GQA group, never across batch rows or groups;
  records the shapes it was called with."""

  def fn(q, r, k, v, seg):
    seen.append((q.shape, None if r is None else r.shape, k.shape, seg is None or seg.shape))
    group = q.shape[2] // k.shape[2]
    kv = jnp.repeat(jnp.cumsum(k * jnp.exp(v), axis=1), group, axis=2)
    out = q * kv
    if r is not None:
      out = out + r.sum(axis=-1, keepdims=True) * jnp.cumsum(q, axis=1)
    if seg is not None:
      out = out + seg[:, :, None, None]
    return out

  return fn


@pytest.mark.parametrize("with_r", [True, False])
@pytest.mark.parametrize("with_seg", [True, False])
def test_local_calls_equal_the_global_call(devices, with_r, with_seg):
  mesh = Mesh(np.asarray(devices).reshape(2, 2, 2), ("a", "b", "h"))
  keys = jax.random.split(jax.random.key(0), 4)
  q, r = (jax.random.normal(kk, (B, T, HQ, D)) for kk in keys[:2])
  k, v = (jax.random.normal(kk, (B, T, HKV, D)) for kk in keys[2:])
  r = r if with_r else None
  seg = jnp.arange(B * T).reshape(B, T) % 3 if with_seg else None

  want = _fn([])(q, r, k, v, seg)
  seen = []
  got = jax.jit(
    lambda q, r, k, v, seg: shard_over_batch_and_heads(
      _fn(seen),
      q,
      r,
      k,
      v,
      seg,
      mesh=mesh,
      batch_axes=("a", "b"),
      q_head_axes="h",
      kv_head_axes="h",
    )
  )(q, r, k, v, seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  local_q = (B // 4, T, HQ // 2, D)
  assert seen == [
    (
      local_q,
      local_q if with_r else None,
      (B // 4, T, HKV // 2, D),
      (B // 4, T) if with_seg else True,
    )
  ]
  assert got.sharding.shard_shape(got.shape) == local_q


def test_heads_kept_whole(devices):
  mesh = Mesh(np.asarray(devices).reshape(8, 1), ("a", "h"))
  q = jnp.ones((8, T, HQ, D))
  k = v = jnp.ones((8, T, HKV, D))
  seen = []
  shard_over_batch_and_heads(
    _fn(seen), q, None, k, v, mesh=mesh, batch_axes="a", q_head_axes=None, kv_head_axes=None
  )
  assert seen[0][0] == (1, T, HQ, D) and seen[0][2] == (1, T, HKV, D)


@pytest.mark.parametrize(
  "table",
  [
    {"batch": ("data",), "q_heads": ("tensor",)},  # kv heads left whole by the rules
    {"batch": ("data",), "kv_heads": ("tensor",)},  # q heads left whole by the rules
  ],
)
def test_heads_split_only_when_q_and_kv_heads_split_alike(devices, table):
  # Rules come from the config: a table that splits only one of the head axes must not pair
  # the wrong query heads with a kv head (GQA groups stay whole, or the heads do).
  from parallax_jax import sharding
  from parallax_jax.model.config import LogicalAxes

  mesh = Mesh(np.asarray(devices).reshape(4, 1, 2, 1), sharding.MESH_AXES)
  rules = sharding.Rules(mesh=mesh, table=table, strategy="tp")
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (B, T, HQ, D))
  k, v = (jax.random.normal(kk, (B, T, HKV, D)) for kk in keys[1:])
  want = _fn([])(q, None, k, v, None)

  def call(q, k, v):
    with sharding.use_rules(rules):
      return sharding.attention(_fn([]), q, None, k, v, None, axes=LogicalAxes())

  got = jax.jit(call)(q, k, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("q_axes", "kv_axes"), [("h", None), (None, "h")])
def test_q_and_kv_heads_split_unlike_each_other_are_refused(devices, q_axes, kv_axes):
  # Split unlike each other, a device's local query head h would use its local kv head
  # h // (local Hq // local Hkv), not the global one: GQA groups silently paired wrongly.
  mesh = Mesh(np.asarray(devices).reshape(4, 2), ("a", "h"))
  q = jnp.ones((4, T, HQ, D))
  k = v = jnp.ones((4, T, HKV, D))
  with pytest.raises(ValueError, match="q_head_axes.*kv_head_axes"):
    shard_over_batch_and_heads(
      _fn([]), q, None, k, v, mesh=mesh, batch_axes="a", q_head_axes=q_axes, kv_head_axes=kv_axes
    )


def test_one_kv_head_may_stay_whole_while_q_heads_split(devices):
  # MQA: every query head uses kv head 0, on every device too.
  mesh = Mesh(np.asarray(devices).reshape(4, 2), ("a", "h"))
  keys = jax.random.split(jax.random.key(2), 3)
  q = jax.random.normal(keys[0], (4, T, HQ, D))
  k, v = (jax.random.normal(kk, (4, T, 1, D)) for kk in keys[1:])
  want = _fn([])(q, None, k, v, None)
  got = shard_over_batch_and_heads(
    _fn([]), q, None, k, v, mesh=mesh, batch_axes="a", q_head_axes="h", kv_head_axes=None
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
