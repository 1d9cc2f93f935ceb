"""Blockwise Parallax attention in plain JAX: the path that runs on every backend.

Forward: the online algorithm of docs/design.md §3.1 over key blocks, vectorised over query blocks,
never materialising ``Tq x Tk``. Backward: the closed form of docs/design.md §5.2, recomputing each
tile from the residuals. Memory is ``O(T * block_k)`` per head.

The loop is a static schedule: query block ``i`` visits key blocks
``first[i], first[i] + 1, ...`` (``MaskSpec.block_schedule``), so a sliding window costs
``O(T * W)``, not ``O(T^2)``. Every step gathers one key block per query block; causal
schedules still compute (and mask) the blocks above the diagonal of the shorter rows.

Layout inside: queries ``[B, Hkv, G, nQ, bq, D]`` (G = Hq // Hkv query heads per kv head, so
GQA never repeats K/V), keys ``[B, Hkv, nK, bk, D]``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from parallax_jax.attention import tile_math
from parallax_jax.attention.block_sizes import BlockSizes, check_for
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.masking import ChunkMask, MaskSpec, cdiv
from parallax_jax.attention.residuals import Residuals

# 128 x 128 tiles: large enough that the batched einsums dominate, small enough that the
# [B, H, nQ, bq, bk] score tiles of one loop step stay a fraction of the activations.
DEFAULT_BLOCK_SIZES = BlockSizes.uniform(128)


def check_block_sizes(block_sizes) -> None:
  """Raises NotImplementedError for block sizes this path cannot run."""
  if block_sizes is not None:
    check_for("xla", block_sizes, fused_backward=True)


def _precision(dtype):
  # fp32/fp64 inputs ask for full precision (TF32 / bf16 passes would break the fp32 contract);
  # bf16/fp16 operands are exact on the MXU / tensor cores anyway.
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else lax.Precision.DEFAULT


def _compute_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static blocking of one call."""

  mask: MaskSpec
  group: int
  bq: int
  bk: int

  @property
  def nq(self):
    return cdiv(self.mask.q_len, self.bq)

  @property
  def nk(self):
    return cdiv(self.mask.kv_len, self.bk)

  def q_blocks(self, x):
    """[B, Tq, Hq, D] -> [B, Hkv, G, nQ, bq, D] (zero padded)."""
    b, t, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, self.nq * self.bq - t), (0, 0), (0, 0)))
    x = x.reshape(b, self.nq, self.bq, h // self.group, self.group, d)
    return x.transpose(0, 3, 4, 1, 2, 5)

  def q_unblock(self, x):
    """[B, Hkv, G, nQ, bq, D] -> [B, Tq, Hq, D]."""
    b, hkv, g, nq, bq, d = x.shape
    x = x.transpose(0, 3, 4, 1, 2, 5).reshape(b, nq * bq, hkv * g, d)
    return x[:, : self.mask.q_len]

  def row_blocks(self, x, fill=0.0):
    """[B, Hq, Tq] -> [B, Hkv, G, nQ, bq]."""
    b, h, t = x.shape
    x = jnp.pad(x, ((0, 0), (0, 0), (0, self.nq * self.bq - t)), constant_values=fill)
    return x.reshape(b, h // self.group, self.group, self.nq, self.bq)

  def row_unblock(self, x):
    b, hkv, g, nq, bq = x.shape
    return x.reshape(b, hkv * g, nq * bq)[..., : self.mask.q_len]

  def kv_blocks(self, x):
    """[B, Tk, Hkv, D] -> [B, Hkv, nK, bk, D] (zero padded: padded keys stay finite)."""
    b, t, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, self.nk * self.bk - t), (0, 0), (0, 0)))
    return x.reshape(b, self.nk, self.bk, h, d).transpose(0, 3, 1, 2, 4)

  def kv_unblock(self, x):
    b, h, nk, bk, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, nk * bk, h, d)[:, : self.mask.kv_len]


class _Schedule:
  """Which key block each query block visits at loop step ``step``, and the tile's mask.

  ``layout.mask`` is a ``MaskSpec`` (static schedule) or a ``ChunkMask`` (schedule computed
  from the traced offset, trip count bounded statically). ``segment_ids`` ``[B, Tq]`` are the
  query rows' ids and ``kv_segment_ids`` ``[B, Tk]`` the keys' (default: ``segment_ids``, i.e.
  self-attention); segment ids only mask tiles, they never shorten the schedule.
  """

  def __init__(self, layout: _Layout, segment_ids, kv_segment_ids=None):
    self.layout = layout
    mask = layout.mask
    # A traced chunk offset (the ring) gets a traced schedule with a static trip-count bound.
    xp = np if isinstance(mask, MaskSpec) else jnp
    first, count, self.num_steps = mask.block_schedule(layout.bq, layout.bk, xp)
    self.first = jnp.asarray(first)
    self.count = jnp.asarray(count)
    self.rows = jnp.arange(layout.nq * layout.bq, dtype=jnp.int32).reshape(layout.nq, layout.bq)
    self.seg_q = self.seg_k = None
    if kv_segment_ids is None:
      kv_segment_ids = segment_ids
    if (segment_ids is None) != (kv_segment_ids is None):
      raise ValueError("query and key segment ids must be given together.")
    if segment_ids is not None:
      # Padding rows/keys get id 0; they are invisible anyway (out of range).
      pad_q = layout.nq * layout.bq - layout.mask.q_len
      pad_k = layout.nk * layout.bk - layout.mask.kv_len
      seg_q = segment_ids.astype(jnp.int32)
      seg_k = kv_segment_ids.astype(jnp.int32)
      self.seg_q = jnp.pad(seg_q, ((0, 0), (0, pad_q))).reshape(-1, layout.nq, layout.bq)
      self.seg_k = jnp.pad(seg_k, ((0, 0), (0, pad_k))).reshape(-1, layout.nk, layout.bk)

  def step(self, step):
    """-> (key block per query block [nQ], visible [B|1, 1, 1, nQ, bq, bk])."""
    lay = self.layout
    kb = jnp.clip(self.first + step, 0, lay.nk - 1)
    cols = kb[:, None] * lay.bk + jnp.arange(lay.bk, dtype=jnp.int32)  # [nQ, bk]
    seg_q = seg_k = None
    if self.seg_q is not None:
      seg_q = self.seg_q[:, :, :, None]
      seg_k = jnp.take(self.seg_k, kb, axis=1)[:, :, None, :]
    visible = lay.mask.visible(self.rows[:, :, None], cols[:, None, :], seg_q, seg_k)
    visible = visible & (step < self.count)[:, None, None]
    if visible.ndim == 3:
      visible = visible[None]
    return kb, visible[:, None, None]


def _dot(spec, x, y, precision, acc_dtype=jnp.float32):
  return jnp.einsum(spec, x, y, precision=precision, preferred_element_type=acc_dtype)


def _check(mask: MaskSpec, q):
  if q.shape[1] != mask.q_len:
    raise ValueError(f"mask.q_len={mask.q_len} does not match q's length {q.shape[1]}.")


def _fwd_loop(sched: _Schedule, q_, r_, k_, v_, state, *, scale: float, v_dtype):
  """Folds every key block of ``sched`` into the blocked online ``state``."""
  prec = _precision(q_.dtype)
  acc_dtype = _compute_dtype(q_.dtype)

  def body(step, state):
    kb, visible = sched.step(step)
    k_s = jnp.take(k_, kb, axis=2)  # [B, Hkv, nQ, bk, D]
    v_s = jnp.take(v_, kb, axis=2)
    s = scale * _dot("bhgqid,bhqjd->bhgqij", q_, k_s, prec, acc_dtype)
    t = _dot("bhgqid,bhqjd->bhgqij", r_, k_s, prec, acc_dtype)
    tile = tile_math.fwd_tile(s, t, visible, state.m)
    pv1 = _dot("bhgqij,bhqjd->bhgqid", tile.w.astype(v_dtype), v_s, prec, acc_dtype)
    pv2c = _dot("bhgqij,bhqjd->bhgqid", tile.w2c.astype(v_dtype), v_s, prec, acc_dtype)
    return tile_math.fwd_update(state, tile, pv1, pv2c)

  return lax.fori_loop(0, sched.num_steps, body, state)


class RowStats(NamedTuple):
  """Per-row statistics the backward needs, blocked ``[B, Hkv, G, nQ, bq]`` (compute dtype)."""

  lse: jnp.ndarray
  bart: jnp.ndarray
  delta_o: jnp.ndarray  # dO . o
  b: jnp.ndarray  # dO . barv


def _bwd_loop(sched: _Schedule, q_, r_, do_, rows: RowStats, k_, v_, carry, *, scale: float):
  """Adds the gradient contributions of every tile of ``sched`` to ``carry``.

  ``carry = (dq, dr, dk, dv)`` blocked, compute dtype; the tiles are exact given the global
  row statistics ``rows`` (docs/design.md §5.4), so carries of disjoint key sets simply add up.
  """
  prec = _precision(q_.dtype)
  acc_dtype = _compute_dtype(q_.dtype)
  dtype = q_.dtype

  def body(step, carry):
    dq, dr, dk, dv = carry
    kb, visible = sched.step(step)
    k_s = jnp.take(k_, kb, axis=2)
    v_s = jnp.take(v_, kb, axis=2)
    s = scale * _dot("bhgqid,bhqjd->bhgqij", q_, k_s, prec, acc_dtype)
    t = _dot("bhgqid,bhqjd->bhgqij", r_, k_s, prec, acc_dtype)
    a = _dot("bhgqid,bhqjd->bhgqij", do_, v_s, prec, acc_dtype)
    tile = tile_math.bwd_tile(s, t, visible, rows.lse, rows.bart, a, rows.delta_o, rows.b)
    gl = (scale * tile.gl).astype(dtype)
    gu = tile.gu.astype(dtype)
    pw = tile.pw.astype(dtype)
    dq = dq + _dot("bhgqij,bhqjd->bhgqid", gl, k_s, prec, acc_dtype)
    dr = dr + _dot("bhgqij,bhqjd->bhgqid", gu, k_s, prec, acc_dtype)
    dk_s = _dot("bhgqij,bhgqid->bhqjd", gl, q_, prec, acc_dtype) + _dot(
      "bhgqij,bhgqid->bhqjd", gu, r_, prec, acc_dtype
    )
    dv_s = _dot("bhgqij,bhgqid->bhqjd", pw, do_, prec, acc_dtype)
    # Several query blocks may visit the same key block in one step: scatter-add sums them.
    dk = dk.at[:, :, kb].add(dk_s)
    dv = dv.at[:, :, kb].add(dv_s)
    return dq, dr, dk, dv

  return lax.fori_loop(0, sched.num_steps, body, carry)


def _row_products(do, residuals: Residuals):
  """``(dO . o, dO . barv)`` per row, ``[B, Hq, Tq]``."""
  delta_o, b_row = tile_math.bwd_row_stats(do, residuals.o, residuals.barv)
  return jnp.swapaxes(delta_o, 1, 2), jnp.swapaxes(b_row, 1, 2)


def _layout(mask, q, k, block_sizes, pass_name: str) -> _Layout:
  check_block_sizes(block_sizes)
  tile = getattr(block_sizes or DEFAULT_BLOCK_SIZES, pass_name)
  return _Layout(
    mask, q.shape[2] // k.shape[2], min(tile.block_q, mask.q_len), min(tile.block_k, mask.kv_len)
  )


def parallax_fwd(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"],
  k: Float[Array, "B Tk Hkv D"],
  v: Float[Array, "B Tk Hkv D"],
  segment_ids: Int[Array, "B T"] | None = None,
  *,
  scale: float,
  mask: MaskSpec,
  block_sizes: BlockSizes | None = None,
) -> tuple[Float[Array, "B Tq Hq D"], Residuals]:
  """Forward pass: ``(o, Residuals)``; o in q's dtype (see ``Residuals`` for the rest).

  Inputs are assumed validated (``parallax_attention`` does that). Matmul operands stay in the
  input dtype with float32 accumulation; the running state is float32.
  """
  _check(mask, q)
  lay = _layout(mask, q, k, block_sizes, "fwd")
  sched = _Schedule(lay, segment_ids)
  q_, r_ = lay.q_blocks(q), lay.q_blocks(r)
  k_, v_ = lay.kv_blocks(k), lay.kv_blocks(v)
  b, hkv, g, nq, bq, d = q_.shape
  state = tile_math.fwd_init((b, hkv, g, nq, bq), d, _compute_dtype(q.dtype))
  state = _fwd_loop(sched, q_, r_, k_, v_, state, scale=scale, v_dtype=v.dtype)
  res = tile_math.fwd_finalize(state)
  o = lay.q_unblock(res.o).astype(q.dtype)
  residuals = Residuals(
    o=o,
    barv=lay.q_unblock(res.barv).astype(q.dtype),
    lse=lay.row_unblock(res.lse),
    bart=lay.row_unblock(res.bart),
  )
  return o, residuals


def parallax_bwd(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"],
  k: Float[Array, "B Tk Hkv D"],
  v: Float[Array, "B Tk Hkv D"],
  segment_ids: Int[Array, "B T"] | None,
  residuals: Residuals,
  do: Float[Array, "B Tq Hq D"],
  *,
  scale: float,
  mask: MaskSpec,
  block_sizes: BlockSizes | None = None,
):
  """Backward pass: ``(dq, dr, dk, dv)`` in the dtypes of (q, r, k, v).

  Recomputes every tile from ``residuals`` (closed form of docs/design.md §5.2). dk/dv of a GQA
  group are accumulated over its query heads in float32, never materialised per query head.
  """
  _check(mask, q)
  lay = _layout(mask, q, k, block_sizes, "dq")
  sched = _Schedule(lay, segment_ids)
  acc_dtype = _compute_dtype(q.dtype)
  do = do.astype(q.dtype)
  delta_o, b_row = _row_products(do, residuals)
  q_, r_, do_ = lay.q_blocks(q), lay.q_blocks(r), lay.q_blocks(do)
  k_, v_ = lay.kv_blocks(k), lay.kv_blocks(v)
  rows = RowStats(
    lse=lay.row_blocks(residuals.lse.astype(acc_dtype)),
    bart=lay.row_blocks(residuals.bart.astype(acc_dtype)),
    delta_o=lay.row_blocks(delta_o),
    b=lay.row_blocks(b_row),
  )
  zeros_q = jnp.zeros(q_.shape, acc_dtype)
  zeros_k = jnp.zeros(k_.shape, acc_dtype)
  dq, dr, dk, dv = _bwd_loop(
    sched, q_, r_, do_, rows, k_, v_, (zeros_q, zeros_q, zeros_k, zeros_k), scale=scale
  )
  return (
    lay.q_unblock(dq).astype(q.dtype),
    lay.q_unblock(dr).astype(r.dtype),
    lay.kv_unblock(dk).astype(k.dtype),
    lay.kv_unblock(dv).astype(v.dtype),
  )


@dataclasses.dataclass(frozen=True)
class ChunkPairOp:
  """Blockwise Parallax of a query chunk against a key chunk at a traced relative position.

  The building block of context parallelism (``context_parallel``): the forward folds one key
  chunk into an un-normalised online state (``tile_math.FwdState``), the backward adds one key
  chunk's exact gradient contributions given the *global* row statistics. Arrays stay in the
  blocked layout of this module (convert once with ``layout()``'s ``*_blocks`` / ``*_unblock``):
  queries ``[B, Hkv, G, nQ, bq, D]``, row statistics ``[B, Hkv, G, nQ, bq]``, keys
  ``[B, Hkv, nK, bk, D]``.

  ``q_offset`` (int32 scalar, may be traced) is the absolute position of query row 0 minus that
  of key 0; the mask is ``MaskSpec``'s (causal: ``key <= row + q_offset``; window ``W``:
  ``key > row + q_offset - W``). With a window the loop visits only the key blocks a query block
  can see (static bound); pairs with no visible key still run their loop (skip them outside).

  Packed sequences: ``q_segment_ids`` ``[B, q_len]`` (the query chunk's ids) and
  ``kv_segment_ids`` ``[B, kv_len]`` (the key chunk's), ints in natural (unblocked) layout, both
  or neither; a query then also needs ``q_seg == k_seg``. A row that sees no key of the chunk
  keeps its state unchanged (``m = -inf`` if it saw nothing yet), never NaN.
  """

  q_len: int
  kv_len: int
  group: int
  causal: bool
  window_size: int | None
  scale: float
  block_sizes: BlockSizes | None = None

  def layout(self, q_offset=0) -> _Layout:
    """The blocked layout of this pair (``q_blocks``, ``kv_blocks``, ``row_blocks`` and their
    inverses convert arrays once; the offset only matters to the schedule)."""
    bs = self.block_sizes or DEFAULT_BLOCK_SIZES
    check_block_sizes(bs)
    if bs.fwd != bs.dq:  # the ring blocks each chunk once for its forward and backward
      raise NotImplementedError(
        "ring attention uses one tile for all passes: pass BlockSizes.uniform(block_q, block_k)."
      )
    tile = bs.fwd
    mask = ChunkMask(self.q_len, self.kv_len, self.causal, self.window_size, q_offset)
    return _Layout(mask, self.group, min(tile.block_q, self.q_len), min(tile.block_k, self.kv_len))

  def init_state(self, q_) -> tile_math.FwdState:
    """Empty online state for blocked queries ``q_``."""
    return tile_math.fwd_init(q_.shape[:-1], q_.shape[-1], _compute_dtype(q_.dtype))

  def _schedule(self, q_offset, q_segment_ids, kv_segment_ids) -> _Schedule:
    if (q_segment_ids is None) != (kv_segment_ids is None):
      raise ValueError("q_segment_ids and kv_segment_ids must be given together.")
    lay = self.layout(jnp.asarray(q_offset, jnp.int32))
    return _Schedule(lay, q_segment_ids, kv_segment_ids)

  def fwd(
    self, state, q_, r_, k_, v_, q_offset, q_segment_ids=None, kv_segment_ids=None
  ) -> tile_math.FwdState:
    """``state`` with the key chunk ``(k_, v_)`` folded in."""
    sched = self._schedule(q_offset, q_segment_ids, kv_segment_ids)
    return _fwd_loop(sched, q_, r_, k_, v_, state, scale=self.scale, v_dtype=v_.dtype)

  def row_stats(self, residuals: Residuals, do) -> RowStats:
    """Blocked backward row statistics from (natural-layout) residuals of these rows."""
    acc_dtype = _compute_dtype(do.dtype)
    delta_o, b_row = _row_products(do, residuals)
    lay = self.layout()
    return RowStats(
      lse=lay.row_blocks(residuals.lse.astype(acc_dtype)),
      bart=lay.row_blocks(residuals.bart.astype(acc_dtype)),
      delta_o=lay.row_blocks(delta_o),
      b=lay.row_blocks(b_row),
    )

  def bwd(
    self,
    carry,
    q_,
    r_,
    do_,
    rows: RowStats,
    k_,
    v_,
    q_offset,
    q_segment_ids=None,
    kv_segment_ids=None,
  ):
    """``carry = (dq, dr, dk, dv)`` (blocked, compute dtype) plus this key chunk's part."""
    sched = self._schedule(q_offset, q_segment_ids, kv_segment_ids)
    return _bwd_loop(sched, q_, r_, do_, rows, k_, v_, carry, scale=self.scale)


def _impl_fwd(q, r, k, v, segment_ids, spec):
  return parallax_fwd(
    q, r, k, v, segment_ids, scale=spec.scale, mask=spec.mask, block_sizes=spec.block_sizes
  )


def _impl_bwd(q, r, k, v, segment_ids, residuals, do, spec):
  return parallax_bwd(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    do,
    scale=spec.scale,
    mask=spec.mask,
    block_sizes=spec.block_sizes,
  )


IMPLEMENTATION = Implementation(
  name="xla",
  fwd=_impl_fwd,
  bwd=_impl_bwd,
  platforms=("cpu", "gpu", "tpu"),
  check=lambda spec: check_block_sizes(spec.block_sizes),
)
