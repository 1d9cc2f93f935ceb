"""Ring (context-parallel) Parallax attention against the float64 NumPy oracle.

Runs on 8 fake CPU devices (see conftest.py: in-process for ``pytest tests/sharded``, a child
process per test in a mixed session). Forward and all four gradients (``jax.vjp`` with a random
cotangent) must match ``parallax_jax/testing/oracle.py`` (not "xla", whose chunk loops the ring
reuses) within the shared tolerance table of ``parallax_jax/testing/attention_cases.py``, with
and without ``segment_ids`` (packed documents).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from parallax_jax import BlockSizes, parallax_attention
from parallax_jax.attention import ring_state, tile_math, xla
from parallax_jax.attention.context_parallel import (
  from_zigzag,
  merge_fwd_states,
  ring_parallax_attention,
  to_zigzag,
  zigzag_positions,
)
from parallax_jax.attention.masking import TileKind
from parallax_jax.testing import oracle
from parallax_jax.testing.attention_cases import assert_close


@dataclasses.dataclass(frozen=True)
class RingCase:
  seq: int  # sequence shards
  load_balance: bool = True
  causal: bool = True
  window: int | None = None
  t: int = 64
  hq: int = 2
  hkv: int = 2
  batch: int = 2
  data: int = 1  # batch shards (mesh axis "data")
  heads: int = 1  # head shards (mesh axis "heads")
  block: tuple[int, int] | None = None
  dtype: str = "float32"

  @property
  def id(self):
    parts = [
      f"seq{self.seq}",
      "zigzag" if self.load_balance else "contig",
      "causal" if self.causal else "noncausal",
      f"T{self.t}",
      f"H{self.hq}-{self.hkv}",
    ]
    if self.window is not None:
      parts.append(f"W{self.window}")
    if self.data > 1:
      parts.append(f"data{self.data}")
    if self.heads > 1:
      parts.append(f"heads{self.heads}")
    if self.block:
      parts.append("blk{}x{}".format(*self.block))
    if self.dtype != "float32":
      parts.append(self.dtype)
    return "-".join(parts)


CASES = [
  RingCase(2),
  RingCase(4, hq=4, hkv=2),  # GQA
  RingCase(8, hq=4, hkv=1),  # MQA, chunk of 4 rows
  RingCase(4, load_balance=False),
  # Windows: smaller than a chunk, and spanning several chunks (not chunk multiples).
  RingCase(4, window=5, hq=4, hkv=2),  # chunk 8
  RingCase(4, window=37),
  RingCase(8, load_balance=False, window=5, t=128),  # chunk 16: ring of 2 steps
  RingCase(8, load_balance=False, window=37, t=128, hq=4, hkv=2, block=(8, 4)),  # 4 steps
  RingCase(4, causal=False, hq=4, hkv=2),
  RingCase(4, data=2, hq=4, hkv=2),  # mesh (data=2, sequence=4)
  RingCase(2, data=2, heads=2, hq=4, hkv=2, window=21, block=(8, 8)),
  RingCase(4, hq=4, hkv=2, dtype="bfloat16"),
]


def _inputs(case: RingCase, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  dt = jnp.dtype(case.dtype)
  q_shape = (case.batch, case.t, case.hq, 16)
  kv_shape = (case.batch, case.t, case.hkv, 16)
  q = jax.random.normal(keys[0], q_shape).astype(dt)
  r = (0.3 * jax.random.normal(keys[1], q_shape)).astype(dt)
  k = jax.random.normal(keys[2], kv_shape).astype(dt)
  v = jax.random.normal(keys[3], kv_shape).astype(dt)
  g = jax.random.normal(keys[4], q_shape).astype(dt)
  return (q, r, k, v), g


def _mesh(devices, case: RingCase):
  shape = (case.data, case.heads, case.seq)
  devs = np.asarray(devices[: int(np.prod(shape))]).reshape(shape)
  return Mesh(devs, ("data", "heads", "sequence"))


def _value_and_grads(f, args, g):
  def run(*args):
    o, vjp = jax.vjp(f, *args)
    return (o, *vjp(g))

  return jax.jit(run)(*args)


def _segment_ids(batch: int, t: int) -> np.ndarray:
  """``[B, T]`` packed-document ids in natural order.

  Row 0: boundaries inside chunks and across them, length-1 segments (position 5 and the last
  position). Row 1: boundaries on chunk edges (for every shard count used here), a length-1
  segment, non-monotone ids and one id used by two separate runs (they see each other, as in
  ``parallax_attention``). Further rows repeat these.
  """
  cuts = [
    ([5, 6, t // 4 + 3, t // 2 + 1, t - 1], [0, 1, 2, 3, 4, 5]),
    ([t // 8, t // 4, t // 4 + 1, t // 2], [7, 0, 3, 7, 2]),
  ]
  rows = []
  for i in range(batch):
    bounds, ids = cuts[i % 2]
    rows.append(np.asarray(ids)[np.searchsorted(bounds, np.arange(t), side="right")])
  return np.stack(rows).astype(np.int32)


def _oracle(args, g, *, causal, window, segment_ids):
  """``(o, dq, dr, dk, dv)`` of the float64 oracle, and the natural scale of the gradients."""
  q, r, k, v, g = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (*args, g))
  seg = None if segment_ids is None else np.asarray(segment_ids)
  mask = oracle.visible_mask(
    q.shape[1], k.shape[1], causal=causal, window_size=window, segment_ids=seg
  )
  scale = q.shape[-1] ** -0.5
  o, _ = oracle.forward(q, r, k, v, scale=scale, mask=mask)
  natural = np.max(np.abs(g)) * np.max(np.abs(v)) * max(np.max(np.abs(x)) for x in (q, r, k))
  return (o, *oracle.grads(q, r, k, v, g, scale=scale, mask=mask)), float(natural)


def _check_ring(devices, case: RingCase, segment_ids=None):
  args, g = _inputs(case)
  kw = dict(causal=case.causal, window_size=case.window)
  want, natural = _oracle(args, g, causal=case.causal, window=case.window, segment_ids=segment_ids)

  mesh = _mesh(devices, case)
  zigzag = case.load_balance and case.causal
  to = (lambda x: to_zigzag(x, case.seq)) if zigzag else (lambda x: x)
  back = (lambda x: from_zigzag(x, case.seq)) if zigzag else (lambda x: x)
  # The caller permutes the segment ids into the layout like every other input.
  seg = None if segment_ids is None else to(jnp.asarray(segment_ids))
  ring = lambda *x: ring_parallax_attention(
    *x,
    mesh=mesh,
    load_balance=case.load_balance,
    batch_axes="data",
    head_axis="heads" if case.heads > 1 else None,
    block_sizes=BlockSizes.uniform(*case.block) if case.block else None,
    segment_ids=seg,
    **kw,
  )
  got = _value_and_grads(ring, tuple(map(to, args)), to(g))
  assert got[0].dtype == args[0].dtype
  for name, x, y in zip(("o", "dq", "dr", "dk", "dv"), got, want, strict=True):
    assert_close(name, back(x), y, case.dtype, natural)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_ring_matches_unsharded(devices, case):
  _check_ring(devices, case)


SEGMENT_CASES = [
  RingCase(4, hq=4, hkv=2),  # zigzag, chunk 8, GQA
  RingCase(2, window=21, hq=4, hkv=1),  # zigzag + window, MQA
  RingCase(4, load_balance=False, window=5),  # contiguous, chunk 16: ring of 2 steps
  RingCase(8, load_balance=False, t=128, hq=4, hkv=2, block=(8, 4)),  # contiguous, full ring
  RingCase(4, data=2, hq=4, hkv=2, window=9),  # batch sharded: one packing per device
  RingCase(2, data=2, heads=2, hq=4, hkv=2, block=(8, 8)),  # batch and heads sharded
  RingCase(4, causal=False, hq=4, hkv=2),  # only segments mask
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SEGMENT_CASES])
def test_ring_with_segment_ids_matches_unsharded(devices, case):
  _check_ring(devices, case, _segment_ids(case.batch, case.t))


def test_ring_with_one_segment_per_chunk(devices):
  # Every off-diagonal chunk pair is masked by segments alone (skipped at run time): each
  # chunk attends only to itself.
  case = RingCase(4, hq=4, hkv=2, window=11)
  seg = np.repeat(np.arange(8, dtype=np.int32), 8)[None].repeat(case.batch, 0)
  _check_ring(devices, case, seg)


@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("batch_axes", [None, "data"])
def test_single_sequence_shard_calls_the_op(devices, batch_axes, segments):
  case = RingCase(1, hq=4, hkv=2, batch=8, window=9)
  args, g = _inputs(case)
  mesh = Mesh(np.asarray(devices).reshape(8, 1), ("data", "sequence"))
  seg = jnp.asarray(_segment_ids(case.batch, case.t)) if segments else None
  kw = dict(window_size=case.window, segment_ids=seg)
  want, natural = _oracle(args, g, causal=True, window=case.window, segment_ids=seg)
  got = _value_and_grads(
    lambda *x: ring_parallax_attention(*x, mesh=mesh, batch_axes=batch_axes, **kw), args, g
  )
  for name, x, y in zip(("o", "dq", "dr", "dk", "dv"), got, want, strict=True):
    assert_close(name, x, y, "float32", natural)


def test_output_stays_sharded_along_the_sequence(devices):
  case = RingCase(4, data=2)
  (q, r, k, v), _ = _inputs(case)
  mesh = _mesh(devices, case)
  o = jax.jit(lambda *x: ring_parallax_attention(*x, mesh=mesh, batch_axes="data"))(q, r, k, v)
  shard_shapes = {s.data.shape for s in o.addressable_shards}
  assert shard_shapes == {(1, 16, 2, 16)}


def test_bad_arguments(devices):
  mesh = Mesh(np.asarray(devices[:4]), ("sequence",))
  q = jnp.zeros((1, 36, 2, 8))
  with pytest.raises(ValueError, match="divisible by 2"):
    ring_parallax_attention(q, q, q, q, mesh=mesh)  # 36 % 8
  with pytest.raises(ValueError, match="same length"):
    ring_parallax_attention(q, q, q[:, :32], q[:, :32], mesh=mesh)
  with pytest.raises(ValueError, match="not in the mesh"):
    ring_parallax_attention(q, q, q, q, mesh=mesh, axis_name="seq")
  with pytest.raises(ValueError, match="segment_ids must have shape"):
    ring_parallax_attention(q, q, q, q, mesh=mesh, segment_ids=jnp.zeros((1, 32), jnp.int32))
  with pytest.raises(TypeError, match="integer dtype"):
    ring_parallax_attention(
      q[:, :32], q[:, :32], q[:, :32], q[:, :32], mesh=mesh, segment_ids=jnp.zeros((1, 32))
    )
  with pytest.raises(ValueError, match="batch size"):
    ring_parallax_attention(
      q,
      q,
      q,
      q,
      mesh=Mesh(np.asarray(devices[:8]).reshape(2, 4), ("data", "sequence")),
      batch_axes="data",
    )


# ---- device-free pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_zigzag_round_trip(n):
  t = 2 * n * 3
  x = jnp.arange(2 * t * 5).reshape(2, t, 5)
  z = to_zigzag(x, n)
  np.testing.assert_array_equal(from_zigzag(z, n), x)
  # Row j of the layout holds absolute position zigzag_positions[j]; shard i: chunks i, 2n-1-i.
  pos = zigzag_positions(t, n)
  np.testing.assert_array_equal(z[0, :, 0] // 5, pos)
  chunks = pos.reshape(2 * n, 3)[:, 0] // 3
  np.testing.assert_array_equal(chunks.reshape(n, 2), [[i, 2 * n - 1 - i] for i in range(n)])


def test_zigzag_other_axis():
  x = jnp.arange(3 * 16).reshape(3, 16)
  np.testing.assert_array_equal(to_zigzag(x, 2, axis=1), to_zigzag(x.T, 2, axis=0).T)
  np.testing.assert_array_equal(from_zigzag(to_zigzag(x, 4, axis=-1), 4, axis=-1), x)


def _work(sched):
  """Per shard: computed pairs, and causal work in units of a full pair (diagonal = 1/2)."""
  pairs = (sched != TileKind.SKIP).sum(axis=(1, 2, 3))
  work = (sched == TileKind.FULL).sum(axis=(1, 2, 3)) + 0.5 * (sched == TileKind.MASKED).sum(
    axis=(1, 2, 3)
  )
  return pairs, work


@pytest.mark.parametrize("n", [2, 4, 8])
def test_causal_work_is_balanced_by_zigzag(n):
  zig = ring_state.ring_schedule(
    ring_state.Placement(64 * n, n, True), causal=True, window_size=None
  )
  pairs, work = _work(zig)
  assert (pairs == pairs[0]).all() and (work == work[0]).all(), (pairs, work)
  assert pairs[0] == 2 * n + 1  # 2 diagonal + 2n - 1 full chunk pairs per shard
  # Every step does the same work on every shard, so no device waits at a ppermute.
  per_step = (zig != TileKind.SKIP).sum(axis=(2, 3))
  assert (per_step[:, 1:] == 2).all() and (per_step[:, 0] == 3).all()

  contig = ring_state.ring_schedule(
    ring_state.Placement(64 * n, n, False), causal=True, window_size=None
  )
  pairs, _ = _work(contig)
  np.testing.assert_array_equal(pairs, np.arange(1, n + 1))  # shard i: i full + 1 diagonal


@pytest.mark.parametrize("load_balance", [False, True])
@pytest.mark.parametrize("window", [None, 1, 5, 16, 37, 1000])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_visits_each_visible_pair_once(n, window, load_balance):
  placement = ring_state.Placement(16 * n, n, load_balance)
  c, nc = placement.chunk_len, placement.num_chunks
  sched = ring_state.ring_schedule(placement, causal=True, window_size=window)
  seen = np.zeros((nc, nc), int)
  for i in range(n):
    for s in range(sched.shape[1]):
      mine, theirs = placement.shard_chunks(i), placement.shard_chunks((i - s) % n)
      for a in range(len(mine)):
        for b in range(len(theirs)):
          seen[mine[a], theirs[b]] += sched[i, s, a, b] != TileKind.SKIP
  # Dense truth: chunk pair (x, y) has a visible (row, key) pair.
  rows = np.arange(16 * n)[:, None]
  keys = np.arange(16 * n)[None, :]
  vis = keys <= rows
  if window is not None:
    vis &= keys > rows - window
  truth = vis.reshape(nc, c, nc, c).any(axis=(1, 3))
  np.testing.assert_array_equal(seen, truth.astype(int))


def test_merge_of_key_halves_equals_whole():
  (q, r, k, v), _ = _inputs(RingCase(1, t=24, hq=4, hkv=2))
  op = xla.ChunkPairOp(
    q_len=24,
    kv_len=12,
    group=2,
    causal=True,
    window_size=None,
    scale=0.25,
    block_sizes=BlockSizes.uniform(8, 4),
  )
  whole = xla.ChunkPairOp(
    q_len=24,
    kv_len=24,
    group=2,
    causal=True,
    window_size=None,
    scale=0.25,
    block_sizes=BlockSizes.uniform(8, 4),
  )
  q_, r_ = op.layout().q_blocks(q), op.layout().q_blocks(r)
  state0 = op.init_state(q_)
  halves = [
    op.fwd(
      state0,
      q_,
      r_,
      op.layout().kv_blocks(k[:, i : i + 12]),
      op.layout().kv_blocks(v[:, i : i + 12]),
      q_offset=-i,
    )
    for i in (0, 12)
  ]
  merged = tile_math.fwd_finalize(merge_fwd_states(*halves))
  full = tile_math.fwd_finalize(
    whole.fwd(state0, q_, r_, whole.layout().kv_blocks(k), whole.layout().kv_blocks(v), q_offset=0)
  )
  for x, y in zip(merged, full, strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  # Merging with an empty state (a row that saw nothing) changes nothing and makes no NaN.
  same = merge_fwd_states(state0, halves[0])
  for x, y in zip(same, halves[0], strict=True):
    np.testing.assert_array_equal(x, y)
  empty = merge_fwd_states(state0, state0)
  assert not any(np.isnan(np.asarray(x)).any() for x in tile_math.fwd_finalize(empty))


def test_chunk_pair_with_segment_ids():
  """Key halves with their own segment ids merge to the whole; a pair whose ids never match
  leaves the state empty (finalised to 0, no NaN)."""
  (q, r, k, v), _ = _inputs(RingCase(1, t=24, hq=4, hkv=2))
  seg = jnp.asarray(_segment_ids(2, 24))
  kw = dict(group=2, causal=True, window_size=7, scale=0.25, block_sizes=BlockSizes.uniform(8, 4))
  op = xla.ChunkPairOp(q_len=24, kv_len=12, **kw)
  whole = xla.ChunkPairOp(q_len=24, kv_len=24, **kw)
  q_, r_ = op.layout().q_blocks(q), op.layout().q_blocks(r)
  state0 = op.init_state(q_)
  halves = [
    op.fwd(
      state0,
      q_,
      r_,
      op.layout().kv_blocks(k[:, i : i + 12]),
      op.layout().kv_blocks(v[:, i : i + 12]),
      q_offset=-i,
      q_segment_ids=seg,
      kv_segment_ids=seg[:, i : i + 12],
    )
    for i in (0, 12)
  ]
  merged = tile_math.fwd_finalize(merge_fwd_states(*halves))
  full = tile_math.fwd_finalize(
    whole.fwd(
      state0,
      q_,
      r_,
      whole.layout().kv_blocks(k),
      whole.layout().kv_blocks(v),
      q_offset=0,
      q_segment_ids=seg,
      kv_segment_ids=seg,
    )
  )
  for x, y in zip(merged, full, strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  want = parallax_attention(
    q, r, k, v, scale=0.25, window_size=7, segment_ids=seg, implementation="xla"
  )
  np.testing.assert_allclose(op.layout().q_unblock(merged.o), want, rtol=2e-5, atol=2e-6)

  disjoint = op.fwd(
    state0,
    q_,
    r_,
    op.layout().kv_blocks(k[:, :12]),
    op.layout().kv_blocks(v[:, :12]),
    q_offset=0,
    q_segment_ids=seg,
    kv_segment_ids=seg[:, :12] + 100,
  )
  assert np.all(np.asarray(disjoint.m) == tile_math.NEG_INF)
  for x in tile_math.fwd_finalize(disjoint):  # o, barv, bart = 0; lse = -inf
    assert not np.isnan(np.asarray(x)).any()
  np.testing.assert_array_equal(tile_math.fwd_finalize(disjoint).o, 0.0)
  with pytest.raises(ValueError, match="together"):
    op.fwd(
      state0,
      q_,
      r_,
      op.layout().kv_blocks(k[:, :12]),
      op.layout().kv_blocks(v[:, :12]),
      0,
      seg,
      None,
    )
