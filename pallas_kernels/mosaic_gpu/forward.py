"""Forward Mosaic GPU (Hopper) kernel: warp-specialised, TMA-fed, wgmma-based.

Structure after jax's FlashAttention-3 kernel (``attention_mgpu``): one CTA per (query block of
``2 x 64`` rows, query head, batch), three warpgroups:

* the producer (warpgroup 2, ``producer_registers`` = 24 registers) TMA-loads K and V tiles of
  the CTA's key-block range into a ring of ``num_stages`` SMEM slots (a "loaded" barrier per
  slot and tensor, a "free" barrier per slot that both consumers arrive on);
* two consumers (warpgroups 0 and 1, 240 registers: the rest of the SM's) each own 64 query
  rows, with their Q and R rows in SMEM. Per K tile: two wgmmas on the same SMEM tile,
  ``S = Q K^T`` and ``T = R K^T``; the base-2 tile math of docs/design.md §3.4 in registers;
  two PV wgmmas with register operands, ``acc1 += W V`` and ``accb += W2c V``. A schedule
  barrier alternates the two consumers between tensor-core work and exp/reduction work, as in
  FA3.

Masks: the producer streams the CTA's blocks ``[lo, hi)`` of ``MaskSpec.key_blocks`` (128 rows);
each consumer takes its own 64-row ranges from the same rule, runs its FULL tiles without an
index mask and its MASKED border tiles with ``MaskSpec.visible`` (docs/design.md §2.3), and
only waits on and frees the ring slots of the CTA blocks it does not see (every consumer must
observe every barrier phase). Segment ids are
tested on every tile (``MaskSpec``: never scheduled). Rows that see no key end with
``o = barv = 0``, ``bart = 0``, ``lse = -inf`` (the residual contract).

Re-centred W2 (here with ``centre="running"``; the default is below). The Triton kernel rounds
``w (t - c_tile)`` and adds ``c_tile (W V)`` back in float32 (docs/design.md §3.2), which needs
``W V`` of each tile on its own. A wgmma accumulates in place, so this kernel keeps
``accb = acc2 - c acc1`` instead, with ``c = d2 / d1`` the running weighted mean of ``t`` (the
current ``bart``). When a tile moves ``c`` from ``c_old`` to ``c_new``,
``accb <- alpha accb - (c_new - c_old) alpha acc1`` in float32 and the PV operand is
``w (t - c_new)``: exact in exact arithmetic, and the rounded operand is of the size of the
spread of ``t`` about its running mean, not of ``t`` itself. At the end ``c = bart``,
so ``o = barv - accb / d1``.

Two switches trim the per-tile vector work, which leaves the tensor cores idle part of the time
(docs/design.md §5.6). Both are exact in exact arithmetic and both are on by default: measured on
the H200 (``experiments/bench_fwd_math.py``), together they take 8-9% off the forward at
D = 128 and 6% at D = 64; ``fma_scores=False, centre="running"`` is the earlier tile math.
``fma_scores`` keeps the row max in raw score units, so a score's exponent
``exp2(c2 s - c2 m)`` is one FFMA instead of a multiply whose product the max also reads plus a
subtraction, and forms ``w (t - c)`` as ``w t - w c``, one FFMA on the product the row sum
``d2`` needs anyway. ``centre="first"`` fixes ``c`` at the mean over the first tile a row sees
(``acc1`` and ``accb`` are still zero then), which drops the per-tile correction of ``accb`` (a
multiply-add over the whole accumulator) and leaves ``o = barv - accb / d1 + (bart - c) barv``
at the end; the rounded operand then spreads about that first mean rather than the running one
(docs/design.md §3.5 has the measured cost in bf16: 1-2% more RMS error than the running
centre on ordinary inputs, 15-32% when ``t`` drifts steadily along the keys).

Block sizes and registers: a consumer holds two ``64 x D`` float32 accumulators (64 registers
per thread each at D = 128) plus the ``64 x block_k`` float32 tiles S and T (32 registers each at
block_k = 64) and the half-precision W and W2c (16 each), close to the 240-register budget of a
consumer warpgroup.
block_k = 64 is therefore the default (block_k = 128 would double the score tiles and spill at
D = 128; at D = 64 it may fit: measure). ``num_stages`` K/V slots cost ``2 * block_k * D * 2``
bytes each, Q and R ``2 * 2 * 64 * D * 2`` bytes (``common.fwd_smem_bytes``): four slots, the
default at D = 128, take 192 KiB of the 227.

Sequence lengths are zero-padded to the blocks (a no-op when they are multiples).

This is the only forward here: a simpler single-warpgroup version was not kept, since the
interpreter runs this one (warpgroups, barriers and TMA included) on CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mosaic_gpu import common
from parallax_jax.attention.masking import MaskSpec, same_segment
from parallax_jax.attention.residuals import Residuals

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
NEG_INF = float("-inf")
_WGS = common.COMPUTE_WGS
CENTRES = ("running", "first")


def _bcast_rows(x, shape):
  return lax.broadcast_in_dim(x, shape, [0])


def _kernel(
  *refs,
  mask: MaskSpec,
  scale: float,
  bq: int,
  bk: int,
  stages: int,
  n_qb: int,
  group: int,
  has_seg: bool,
  sched: bool,
  fma_scores: bool,
  centre: str,
  producer_registers: int,
  ops: common.Ops,
):
  if has_seg:
    q_ref, r_ref, k_ref, v_ref, segq_ref, segk_ref, *refs = refs
  else:
    q_ref, r_ref, k_ref, v_ref, *refs = refs
    segq_ref = segk_ref = None
  o_ref, barv_ref, lse_ref, bart_ref, *scratch = refs
  (q_smem, r_smem, k_smem, v_smem, lse_smem, bart_smem, *barriers) = scratch
  q_bar, r_bar, k_bar, v_bar, k_free, v_free, sched_bar = barriers

  b = lax.axis_index("batch")
  h = lax.axis_index("heads")
  wg = lax.axis_index("wg")
  qi = lax.axis_index("q")
  if mask.causal:  # heaviest (latest) query blocks first: better tail balance
    qi = n_qb - 1 - qi
  row0 = qi * (_WGS * bq)
  cta_lo, _, _, cta_hi = mask.key_blocks(row0, _WGS * bq, bk, jnp)
  dtype = q_ref.dtype
  d = q_ref.shape[-1]
  c2 = scale * LOG2E
  # The running max m is kept in the units of s2 = c2 s (base-2 exponent) or, with fma_scores,
  # of the raw scores s: then exp2(c2 s - c2 m) is one FFMA per score instead of a multiply
  # (whose product the max also reads) and a subtraction.
  m_unit = c2 if fma_scores else 1.0

  def slot_of(kb):
    return lax.rem(kb - cta_lo, jnp.int32(stages))

  def schedule_barrier():
    if sched:
      plgpu.barrier_arrive(sched_bar)
      plgpu.barrier_wait(sched_bar)

  @pl.when(wg < _WGS)
  def _consumer():
    plgpu.set_max_registers(common.consumer_registers(producer_registers), action="increase")
    q_tile, r_tile = q_smem.at[wg], r_smem.at[wg]
    rw = row0 + wg * bq
    rows_sl = pl.ds(rw, bq)
    plgpu.copy_gmem_to_smem(q_ref.at[b, rows_sl, h], q_tile, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(r_ref.at[b, rows_sl, h], r_tile, r_bar.at[wg])
    seg_q = ops.load_rows(segq_ref.at[b, rows_sl]) if has_seg else None
    # This warpgroup's ranges, inside the CTA's (they are when non-empty; clipping keeps the
    # empty ones empty).
    lo, safe_lo, safe_hi, hi = (
      jnp.clip(x, cta_lo, cta_hi) for x in mask.key_blocks(rw, bq, bk, jnp)
    )
    plgpu.barrier_wait(q_bar.at[wg])
    plgpu.barrier_wait(r_bar.at[wg])

    def skip(kb, carry):
      """A CTA tile this warpgroup does not see: keep barrier phases in step, free the slot."""
      slot = slot_of(kb)
      plgpu.barrier_wait(k_bar.at[slot])
      plgpu.barrier_arrive(k_free.at[slot])
      schedule_barrier()
      schedule_barrier()
      plgpu.barrier_wait(v_bar.at[slot])
      plgpu.barrier_arrive(v_free.at[slot])
      return carry

    def step(kb, carry, masked: bool):
      m, d1, d2, cen, acc1, accb = carry
      slot = slot_of(kb)
      plgpu.barrier_wait(k_bar.at[slot])
      s, t = ops.matmuls_nt((q_tile, r_tile), k_smem.at[slot], (bq, bk), schedule_barrier)
      plgpu.barrier_arrive(k_free.at[slot])
      s2 = s if fma_scores else s * c2
      visible = None
      if has_seg:
        seg_k = ops.load_cols(segk_ref.at[b, pl.ds(kb * bk, bk)])
        visible = same_segment(
          _bcast_rows(seg_q, (bq, bk)), lax.broadcast_in_dim(seg_k, (bq, bk), [1])
        )
      if masked:
        rows = rw + ops.iota((bq, bk), 0)
        cols = kb * bk + ops.iota((bq, bk), 1)
        vis_idx = mask.visible(rows, cols)
        visible = vis_idx if visible is None else visible & vis_idx
      if visible is not None:
        s2 = jnp.where(visible, s2, NEG_INF)
      m_new = jnp.maximum(m, jnp.max(s2, axis=1))
      # Safe max: a row that has seen nothing keeps m = -inf and gets w = 0, never NaN. An
      # unmasked tile always has a finite row max.
      m_use = m_new if visible is None else jnp.where(m_new == NEG_INF, 0.0, m_new)
      if fma_scores:
        alpha = jnp.exp2((m - m_use) * c2)
        w = jnp.exp2(s2 * c2 - _bcast_rows(m_use * c2, s2.shape))
      else:
        alpha = jnp.exp2(m - m_use)
        w = jnp.exp2(s2 - _bcast_rows(m_use, s2.shape))
      wt = w * t
      d1_old = d1
      d1 = alpha * d1 + jnp.sum(w, axis=1)
      d2 = alpha * d2 + jnp.sum(wt, axis=1)
      if visible is None:
        mean = d2 / d1
      else:
        seen = d1 > 0
        mean = jnp.where(seen, d2 / jnp.where(seen, d1, 1.0), 0.0)
      # centre "first": the centre is set by the first tile a row sees and then kept, so the
      # accumulators need no per-tile correction (acc1 and accb are still zero when it is set).
      cen_new = mean if centre == "running" else jnp.where(d1_old > 0, cen, mean)
      cen_b = _bcast_rows(cen_new, t.shape)
      # wt - w c is one FFMA on the product the row sum already needed.
      w2c = wt - w * cen_b if fma_scores else w * (t - cen_b)
      alpha_b = _bcast_rows(alpha, acc1.shape)
      acc1 = acc1 * alpha_b
      if centre == "running":
        accb = accb * alpha_b - _bcast_rows(cen_new - cen, acc1.shape) * acc1
      else:
        accb = accb * alpha_b
      w_lo, w2c_lo = w.astype(dtype), w2c.astype(dtype)
      if sched:
        plgpu.barrier_arrive(sched_bar)  # done with the exp/reduction work
      plgpu.barrier_wait(v_bar.at[slot])
      if sched:
        plgpu.barrier_wait(sched_bar)  # the tensor cores are ours
      acc1, accb = ops.matmuls_acc((acc1, accb), (w_lo, w2c_lo), v_smem.at[slot])
      plgpu.barrier_arrive(v_free.at[slot])
      return m_new, d1, d2, cen_new, acc1, accb

    zeros = ops.rows(jnp.zeros((bq,), jnp.float32))
    acc = ops.layout(jnp.zeros((bq, d), jnp.float32))
    carry = (ops.rows(jnp.full((bq,), NEG_INF, jnp.float32)), zeros, zeros, zeros, acc, acc)
    if sched:
      pl.when(wg == 1)(schedule_barrier)
    masked = functools.partial(step, masked=True)
    if mask.window_size is not None:  # without a window every range starts at block 0
      carry = lax.fori_loop(cta_lo, lo, skip, carry)
      carry = lax.fori_loop(lo, safe_lo, masked, carry)
    carry = lax.fori_loop(safe_lo, safe_hi, functools.partial(step, masked=False), carry)
    carry = lax.fori_loop(safe_hi, hi, masked, carry)
    carry = lax.fori_loop(hi, cta_hi, skip, carry)
    if sched:
      pl.when(wg == 0)(schedule_barrier)

    m, d1, d2, cen, acc1, accb = carry
    seen = d1 > 0
    inv = jnp.where(seen, 1.0 / jnp.where(seen, d1, 1.0), 0.0)
    inv_b = _bcast_rows(inv, acc1.shape)
    barv = acc1 * inv_b
    # o = (1 + bart) barv - acc2 / d1 with acc2 = accb + cen acc1.
    if centre == "running":  # the centre is bart
      bart = cen
      o = barv - accb * inv_b
    else:
      bart = d2 * inv
      o = barv - accb * inv_b + _bcast_rows(bart - cen, barv.shape) * barv
    lse = jnp.where(seen, m * (m_unit * LN2) + jnp.log(jnp.where(seen, d1, 1.0)), NEG_INF)
    # Q and R are no longer read (every wgmma on them has been waited for): stage o and barv.
    q_tile[...] = o.astype(dtype)
    r_tile[...] = barv.astype(dtype)
    lse_smem[wg] = lse
    bart_smem[wg] = bart
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_tile, o_ref.at[b, rows_sl, h])
    plgpu.copy_smem_to_gmem(r_tile, barv_ref.at[b, rows_sl, h])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, rows_sl])
    plgpu.copy_smem_to_gmem(bart_smem.at[wg], bart_ref.at[b, h, rows_sl])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == _WGS)
  def _producer():
    plgpu.set_max_registers(producer_registers, action="decrease")
    kv_h = lax.div(h, jnp.int32(group))
    n_steps = cta_hi - cta_lo

    def load(kb, slot):
      tile = (b, pl.ds(kb * bk, bk), kv_h)
      plgpu.copy_gmem_to_smem(k_ref.at[tile], k_smem.at[slot], k_bar.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[tile], v_smem.at[slot], v_bar.at[slot])

    for i in range(stages):
      pl.when(i < n_steps)(functools.partial(load, cta_lo + i, i))

    @pl.loop(cta_lo + stages, cta_hi)
    def _refill(kb):
      slot = slot_of(kb)
      tile = (b, pl.ds(kb * bk, bk), kv_h)
      plgpu.barrier_wait(k_free.at[slot])
      plgpu.copy_gmem_to_smem(k_ref.at[tile], k_smem.at[slot], k_bar.at[slot])
      plgpu.barrier_wait(v_free.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[tile], v_smem.at[slot], v_bar.at[slot])

    # Observe the last frees too: every phase of a barrier is waited for by the threads that
    # wait on it (the interpreter checks this; on the GPU it only idles the producer).
    @pl.loop(jnp.maximum(cta_lo, cta_hi - stages), cta_hi)
    def _drain(kb):
      plgpu.barrier_wait(k_free.at[slot_of(kb)])
      plgpu.barrier_wait(v_free.at[slot_of(kb)])


def parallax_fwd(
  q,
  r,
  k,
  v,
  segment_ids,
  *,
  scale: float,
  mask: MaskSpec,
  block_q: int = common.ROWS_PER_WG,
  block_k: int = 64,
  num_stages: int | None = None,
  interpret: bool = False,
  schedule_barrier: bool = True,
  cta_order: str = "heads_outer",
  fma_scores: bool = True,
  centre: str = "first",
  producer_registers: int = common.DEFAULT_PRODUCER_REGISTERS,
):
  """``(o, Residuals)`` of validated inputs (``parallax_jax.attention.residuals``).

  Args:
    q, r: ``[B, T, Hq, D]``; k, v: ``[B, S, Hkv, D]``; bfloat16 or float16, D 64 or 128
      (``common.check``).
    segment_ids: ``[B, T]`` int or None.
    scale: score scale; mask: the call's ``MaskSpec``.
    block_q: query rows per consumer warpgroup (64, the wgmma M); a CTA runs two.
    block_k: keys per tile (64 or 128); num_stages: K/V ring slots (>= 1; None: the default
      tile's, ``common.FWD_STAGES``).
    interpret: run in the Mosaic GPU interpreter (CPU tests).
    schedule_barrier: alternate the two consumers' tensor-core phases (FA3).
    cta_order: the order CTAs are issued in (``common.cta_grid``).
    fma_scores: keep the row max in raw score units so each score's exponent is one FFMA, and
      form ``w (t - c)`` as ``w t - w c`` (one FFMA on ``w t``); exact in exact arithmetic.
      On by default (measured faster); False is the earlier tile math.
    centre: ``"first"`` (the default: the mean over the first tile a row sees, kept, so no
      per-tile correction; the rounded ``W2c`` operand then spreads about that mean,
      docs/design.md §3.5) or ``"running"`` (the running mean of ``t``, corrected into
      ``accb`` every tile: the tighter rounding, about 8% slower at D = 128).
    producer_registers: registers per thread the TMA producer keeps (``common``
      ``PRODUCER_REGISTERS``); the two consumers share the rest (240 each at 24, the default;
      232 at 40, the split before 2026-12-04).
  """
  if centre not in CENTRES:
    raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
  common.check_producer_registers(producer_registers)
  batch, q_len, hq, d = q.shape
  _, kv_len, hkv, _ = k.shape
  if block_q != common.ROWS_PER_WG or block_k not in (64, 128):
    raise NotImplementedError(f"block_q must be 64 and block_k 64 or 128, got {block_q}, {block_k}")
  cta_rows = _WGS * block_q
  qp, rp = common.pad_to(q, 1, cta_rows), common.pad_to(r, 1, cta_rows)
  kp, vp = common.pad_to(k, 1, block_k), common.pad_to(v, 1, block_k)
  tq = qp.shape[1]
  n_qb = tq // cta_rows
  # Slots beyond the most key blocks a CTA ever visits would only cost shared memory.
  num_stages = num_stages or common.default_fwd_tile(d).num_stages
  stages = max(1, min(num_stages, mask.max_key_blocks(cta_rows, block_k)))
  args = [qp, rp, kp, vp]
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    args += [common.pad_to(seg, 1, cta_rows, -1), common.pad_to(seg, 1, block_k, -2)]
  dt = q.dtype
  out_type = [
    jax.ShapeDtypeStruct((batch, tq, hq, d), dt),
    jax.ShapeDtypeStruct((batch, tq, hq, d), dt),
    jax.ShapeDtypeStruct((batch, hq, tq), jnp.float32),
    jax.ShapeDtypeStruct((batch, hq, tq), jnp.float32),
  ]
  scratch = [
    common.smem((_WGS, block_q, d), dt),  # Q rows, then o
    common.smem((_WGS, block_q, d), dt),  # R rows, then barv
    common.smem((stages, block_k, d), dt),  # K ring
    common.smem((stages, block_k, d), dt),  # V ring
    plgpu.SMEM((_WGS, block_q), jnp.float32),  # lse
    plgpu.SMEM((_WGS, block_q), jnp.float32),  # bart
    plgpu.Barrier(num_barriers=_WGS),  # Q loaded
    plgpu.Barrier(num_barriers=_WGS),  # R loaded
    plgpu.Barrier(num_barriers=stages),  # K slot loaded
    plgpu.Barrier(num_barriers=stages),  # V slot loaded
    plgpu.Barrier(num_arrivals=_WGS, num_barriers=stages),  # K slot free
    plgpu.Barrier(num_arrivals=_WGS, num_barriers=stages),  # V slot free
    plgpu.Barrier(num_arrivals=_WGS),  # schedule barrier
  ]
  kernel = functools.partial(
    _kernel,
    mask=mask,
    scale=scale,
    bq=block_q,
    bk=block_k,
    stages=stages,
    n_qb=n_qb,
    group=hq // hkv,
    has_seg=segment_ids is not None,
    sched=schedule_barrier,
    fma_scores=fma_scores,
    centre=centre,
    producer_registers=producer_registers,
    ops=common.Ops(interpret),
  )
  kernel.__name__ = "parallax_fwd_mgpu"  # the kernel's name in profiles (a partial has none)
  grid, grid_names = common.cta_grid(n_qb, hq, batch, "q", cta_order)
  o, barv, lse, bart = plgpu.kernel(
    kernel,
    out_type=out_type,
    scratch_types=scratch,
    grid=grid,
    grid_names=grid_names,
    num_threads=_WGS + 1,
    thread_name="wg",
    compiler_params=plgpu.CompilerParams(approx_math=True),
    interpret=common.interpret_params(interpret),
  )(*args)
  o = o[:, :q_len]
  res = Residuals(o=o, barv=barv[:, :q_len], lse=lse[..., :q_len], bart=bart[..., :q_len])
  return o, res
