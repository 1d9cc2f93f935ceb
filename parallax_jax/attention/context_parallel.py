"""Context parallelism for Parallax attention: ring attention over a sharded sequence.

``ring_parallax_attention(q, r, k, v, mesh=..., axis_name="sequence")`` computes exactly what
``parallax_attention(q, r, k, v, causal=..., window_size=..., segment_ids=...)`` computes
(self-attention, ``Tq == Tk == T``), with the sequence axis sharded over the ``n`` devices of
mesh axis ``axis_name``. No device ever holds more than its own chunks plus one visiting K/V
shard.

Shapes and layout
-----------------
``q, r``: ``[B, T, Hq, D]``; ``k, v``: ``[B, T, Hkv, D]`` (GQA: ``Hq`` a multiple of ``Hkv``,
K/V never repeated); the output ``[B, T, Hq, D]`` in q's dtype. The sequence axis is in the
*layout* of ``ring_state.Placement``:

* ``load_balance=False``: natural order, shard ``i`` holds positions ``[i T/n, (i+1) T/n)``;
* ``load_balance=True`` (default, causal only): the **zigzag** layout. ``T`` is cut into
  ``2n`` chunks and shard ``i`` holds chunks ``i`` and ``2n-1-i``, so every shard does the same
  causal work. Inputs, output and gradients are all in this layout: convert with
  ``to_zigzag`` / ``from_zigzag`` (or keep the whole network in zigzag order, which is free
  for token-wise layers; give RoPE ``zigzag_positions(T, n)``). Needs ``T % 2n == 0``.

Without a causal mask the result does not depend on the order, so ``load_balance`` is ignored
(no chunk split) and any layout the caller uses comes back the same. ``batch_axes`` /
``head_axis`` shard the batch and head axes over further mesh axes (each device computes its
own batch/head slice; ``Hkv`` must be divisible by the head axis size). Mesh axes named
nowhere replicate the computation.

Packed sequences: ``segment_ids`` ``[B, T]`` ints are in the same layout as q (zigzag:
``to_zigzag(segment_ids, n)``) and sharded like it (batch and sequence axes, replicated over
the head axis). A query sees only keys of its own segment, on top of causal/window; rows that
see no key give 0, never NaN.

Algorithm (forward)
-------------------
Inside ``jax.shard_map`` every device keeps its query chunk(s) and starts with its own K/V
chunk(s). At ring step ``s = 0..S-1`` it holds the K/V of shard ``i - s`` and folds every
(query chunk, key chunk) pair into the un-normalised online state of that query chunk
(``tile_math.FwdState``: running max ``m``, ``d1 = sum w``, ``d2 = sum w t``,
``acc1 = sum w v``, ``acc2 = sum w t v``) with ``xla.ChunkPairOp``, the blockwise loop of the
"xla" path at a traced relative position; then K/V move one step around the ring
(``lax.ppermute`` ``i -> i + 1``); the keys' segment ids travel with them, the queries' stay
put. Threading one state through the pairs is the split-K merge
(``ring_state.merge_fwd_states``) done tile by tile, so the result is exact. Pairs are
classified from their chunk positions (``masking.chunk_pair_kind``): ``SKIP`` pairs (in the future,
or entirely left of every window) are skipped with ``lax.cond``; the others run the masked
loop with absolute positions (a window's loop visits only the key blocks it can see).
Segment ids cannot make a pair skippable statically; a pair is also skipped (at run time)
when, in every local batch row, the id ranges of its query and key chunks are disjoint
(common for packed documents, exact for any ids: no id can match).
``tile_math.fwd_finalize`` gives ``o`` and the residuals ``(o, barv, lse, bart)``, sharded
along ``T`` like the inputs.

Algorithm (backward, ``jax.custom_vjp`` around the two ``shard_map``\\ s)
----------------------------------------------------------------------
The closed form of docs/design.md §5.2 is exact per tile given the *global* row statistics
``lse``, ``bart``, ``dO.o`` and ``dO.barv``, all of which are local to the query's device.
So each device replays the same ring: it recomputes the tiles of its queries against each
visiting K/V chunk, accumulates ``dq``, ``dr`` locally, and adds the chunk's ``dk``, ``dv``
into float32 buffers that travel with the K/V (and the keys' segment ids). After the last step
one more ``ppermute`` returns every buffer to its owner.

Ring length ``S`` is ``n``, except for a contiguous placement with a window, which stops once
the visiting chunk is left of every window (``ring_state.num_ring_steps``: about
``1 + W / C`` steps, ``C = T / n``); the dk/dv buffers then jump home in one ``ppermute``.

With ``n == 1`` (or a mesh without ``axis_name``'s devices to spread over) the op is called
directly (``parallax_attention``, inside a ``shard_map`` over the batch/head axes if any).

Limitations: self-attention only (``Tq == Tk``); per-pair compute is the "xla" blockwise path
(no Pallas kernel yet); communication is not explicitly overlapped with compute (XLA may
schedule the ``ppermute`` early); zigzag with a window runs the full ring.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from parallax_jax.attention import ring_state, tile_math
from parallax_jax.attention.api import parallax_attention
from parallax_jax.attention.block_sizes import BlockSizes
from parallax_jax.attention.masking import TileKind, chunk_pair_kind
from parallax_jax.attention.residuals import Residuals
from parallax_jax.attention.ring_state import (
  Placement,
  from_zigzag,
  merge_fwd_states,
  to_zigzag,
  zigzag_positions,
)
from parallax_jax.attention.sharded import shard_over_batch_and_heads
from parallax_jax.attention.validation import validate
from parallax_jax.attention.xla import ChunkPairOp

__all__ = [
  "Placement",
  "from_zigzag",
  "merge_fwd_states",
  "ring_parallax_attention",
  "to_zigzag",
  "zigzag_positions",
]


def _axes_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


@dataclasses.dataclass(frozen=True)
class _Ring:
  """Static facts of one ring call (hashable: the custom_vjp's static argument)."""

  mesh: Mesh
  axis_name: str
  batch_axes: tuple[str, ...]
  head_axis: str | None
  placement: Placement
  op: ChunkPairOp
  causal: bool
  window_size: int | None

  @property
  def n(self) -> int:
    return self.placement.num_shards

  @property
  def steps(self) -> int:
    return ring_state.num_ring_steps(
      self.placement, causal=self.causal, window_size=self.window_size
    )

  @property
  def x_spec(self):  # [B, T, H, D]
    return P(self.batch_axes or None, self.axis_name, self.head_axis, None)

  @property
  def row_spec(self):  # [B, H, T]
    return P(self.batch_axes or None, self.head_axis, self.axis_name)

  @property
  def seg_spec(self):  # [B, T]
    return P(self.batch_axes or None, self.axis_name)

  def _shard_map(self, f, in_specs, out_specs):
    return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  # ---- per-device pieces --------------------------------------------------------------------

  def _split(self, x, axis=1):
    return jnp.split(x, self.placement.chunks_per_shard, axis=axis)

  def _split_seg(self, seg):
    """Per local chunk: the chunk's ``[B, C]`` segment ids, or ``None`` without segments."""
    if seg is None:
      return (None,) * self.placement.chunks_per_shard
    return tuple(self._split(seg))

  def _fold(self, kind, seg_q, seg_k, fn, carry):
    """``fn(carry)``, skipped (``carry`` unchanged) when the pair has no visible key.

    Statically: ``kind`` (a traced ``TileKind``, causal only). Dynamically,
    with segment ids: when, in every batch row, the id ranges of the query chunk and the key
    chunk are disjoint (no id can match). Either way the skipped tiles contribute exactly 0.
    """
    live = None
    if self.causal:
      live = kind != TileKind.SKIP
    if seg_q is not None:
      overlap = (seg_q.min(axis=1) <= seg_k.max(axis=1)) & (seg_k.min(axis=1) <= seg_q.max(axis=1))
      live = overlap.any() if live is None else live & overlap.any()
    if live is None:
      return fn(carry)
    return lax.cond(live, fn, lambda c: c, carry)

  def _pairs(self, step):
    """``(a, b, kind, q_offset)`` for the pairs this device meets at ``step`` (traced)."""
    pl = self.placement
    me = lax.axis_index(self.axis_name)
    mine = pl.shard_chunks(me)
    theirs = pl.shard_chunks((me - step) % self.n)
    for a, qc in enumerate(mine):
      for b, kc in enumerate(theirs):
        kind = chunk_pair_kind(
          qc * pl.chunk_len,
          kc * pl.chunk_len,
          pl.chunk_len,
          causal=self.causal,
          window_size=self.window_size,
          xp=jnp,
        )
        yield a, b, kind, ((qc - kc) * pl.chunk_len).astype(jnp.int32)

  def _ring_loop(self, compute, carry, travel):
    """Runs ``carry, travel = compute(step, carry, travel)`` for every ring step, moving
    ``travel`` one shard along the ring (``i -> i + 1``) in between: ``steps - 1`` moves."""
    shift = [(j, (j + 1) % self.n) for j in range(self.n)]

    def body(step, c):
      carry, travel = compute(step, *c)
      return carry, lax.ppermute(travel, self.axis_name, shift)

    carry, travel = lax.fori_loop(0, self.steps - 1, body, (carry, travel))
    return compute(self.steps - 1, carry, travel)

  def _kv_chunks(self, k, v, seg):
    """The travelling part of this shard: per chunk ``(k_, v_, segment ids or None)``."""
    lay = self.op.layout()
    return tuple(
      (lay.kv_blocks(kb), lay.kv_blocks(vb), sb)
      for kb, vb, sb in zip(self._split(k), self._split(v), self._split_seg(seg), strict=True)
    )

  def _fwd_local(self, q, r, k, v, seg=None):
    op = self.op
    lay = op.layout()
    qs = [
      (lay.q_blocks(qa), lay.q_blocks(ra))
      for qa, ra in zip(self._split(q), self._split(r), strict=True)
    ]
    seg_q = self._split_seg(seg)  # the queries' ids stay here
    kv = self._kv_chunks(k, v, seg)  # the keys' ids travel with their K/V

    def compute(step, states, kv):
      states = list(states)
      for a, b, kind, offset in self._pairs(step):
        k_, v_, seg_k = kv[b]
        fold = functools.partial(
          op.fwd,
          q_=qs[a][0],
          r_=qs[a][1],
          k_=k_,
          v_=v_,
          q_offset=offset,
          q_segment_ids=seg_q[a],
          kv_segment_ids=seg_k,
        )
        states[a] = self._fold(kind, seg_q[a], seg_k, fold, states[a])
      return tuple(states), kv

    states = tuple(op.init_state(q_) for q_, _ in qs)
    states, _ = self._ring_loop(compute, states, kv)
    res = [tile_math.fwd_finalize(st) for st in states]
    cat = lambda xs: jnp.concatenate(xs, axis=1)
    o = cat([lay.q_unblock(x.o) for x in res]).astype(q.dtype)
    residuals = Residuals(
      o=o,
      barv=cat([lay.q_unblock(x.barv) for x in res]).astype(q.dtype),
      lse=jnp.concatenate([lay.row_unblock(x.lse) for x in res], axis=2),
      bart=jnp.concatenate([lay.row_unblock(x.bart) for x in res], axis=2),
    )
    return o, residuals

  def _bwd_local(self, q, r, k, v, residuals, do, seg=None):
    op = self.op
    lay = op.layout()
    do = do.astype(q.dtype)
    rows, qs = [], []
    for qa, ra, doa, oa, bva, lsea, bta in zip(
      self._split(q),
      self._split(r),
      self._split(do),
      self._split(residuals.o),
      self._split(residuals.barv),
      self._split(residuals.lse, 2),
      self._split(residuals.bart, 2),
      strict=True,
    ):
      qs.append((lay.q_blocks(qa), lay.q_blocks(ra), lay.q_blocks(doa)))
      rows.append(op.row_stats(Residuals(oa, bva, lsea, bta), doa))
    seg_q = self._split_seg(seg)
    kv = self._kv_chunks(k, v, seg)
    acc = jnp.promote_types(q.dtype, jnp.float32)
    dqr = tuple((jnp.zeros(q_.shape, acc), jnp.zeros(q_.shape, acc)) for q_, _, _ in qs)
    dkv = tuple((jnp.zeros(k_.shape, acc), jnp.zeros(k_.shape, acc)) for k_, _, _ in kv)

    def compute(step, dqr, travel):
      kv, dkv = travel
      dqr, dkv = [list(x) for x in dqr], [list(x) for x in dkv]
      for a, b, kind, offset in self._pairs(step):
        q_, r_, do_ = qs[a]
        k_, v_, seg_k = kv[b]
        add = functools.partial(
          op.bwd,
          q_=q_,
          r_=r_,
          do_=do_,
          rows=rows[a],
          k_=k_,
          v_=v_,
          q_offset=offset,
          q_segment_ids=seg_q[a],
          kv_segment_ids=seg_k,
        )
        carry = self._fold(kind, seg_q[a], seg_k, add, (*dqr[a], *dkv[b]))
        dqr[a], dkv[b] = list(carry[:2]), list(carry[2:])
      # dk/dv (and the keys' segment ids) travel with their K/V.
      return tuple(map(tuple, dqr)), (kv, tuple(map(tuple, dkv)))

    dqr, (_, dkv) = self._ring_loop(compute, dqr, (kv, dkv))
    # The buffers of shard j now sit on shard j + steps - 1: send them home.
    back = self.steps - 1
    if back % self.n:
      dkv = lax.ppermute(dkv, self.axis_name, [(j, (j - back) % self.n) for j in range(self.n)])

    cat = lambda xs: jnp.concatenate(xs, axis=1)
    dq = cat([lay.q_unblock(x[0]) for x in dqr]).astype(q.dtype)
    dr = cat([lay.q_unblock(x[1]) for x in dqr]).astype(r.dtype)
    dk = cat([lay.kv_unblock(x[0]) for x in dkv]).astype(k.dtype)
    dv = cat([lay.kv_unblock(x[1]) for x in dkv]).astype(v.dtype)
    return dq, dr, dk, dv

  # ---- global (shard_map) pieces -------------------------------------------------------------

  def fwd(self, q, r, k, v, seg=None):
    x, rows = self.x_spec, self.row_spec
    args, in_specs = (q, r, k, v), (x, x, x, x)
    if seg is not None:
      args, in_specs = (*args, seg), (*in_specs, self.seg_spec)
    return self._shard_map(
      self._fwd_local, in_specs=in_specs, out_specs=(x, Residuals(x, x, rows, rows))
    )(*args)

  def bwd(self, q, r, k, v, residuals, do, seg=None):
    x, rows = self.x_spec, self.row_spec
    args, in_specs = (q, r, k, v, residuals, do), (x, x, x, x, Residuals(x, x, rows, rows), x)
    if seg is not None:
      args, in_specs = (*args, seg), (*in_specs, self.seg_spec)
    return self._shard_map(self._bwd_local, in_specs=in_specs, out_specs=(x, x, x, x))(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_attention(ring: _Ring, q, r, k, v, segment_ids):
  return ring.fwd(q, r, k, v, segment_ids)[0]


def _ring_attention_fwd(ring, q, r, k, v, segment_ids):
  o, residuals = ring.fwd(q, r, k, v, segment_ids)
  return o, (q, r, k, v, segment_ids, residuals)


def _ring_attention_bwd(ring, saved, do):
  q, r, k, v, segment_ids, residuals = saved
  return (*ring.bwd(q, r, k, v, residuals, do, segment_ids), None)


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def _check_mesh(mesh, axis_name, batch_axes, head_axis, batch, hkv):
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
  names = tuple(mesh.axis_names)
  used = (axis_name, *batch_axes, *((head_axis,) if head_axis is not None else ()))
  for a in used:
    if a not in names:
      raise ValueError(f"mesh axis {a!r} is not in the mesh axes {names}.")
  if len(set(used)) != len(used):
    raise ValueError(f"axis_name, batch_axes and head_axis must be distinct mesh axes, got {used}.")
  batch_shards = math.prod(mesh.shape[a] for a in batch_axes)
  if batch % batch_shards:
    raise ValueError(
      f"the batch size {batch} must be divisible by the batch_axes {batch_axes} "
      f"size {batch_shards}."
    )
  if head_axis is not None and hkv % mesh.shape[head_axis]:
    raise ValueError(
      f"the number of kv heads {hkv} must be divisible by the head_axis "
      f"{head_axis!r} size {mesh.shape[head_axis]}."
    )


def ring_parallax_attention(
  q,
  r,
  k,
  v,
  *,
  mesh: Mesh,
  axis_name: str = "sequence",
  scale: float | None = None,
  causal: bool = True,
  window_size: int | None = None,
  load_balance: bool = True,
  batch_axes: str | tuple[str, ...] | None = None,
  head_axis: str | None = None,
  block_sizes: BlockSizes | None = None,
  segment_ids=None,
):
  """Parallax self-attention with the sequence sharded over ``mesh`` axis ``axis_name``.

  Equals ``parallax_attention(q, r, k, v, scale=scale, causal=causal,
  window_size=window_size, segment_ids=segment_ids)`` (forward and all four gradients) with
  the sequence axis in the layout described in the module docstring (zigzag when
  ``load_balance`` and ``causal``).

  Args:
    q, r: ``[B, T, Hq, D]``; k, v: ``[B, T, Hkv, D]``; one float dtype.
    mesh: a ``jax.sharding.Mesh`` containing ``axis_name`` (and the batch/head axes).
    axis_name: the mesh axis the sequence is sharded over (``n`` devices; ``T`` divisible by
      ``2n`` with load balancing, else by ``n``).
    scale, causal, window_size: as in ``parallax_attention``.
    load_balance: zigzag layout (causal only; see module docstring).
    batch_axes: mesh axis name(s) the batch axis is sharded over.
    head_axis: mesh axis the head axes (Hq and Hkv) are sharded over.
    block_sizes: ``BlockSizes.uniform(bq, bk)`` of the per-chunk blockwise loops (clipped to
      the chunk).
    segment_ids: ``[B, T]`` ints or None, in the same layout and sharding as q (in zigzag
      layout pass ``to_zigzag(segment_ids, n)``): a query sees only keys with its id (packed
      documents), on top of causal/window. Rows that see no key give 0. Not differentiated.

  Returns:
    ``[B, T, Hq, D]`` in q's dtype, same layout and sharding as q.
  """
  spec = validate(
    q,
    r,
    k,
    v,
    scale=scale,
    causal=causal,
    window_size=window_size,
    segment_ids=segment_ids,
    interpret=False,
    block_sizes=block_sizes,
  )
  if spec.mask.q_len != spec.mask.kv_len:
    raise ValueError(
      f"ring_parallax_attention is self-attention: q and k must have the same "
      f"length, got Tq={spec.mask.q_len}, Tk={spec.mask.kv_len}."
    )
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise TypeError(f"block_sizes must be BlockSizes or None, got {type(block_sizes).__name__}.")
  if not isinstance(load_balance, bool):
    raise TypeError(f"load_balance must be a bool, got {load_balance!r}.")
  batch_axes = _axes_tuple(batch_axes)
  _check_mesh(mesh, axis_name, batch_axes, head_axis, spec.batch, spec.num_kv_heads)
  n = mesh.shape[axis_name]
  causal, window_size = spec.mask.causal, spec.mask.window_size

  if n == 1:  # Nothing to pass around: the op itself, per batch/head shard.
    call = functools.partial(
      parallax_attention,
      scale=spec.scale,
      causal=causal,
      window_size=window_size,
      block_sizes=block_sizes,
      implementation="xla" if block_sizes is not None else None,
    )
    if not batch_axes and head_axis is None:
      return call(q, r, k, v, segment_ids=segment_ids)
    return shard_over_batch_and_heads(
      lambda q, r, k, v, seg: call(q, r, k, v, segment_ids=seg),
      q,
      r,
      k,
      v,
      segment_ids,
      mesh=mesh,
      batch_axes=batch_axes or None,
      q_head_axes=head_axis,
      kv_head_axes=head_axis,
    )

  placement = Placement(spec.mask.q_len, n, load_balance=load_balance and causal)
  c = placement.chunk_len
  op = ChunkPairOp(
    q_len=c,
    kv_len=c,
    group=spec.group,
    causal=causal,
    window_size=window_size,
    scale=spec.scale,
    block_sizes=block_sizes,
  )
  ring = _Ring(
    mesh=mesh,
    axis_name=axis_name,
    batch_axes=batch_axes,
    head_axis=head_axis,
    placement=placement,
    op=op,
    causal=causal,
    window_size=window_size,
  )
  return _ring_attention(ring, q, r, k, v, segment_ids)
