"""The dk/dv kernel of the Mosaic GPU backward (docs/design.md §5.4, second pass).

One CTA per (``wgs x 64`` keys, kv head, batch). ``wgs`` consumer warpgroups each own 64 keys:
their K and V tiles sit in SMEM, ``dk`` and ``dv`` in float32 wgmma accumulators. A producer
warpgroup (``plgpu.emit_pipeline_warp_specialized``) streams, for every query block of the CTA's
range and every query head ``g`` of the GQA group, the Q, R, dO tiles and the packed row
statistics ``[4, block_q]`` through a ring of ``stages`` SMEM slots, so the group's heads are
summed in the accumulators (no per-query-head dk/dv). Tiles are computed transposed
(``[keys, queries]``), so no register transpose is needed. Per step, each consumer:

* issues ``S^T = K Q^T``, ``T^T = K R^T`` and ``A^T = V dO^T`` as three wgmmas;
* masks ``S^T`` (MASKED tiles only, ``MaskSpec.visible``; segment ids on every tile);
* computes ``GL``, ``GU``, ``PW`` with ``backward_common.tile_grads``;
* accumulates ``dk += (c GL^T) Q + GU^T R`` and ``dv += PW^T dO`` (register operands).

The CTA streams the union of its warpgroups' query ranges (``MaskSpec.query_blocks``); each
warpgroup runs its own FULL tiles unmasked and every other tile of the union masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu.tile_math_base2 import LOG2E
from pallas_kernels.mosaic_gpu import backward_common as bc
from pallas_kernels.mosaic_gpu.common import HEAD_DIMS
from parallax_jax.attention.masking import MaskSpec, same_segment

ROWS = bc.ROWS


def _kernel(
  *refs,
  mask: MaskSpec,
  scale: float,
  bq: int,
  wgs: int,
  stages: int,
  group: int,
  has_seg: bool,
  ops: bc.BwdOps,
  producer_registers: int,
  fused: bool,
  fused_chunks: int,
  pack_row_constants: bool,
  stack_qr: bool,
):
  q_ref, r_ref, *refs = refs
  do_ref, stats_ref, k_ref, v_ref, *refs = refs
  if has_seg:
    segq_ref, segk_ref, *refs = refs
  else:
    segq_ref = segk_ref = None
  if fused and not ops.interpret:  # float32 dq^T, dr^T: aliased refs the caller zeroed
    dqt_ref, drt_ref, *refs = refs
  dk_ref, dv_ref, *refs = refs
  if fused and ops.interpret:  # per-(key block, warpgroup) G tiles the caller contracts with K
    dqt_ref, drt_ref, *refs = refs
  k_smem, v_smem, tiles_loaded, *fused_smem = refs

  b = lax.axis_index("batch")
  hk = lax.axis_index("heads")
  cta_key0 = lax.axis_index("k") * (wgs * ROWS)
  lo, n_qb = bc.union_range(
    [mask.query_blocks(cta_key0 + w * ROWS, bq, ROWS, jnp) for w in range(wgs)]
  )
  dtype = k_ref.dtype
  d = k_ref.shape[-1]
  c2 = scale * LOG2E
  tile = (ROWS, bq)
  wg_state = {}  # per-warpgroup values the compute context hands to the pipeline body
  qr_ring = []  # stack_qr: the [slots, 2 bq, D] SMEM ring whose halves are Q's and R's slots

  def compute(pipeline):
    wg = lax.axis_index("wg")
    key0 = cta_key0 + wg * ROWS
    keys_sl = pl.ds(key0, ROWS)
    k_t, v_t = k_smem.at[wg], v_smem.at[wg]
    barrier = tiles_loaded.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[b, keys_sl, hk], k_t, barrier)
    plgpu.copy_gmem_to_smem(v_ref.at[b, keys_sl, hk], v_t, barrier)
    _, safe_lo, safe_hi, _ = mask.query_blocks(key0, bq, ROWS, jnp)
    wg_state.update(
      key0=key0,
      safe=(safe_lo, safe_hi),
      tiles=(k_t, v_t),
      seg_k=ops.load(segk_ref.at[b, keys_sl], bc.ROW) if has_seg else None,
    )
    if fused and ops.interpret:  # zero this warpgroup's partials (the GPU reduces into zeros)
      heads = pl.ds(hk * group, group)
      for ref in (dqt_ref, drt_ref):
        slab = ref.at[lax.axis_index("k"), wg, b, heads]  # [group, 64 keys, Tq]
        slab[...] = jnp.zeros(slab.shape, jnp.float32)
    plgpu.barrier_wait(barrier)
    zeros = ops.layout(jnp.zeros((ROWS, d), jnp.float32))
    dk, dv = pipeline((zeros, zeros))
    if fused and not ops.interpret and wgs > 1:  # the other consumer's last dq/dr wgmma has
      plgpu.barrier_arrive(fused_smem[2])  # read this one's K tile: only then overwrite it
      plgpu.barrier_wait(fused_smem[2])
    # Every wgmma reading K and V has been waited for: stage dk and dv in their SMEM tiles.
    k_t[...] = dk.astype(dtype)
    v_t[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_t, dk_ref.at[b, keys_sl, hk], commit_group=False)
    plgpu.copy_smem_to_gmem(v_t, dv_ref.at[b, keys_sl, hk], commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    plgpu.wait_smem_to_gmem(0)

  def body(idx, *tiles):
    q_t, r_t, do_t, stats_t, *rest = tiles
    *segq, (dk, dv) = rest
    qb = lo + idx[0]
    k_t, v_t = wg_state["tiles"]
    if stack_qr:  # [S^T | T^T] = K [Q; R]^T: one wgmma of N = 2 block_q on one SMEM tile
      # (q_t, r_t are this step's slot's halves; the pipeline's slot is step mod slots)
      (ring,) = qr_ring
      qr_t = ring.at[lax.rem(idx[0] * group + idx[1], ring.shape[0])]
      st, a = ops.matmuls_nt(((k_t, qr_t), (v_t, do_t)), ((ROWS, 2 * bq), tile))
      s, t = st[:, :bq], st[:, bq:]
    else:
      s, t, a = ops.matmuls_nt(((k_t, q_t), (k_t, r_t), (v_t, do_t)), tile)  # [keys, queries]
    s2 = s * c2
    safe_lo, safe_hi = wg_state["safe"]
    key0 = wg_state["key0"]

    def visible():
      return mask.visible(qb * bq + ops.iota(tile, 1), key0 + ops.iota(tile, 0))

    s2 = bc.mask_scores(s2, masked=(qb < safe_lo) | (qb >= safe_hi), visible_fn=visible)

    def cols(x):
      return lax.broadcast_in_dim(x, tile, [1])

    if has_seg:
      seg_k = lax.broadcast_in_dim(wg_state["seg_k"], tile, [0])
      s2 = jnp.where(same_segment(cols(ops.load(segq[0], bc.COL)), seg_k), s2, bc.NEG_INF)
    stats = tuple(cols(ops.load(stats_t.at[j], bc.COL)) for j in range(4))
    gl, gu, pw = bc.tile_grads(s2, t, a, stats, pack_row_constants)
    gl, gu = (gl * scale).astype(dtype), gu.astype(dtype)
    dk, dv = ops.matmuls_acc((dk, dv), ((0, gl, q_t), (0, gu, r_t), (1, pw.astype(dtype), do_t)))
    if fused:
      add_dq_dr((gl, gu), hk * group + idx[1], pl.ds(qb * bq, bq), idx[0] * group + idx[1])
    return dk, dv

  def add_dq_dr(gs, hq, rows, step):
    """Fused backward: ``dq^T += K^T (c GL^T)``, ``dr^T += K^T GU^T`` for this tile's query
    rows, added to the float32 accumulators in GMEM by TMA reductions of whole tiles.

    The consumers share the work: each stages its G tiles in SMEM (two slots, alternating by
    step), and after a consumer barrier consumer ``w`` forms tensor ``w`` (dq, or dr) over all
    the CTA's keys (its own and the other consumer's K tiles), one reduction of one
    ``[D, block_q]`` float32 tile per consumer and step: half the reduction traffic of each
    consumer adding its own keys' part of both tensors (docs/design.md §5.6).
    """
    wg = lax.axis_index("wg")
    if ops.interpret:  # the G tiles themselves; the caller contracts them with K (the same
      # sums; a matmul with a transposed SMEM operand and TMA reductions are GPU-only)
      for g, dst in zip(gs, (dqt_ref, drt_ref), strict=True):
        dst.at[lax.axis_index("k"), wg, b, hq, :, rows][...] = g.astype(jnp.float32)
      return
    g_smem, acc_smem, g_ready = fused_smem
    g_slot = g_smem.at[step % 2]  # [wgs, 2, 64 keys, block_q]
    for j, g in enumerate(gs):  # wgmma's B operand must sit in SMEM
      g_slot.at[wg, j][...] = g
    plgpu.commit_smem()
    if wgs > 1:  # every consumer's G tiles are in SMEM. (A slot is rewritten two steps on,
      plgpu.barrier_arrive(g_ready)  # after the other consumer has passed the next barrier,
      plgpu.barrier_wait(g_ready)  # so after its wgmma of this step has read the slot.)
    rows_per = d // fused_chunks
    for w in range(wgs):

      @pl.when(wg == w)
      def _(w=w):
        for j in range(w, 2, wgs):  # tensor j: 0 = dq, 1 = dr
          for c in range(fused_chunks):  # [D, bq] float32 in row chunks: fewer live registers
            chunk = pl.ds(c * rows_per, rows_per)
            pairs = [(k_smem.at[w2, :, chunk], g_slot.at[w2, j]) for w2 in range(wgs)]
            part = ops.matmul_tn(pairs, (rows_per, bq))
            if c == 0:  # the last reduction has read acc_smem (overlaps the first wgmma)
              plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            acc_smem.at[w, chunk][...] = part
          plgpu.commit_smem()
          dst = (dqt_ref, drt_ref)[j]
          plgpu.copy_smem_to_gmem(acc_smem.at[w], dst.at[b, hq, :, rows], reduction_op="add")

  def q_map(i, g):
    return (lo + i, hk * group + g, 0)

  transforms = bc.tma_transforms(dtype, bc.swizzle_for(bq))
  row_spec = plgpu.BlockSpec((bq, None, d), q_map, transforms=transforms)  # a query block's rows
  in_specs = [
    row_spec,  # Q
    row_spec,  # R
    row_spec,  # dO
    plgpu.BlockSpec((None, 4, bq), lambda i, g: (hk * group + g, 0, lo + i)),  # row stats
  ]
  gmem = [q_ref.at[b], r_ref.at[b], do_ref.at[b], stats_ref.at[b]]
  if has_seg:
    in_specs.append(plgpu.BlockSpec((bq,), lambda i, g: (lo + i,)))
    gmem.append(segq_ref.at[b])
  pipeline = plgpu.emit_pipeline_warp_specialized(
    body,
    grid=(n_qb, group),
    memory_registers=producer_registers,
    in_specs=in_specs,
    max_concurrent_steps=stages,
    wg_axis="wg",
    num_compute_wgs=wgs,
    compute_context=compute,
  )
  if not stack_qr:
    pipeline(*gmem)
    return
  # stack_qr: Q's and R's ring slots are the two halves of one [2 bq, D] tile per slot, so
  # the producer's two TMA copies of a step (on the step's one barrier, as ever) land stacked:
  # no copy of Q and R in HBM. The pipeline takes its SMEM as ``allocations``.
  allocs = pipeline.get_allocations(*gmem)
  q_alloc, _, *other_allocs = allocs.pop("flat_in_smem_refs")
  slots = q_alloc.shape[0]
  ring_alloc = plgpu.SMEM((slots, 2 * bq, d), dtype, transforms=transforms)

  def scoped(ring, other_smem, **barriers):
    qr_ring.append(ring)
    halves = [ring.at[:, pl.ds(0, bq)], ring.at[:, pl.ds(bq, bq)]]
    pipeline(*gmem, allocations=dict(barriers, flat_in_smem_refs=[*halves, *other_smem]))

  pl.run_scoped(scoped, ring_alloc, other_allocs, **allocs, collective_axes="wg")


def default_fused_chunks(head_dim: int) -> int:
  """Row chunks of the fused kernel's dq/dr parts: 2 where they can be (D = 128; each chunk is
  a wgmma's M, a multiple of 64). With the producer at 24 registers they took the fused kernel's
  ptxas spill stores from 20 to 4 bytes per thread and its time down 0-1.7% at the four bench
  shapes, D = 128, on the H200 (docs/design.md §5.6)."""
  return 2 if head_dim % (2 * ROWS) == 0 else 1


def default_stack_qr(head_dim: int) -> bool:
  """Whether the dk/dv kernel stacks Q and R by default: at both head dims the kernels take
  (``common.HEAD_DIMS``), each timed faster on the H200 (bf16, H = 16, causal). D = 128: the
  dk/dv kernel 5.6-13.1% faster (bench_kernels_2026-12-04_181607), the two-pass backward's
  kernels 4.3-5.7% (bench_bwd_math_2026-12-04_181432), with no XLA copy and the same registers;
  the fused kernel's stacked form 3-4% faster than its unstacked one across runs. D = 64: the
  two-pass backward's kernels 2.1 / 2.6% at (4, 4K) / (2, 8K) (bench_bwd_math_2026-12-04_202247).
  docs/design.md §5.6."""
  return head_dim in HEAD_DIMS


def smem_bytes(
  head_dim: int, block_q: int, block_k: int, stages: int, has_seg: bool, fused: bool = False
) -> int:
  """Shared memory of one CTA (half-precision tiles): K, V per consumer + the ring of Q, R, dO
  and the four float32 row statistics (+ the query segment ids); fused: + per consumer the
  GL, GU tiles (two slots) and one float32 ``[D, block_q]`` staging tile of the dq/dr
  reductions."""
  wgs = block_k // ROWS
  fixed = 2 * wgs * ROWS * head_dim * 2
  if fused:
    fixed += wgs * (2 * 2 * ROWS * block_q * 2 + head_dim * block_q * 4)
  per_stage = 3 * block_q * head_dim * 2 + 4 * block_q * 4 + (4 * block_q if has_seg else 0)
  return fixed + stages * per_stage


def dk_dv(
  q,
  r,
  do,
  stats,
  k,
  v,
  segq,
  segk,
  *,
  scale,
  mask,
  block_q,
  block_k,
  stages,
  interpret,
  cta_order="heads_outer",
  producer_registers=bc.DEFAULT_PRODUCER_REGISTERS,
  fused=False,
  fused_chunks=None,
  pack_row_constants=True,
  stack_qr=None,
):
  """``(dk, dv)`` of padded inputs (``backward.parallax_bwd`` prepares them), the query heads
  of each GQA group summed in the kernel; fused: ``(dk, dv, dq, dr)``.

  Args:
    q, r, do: ``[B, Tq, Hq, D]`` input dtype, Tq a multiple of ``block_q``.
    stats: ``[B, Hq, 4, Tq]`` float32 (see ``backward_dq.dq_dr``).
    k, v: ``[B, Tk, Hkv, D]``, Tk a multiple of ``block_k``.
    segq, segk: ``[B, Tq]`` / ``[B, Tk]`` int32 or None.
    block_q: query rows per streamed tile; block_k: keys per CTA (64 per consumer warpgroup).
    stages: ring slots of the streamed tiles.
    cta_order: the order CTAs are issued in (``common.cta_grid``).
    producer_registers: registers per thread of the TMA producer warpgroup; the consumers
      share the rest (``common.consumer_registers``).
    pack_row_constants: ``stats`` holds ``backward_common.STATS`` (else the earlier rows,
      ``backward.prepare``).
    fused: also compute ``dq`` (scaled) and ``dr``, ``[B, Tq, Hq, D]`` float32, by TMA
      reductions into zeroed float32 buffers (docs/design.md §5.5): no dq/dr pass, but the
      sums' order varies between runs.
    fused_chunks: form each ``[D, block_q]`` float32 part of ``dq^T`` / ``dr^T`` in this many
      row chunks, one after the other (1, or 2 at D = 128: half the part's registers,
      docs/design.md §5.6); None: ``default_fused_chunks``.
    stack_qr: land each query block's Q and R tiles as the two halves of one ``[2 block_q, D]``
      SMEM ring slot (two TMA copies), so that ``S^T`` and ``T^T`` are one wgmma of N =
      ``2 block_q`` instead of two of N = ``block_q``: the K tile is read from shared memory
      once for both. None: ``default_stack_qr``.
  """
  if fused_chunks is None:
    fused_chunks = default_fused_chunks(k.shape[-1])
  if stack_qr is None:
    stack_qr = default_stack_qr(k.shape[-1])
  if fused_chunks not in (1, 2) or k.shape[-1] % (bc.ROWS * fused_chunks):
    raise NotImplementedError(
      f"fused_chunks must be 1 or 2 with head_dim / fused_chunks a multiple of {bc.ROWS} (the "
      f"chunks are wgmma's M), got {fused_chunks!r} at head_dim {k.shape[-1]}."
    )
  batch, tq, hq, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  wgs = block_k // ROWS
  has_seg = segq is not None
  args = [q, r, do, stats, k, v] + ([segq, segk] if has_seg else [])
  kernel = functools.partial(
    _kernel,
    mask=mask,
    scale=scale,
    bq=block_q,
    wgs=wgs,
    stages=stages,
    group=hq // hkv,
    has_seg=has_seg,
    ops=bc.BwdOps(interpret),
    producer_registers=producer_registers,
    fused=fused,
    fused_chunks=fused_chunks,
    pack_row_constants=pack_row_constants,
    stack_qr=stack_qr,
  )
  # e.g. "parallax_bwd_dkv_fused_stacked_mgpu": the variant is named in profiles and jaxprs
  kernel.__name__ = f"parallax_bwd_dkv{'_fused' * fused}{'_stacked' * stack_qr}_mgpu"
  grid, grid_names = bc.cta_grid(tk // block_k, hkv, batch, "k", cta_order)
  swizzle = bc.swizzle_for(block_q)  # one swizzle for every wgmma tile of the kernel
  out_type = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  scratch = [
    bc.smem((wgs, ROWS, d), k.dtype, swizzle),  # K rows, then dk
    bc.smem((wgs, ROWS, d), v.dtype, swizzle),  # V rows, then dv
    plgpu.Barrier(num_arrivals=2, num_barriers=wgs),  # K, V loaded
  ]
  mesh = dict(grid=grid, grid_names=grid_names, num_threads=wgs + 1, thread_name="wg")
  if not fused:
    return plgpu.kernel(
      kernel,
      out_type=out_type,
      scratch_types=scratch,
      compiler_params=bc.compiler_params(),
      interpret=bc.interpret_params(interpret),
      **mesh,
    )(*args)
  if interpret:
    # jax's GPU interpreter has no TMA reductions: the kernel writes its G tiles, contracted
    # with K here. (Its threads also deadlocked on 2 cores when the GPU-only SMEM scratch
    # buffers below were allocated too: docs/design.md §5.6.)
    nk = tk // block_k
    parts = jax.ShapeDtypeStruct((nk, wgs, batch, hq, ROWS, tq), jnp.float32)
    dk, dv, dqt, drt = plgpu.kernel(
      kernel,
      out_type=[*out_type, parts, parts],
      scratch_types=scratch,
      compiler_params=bc.compiler_params(),
      interpret=bc.interpret_params(True),
      **mesh,
    )(*args)
    k_rows = jnp.repeat(k.reshape(batch, nk, wgs, ROWS, hkv, d), hq // hkv, axis=4)
    k_rows = k_rows.astype(jnp.float32)
    dqt, drt = (jnp.einsum("bnwrhd,nwbhrt->bhdt", k_rows, g) for g in (dqt, drt))
  else:
    scratch += [
      bc.smem((2, wgs, 2, ROWS, block_q), q.dtype, swizzle),  # c GL^T, GU^T per step parity
      plgpu.SMEM((wgs, d, block_q), jnp.float32),  # a dq^T / dr^T tile on its way to GMEM
      plgpu.Barrier(num_arrivals=wgs),  # the consumers' G tiles are staged
    ]
    # The accumulators are jax refs passed to ``pl.kernel``, which aliases them in and out
    # (``plgpu.kernel`` rejects refs on jax 0.10); the scratch is allocated as it does.
    # Transposed, [B, Hq, D, Tq]: a tile's [D, block_q] is one TMA box.
    dqt, drt = (jax.new_ref(jnp.zeros((batch, hq, d, tq), jnp.float32)) for _ in range(2))

    def body(*refs):
      pl.run_scoped(functools.partial(kernel, *refs), *scratch, collective_axes="wg")

    dk, dv = pl.kernel(
      body,
      out_type=out_type,
      mesh=plgpu.Mesh(**mesh),
      compiler_params=bc.compiler_params(),
      name=kernel.__name__,
    )(*args, dqt, drt)
    dqt, drt = dqt[...], drt[...]
  dq, dr = (jnp.transpose(x, (0, 3, 1, 2)) for x in (dqt, drt))
  return dk, dv, dq, dr
