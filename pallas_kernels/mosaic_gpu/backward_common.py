"""What the two Mosaic GPU backward kernels share: register-level ops, the tile math's entry
(``tile_grads``, the row statistics' layout ``STATS``), tile masking, ranges.

Interpret mode (CPU tests, jax 0.10.x's private GPU interpreter) simulates SMEM, TMA copies,
barriers, warpgroups and wgmma on SMEM operands, but it cannot run register layouts
(``layout_cast``, ``broadcasted_iota(layout=)``, ``plgpu.load(layout=)``), a transposed wgmma
operand (``ref.transpose``) or a register (non-SMEM) wgmma operand. ``BwdOps`` hides exactly
those behind one flag: the GPU path issues the real instructions, the interpreted path the same
products on plain arrays. The pipeline, barriers, masks and tile math are shared.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gpu.tile_math_base2 import bwd_tile2, bwd_tile2_rows

# The kernels' SMEM tiles and interpreter switch are the forward's (one place, common.py).
from pallas_kernels.mosaic_gpu.common import (  # noqa: F401  (used as bc.smem, ...)
  DEFAULT_PRODUCER_REGISTERS,
  ROWS_PER_WG,
  cta_grid,
  interpret_params,
  smem,
  tma_transforms,
)

ROWS = ROWS_PER_WG  # the rows (dq: queries, dk/dv: keys) one consumer warpgroup owns
NEG_INF = float("-inf")
# The rows of the packed float32 row statistics ``stats [B, Hq, 4, T]`` (``backward.prepare``),
# in order: what ``tile_math_base2.bwd_tile2_rows`` takes besides the tiles.
STATS = ("lse2", "1 + bart", "dO.barv - dO.o", "dO.barv")

WGMMA = plgpu.Layout.WGMMA
ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per accumulator row
COL = plgpu.Layout.WGMMA.reduce(0)  # one value per accumulator column

# Version branch: jax 0.10.x's ``plgpu.load(src, idx, ...)`` requires ``idx``; jax >= 0.11
# deprecates passing it (index the ref instead).
_LOAD_NEEDS_IDX = inspect.signature(plgpu.load).parameters["idx"].default is inspect._empty


def swizzle_for(stream_rows: int) -> int:
  """The SMEM swizzle (bytes) of every wgmma tile of a kernel whose streamed tiles have
  ``stream_rows`` rows. Those rows are the K of the accumulating wgmmas (``dq += GL K``,
  ``dk += GL^T Q``), which Mosaic takes only in multiples of the swizzle width, and both SMEM
  operands of a wgmma must share one swizzle: 32-row streams put the whole kernel on the
  64-byte swizzle, larger ones on 128 bytes."""
  return 64 if stream_rows == 32 else 128


def compiler_params():
  """The kernels' compiler params (one place: tests lower with other lowering semantics)."""
  return plgpu.CompilerParams(approx_math=True)


@dataclasses.dataclass(frozen=True)
class BwdOps:
  """The register-level operations that differ between the GPU and the interpreter."""

  interpret: bool

  def layout(self, x, layout=WGMMA):
    return x if self.interpret else plgpu.layout_cast(x, layout)

  def iota(self, shape, dim):
    """int32 ``broadcasted_iota`` in the accumulator layout."""
    if self.interpret:
      return lax.broadcasted_iota(jnp.int32, shape, dim)
    return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=WGMMA)

  def load(self, ref, layout):
    """``ref[...]`` (a 1-D GMEM or SMEM ref) as a per-row (``ROW``) or per-column (``COL``)
    vector of the accumulator."""
    if self.interpret:
      return ref[...]
    if _LOAD_NEEDS_IDX:
      return plgpu.load(ref, (), layout=layout, optimized=False)
    return plgpu.load(ref, layout=layout, optimized=False)

  def matmuls_nt(self, pairs, shape):
    """``[a @ b.T for a, b in pairs]`` of SMEM tiles, float32 results of ``shape`` (one for all,
    or a tuple of one per pair): all wgmmas are in flight before the first result is read."""
    shapes = shape if isinstance(shape[0], tuple) else (shape,) * len(pairs)
    if self.interpret:
      dims = (((1,), (1,)), ((), ()))
      return tuple(
        lax.dot_general(a[...], b[...], dims, preferred_element_type=jnp.float32) for a, b in pairs
      )

    def issue(*accs):
      for acc, (a, b) in zip(accs, pairs, strict=True):
        plgpu.wgmma(acc, a, b.transpose((1, 0)))  # = transpose_ref (deprecated in 0.11)
      return tuple(acc[...] for acc in accs)

    return pl.run_scoped(issue, *[plgpu.ACC(s, jnp.float32) for s in shapes])

  def matmuls_acc(self, accs, terms):
    """``accs[i] += x @ b`` for each ``(i, x, b)`` of ``terms``: ``x`` in registers (input
    dtype), ``b`` an SMEM tile, float32 accumulators returned once every wgmma has finished
    (so the SMEM tiles may be released afterwards)."""
    if self.interpret:
      out = list(accs)
      for i, x, b in terms:
        out[i] = out[i] + jnp.dot(x, b[...], preferred_element_type=jnp.float32)
      return tuple(out)

    def issue(acc_refs):
      for i, x, b in terms:
        plgpu.wgmma(acc_refs[i], x, b)

    return pl.run_state(issue)(tuple(plgpu.ACC.init(a) for a in accs))

  def matmul_tn(self, pairs, shape):
    """``sum(a.T @ b for a, b in pairs)`` of SMEM tiles (``a`` [K, M], ``b`` [K, N]), a float32
    ``shape`` = [M, N] result: the fused backward's ``dq^T = K^T (c GL^T)`` over the CTA's key
    tiles (``a`` read transposed by wgmma). GPU only: the interpreted fused kernel hands its G
    tiles to XLA instead."""

    def issue(acc):
      for a, b in pairs:
        plgpu.wgmma(acc, a.transpose((1, 0)), b)
      return acc[...]

    return pl.run_scoped(issue, plgpu.ACC(shape, jnp.float32))


def tile_grads(s2, t, a, stats, packed: bool):
  """``(gl, gu, pw)`` of a tile from the four ``stats`` rows, broadcast to the tile: ``STATS``
  (``packed``, ``bwd_tile2_rows``) or the earlier (``lse2``, ``bart``, ``dO.o``, ``dO.barv``),
  combined here per element (``bwd_tile2``)."""
  lse2, x1, x2, b_row = stats
  if packed:
    return bwd_tile2_rows(s2, t, None, lse2, x1, a, b_row, x2)
  return bwd_tile2(s2, t, None, lse2, x1, a, x2, b_row)


def union_range(ranges):
  """``(lo, n)``: the blocks ``[lo, lo + n)`` covering the non-empty ``(lo, _, _, hi)`` ranges
  of a CTA's warpgroups (``MaskSpec.key_blocks`` / ``query_blocks``, traced ints). Empty ranges
  may sit anywhere (e.g. at block 0) and must not stretch the union."""
  big = jnp.int32(2**30)
  lo_u, hi_u = big, jnp.int32(0)
  for lo, _, _, hi in ranges:
    empty = hi <= lo
    lo_u = jnp.minimum(lo_u, jnp.where(empty, big, lo))
    hi_u = jnp.maximum(hi_u, jnp.where(empty, 0, hi))
  n = jnp.maximum(hi_u - lo_u, 0)
  return jnp.where(n > 0, lo_u, 0).astype(jnp.int32), n.astype(jnp.int32)


def mask_scores(s2, *, masked, visible_fn):
  """``s2`` with invisible entries at ``-inf`` on MASKED tiles (``masked``: traced bool), as
  is on FULL ones. ``visible_fn()`` builds the boolean tile only inside the masked branch."""
  return lax.cond(masked, lambda: jnp.where(visible_fn(), s2, NEG_INF), lambda: s2)
