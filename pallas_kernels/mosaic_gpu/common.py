"""Shared helpers of the Mosaic GPU (Hopper) kernels: scope checks, padding, interpret mode.

Scope (``check``; anything else raises ``NotImplementedError`` so ``implementation=None`` can
fall back to "pallas_gpu" and an explicit request says why): a Hopper GPU (sm_90; any device
in interpret mode), bfloat16/float16 inputs, head_dim
64 or 128, any GQA ratio, causal/window/segment-id masks. Sequence lengths are zero-padded up to
the block sizes by ``pad_to`` (a no-op when they are multiples already); padded rows and keys
are invisible under ``MaskSpec`` and sliced off.

Interpret mode (CPU tests) runs the kernels with the private ``InterpretGPUParams`` of jax
0.10.x: ``plgpu.kernel(..., interpret=True)`` does not work. That interpreter simulates SMEM,
TMA copies, barriers and warpgroups, but it cannot run register layouts
(``layout_cast``, ``broadcasted_iota(layout=)``, ``plgpu.load(layout=)``), a transposed wgmma
operand or a register wgmma operand. ``Ops`` hides exactly those behind one flag: the GPU path
issues the real instructions, the interpreted path the same math on plain arrays. Everything
else (TMA ring, barriers, warp specialisation, masks, tile math) is shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from parallax_jax.attention.block_sizes import Tile

DTYPES = ("bfloat16", "float16")
HEAD_DIMS = (64, 128)
ROWS_PER_WG = 64  # wgmma's M: the query rows one consumer warpgroup owns
COMPUTE_WGS = 2  # consumer warpgroups per CTA (a third one is the TMA producer)
NAME = "pallas_mosaic_gpu"

# Registers per thread of the TMA producer warpgroup (``setmaxnreg`` takes multiples of 8 from 24);
# the consumers share the rest of the SM's 64K (``consumer_registers``). 24, as FlashAttention-3
# gives its producer, leaves each of two consumers 240 instead of the 232 of jax's
# ``attention_mgpu`` choice, 40: measured on the H200 (``experiments/bench_bwd_math.py``,
# ``kernel_registers.py``), the dq/dr kernel runs 2.5-3.4% faster, the forward and dk/dv the
# same within noise, and the forward's and fused kernel's spills shrink (docs/design.md §5.6).
PRODUCER_REGISTERS = (24, 32, 40)
DEFAULT_PRODUCER_REGISTERS = 24

# Dynamic shared memory one CTA may use on sm90 (227 KiB), less 1 KiB for the barriers.
SMEM_BYTES = 227 * 1024 - 1024

# The forward's K/V ring depth by head dim: 4 slots at D = 128 since 2026-12-05 (session 25; 2
# before). Measured on the H200 (experiments/results/bench_fwd_math_2026-12-05_030211, _030447
# and bench_kernels_2026-12-05_030244), the forward kernel runs 0.7-3.5% faster at (B, L) = (4, 4K),
# (2, 8K), (8, 2K) and 0.3-0.7% slower at (1, 16K), the same in all four runs; fwd+bwd kernel
# time is lower at every shape (docs/design.md §5.6). D = 64 keeps 2 until measured there.
FWD_STAGES = {64: 2, 128: 4}

# The order the CTAs of a kernel are issued in (``cta_grid``).
CTA_ORDERS = ("heads_outer", "seq_outer")

_WGMMA = plgpu.Layout.WGMMA
_ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per accumulator row
_COL = plgpu.Layout.WGMMA.reduce(0)  # one value per accumulator column


def interpret_params(interpret: bool):
  """``interpret=`` argument of ``plgpu.kernel``: the GPU interpreter's params, or None."""
  if not interpret:
    return None
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # private API

  return InterpretGPUParams()


def fwd_smem_bytes(head_dim: int, block_k: int, stages: int) -> int:
  """Shared memory of one forward CTA (2-byte inputs): both consumers' Q and R rows, the K and V
  rings, and the float32 lse and bart rows."""
  rows = COMPUTE_WGS * ROWS_PER_WG
  return 2 * rows * head_dim * 2 + 2 * stages * block_k * head_dim * 2 + 2 * rows * 4


def check_tile(tile: Tile, pass_name: str, head_dim: int) -> None:
  """Raises NotImplementedError unless ``tile`` is a forward tile these kernels can run at
  ``head_dim`` (block rules and the shared memory of one CTA)."""
  where = f"implementation={NAME!r} BlockSizes(...).{pass_name}"
  if tile.block_q != ROWS_PER_WG:
    raise NotImplementedError(
      f"{where}.block_q must be {ROWS_PER_WG} (the query rows of one consumer warpgroup; a "
      f"CTA runs {COMPUTE_WGS} of them), got {tile.block_q}."
    )
  if tile.block_k not in (64, 128):
    raise NotImplementedError(f"{where}.block_k must be 64 or 128, got {tile.block_k}.")
  if tile.num_warps is not None:
    raise NotImplementedError(
      f"{where}.num_warps must be None (warpgroups are fixed: {COMPUTE_WGS} consumers + 1 "
      f"producer), got {tile.num_warps}."
    )
  if tile.num_stages is not None and not 2 <= tile.num_stages <= 4:
    raise NotImplementedError(
      f"{where}.num_stages (K/V ring depth) must be in [2, 4] or None, got {tile.num_stages}."
    )
  stages = tile.num_stages or default_fwd_tile(head_dim).num_stages
  need = fwd_smem_bytes(head_dim, tile.block_k, stages)
  if need > SMEM_BYTES:
    raise NotImplementedError(
      f"{where}={tile} needs {need} bytes of shared memory at head_dim {head_dim}, more than "
      f"the {SMEM_BYTES} a CTA may use: use fewer stages or block_k = 64."
    )


def check(spec) -> None:
  """Raises NotImplementedError (saying why and what to use) for forward calls out of scope."""
  check_scope(spec)
  if spec.block_sizes is not None:
    check_tile(spec.block_sizes.fwd, "fwd", spec.head_dim)


def check_device(spec) -> None:
  """The kernels issue wgmma and TMA: Hopper (sm_90) only, outside interpret mode."""
  if spec.interpret:
    return
  cc = getattr(jax.devices()[0], "compute_capability", None)
  if cc is None or not str(cc).startswith("9."):
    raise NotImplementedError(
      f"implementation={NAME!r} runs on Hopper GPUs (sm_90: wgmma and TMA), this device is "
      f"{jax.devices()[0].device_kind} (compute capability {cc}); use implementation='pallas_gpu'."
    )


def check_scope(spec) -> None:
  """The device, dtypes and head dims every Mosaic GPU kernel here serves
  (NotImplementedError)."""
  check_device(spec)
  if spec.dtype not in DTYPES:
    raise NotImplementedError(
      f"implementation={NAME!r} takes {' or '.join(DTYPES)} inputs, got {spec.dtype} "
      "(use implementation='pallas_gpu' for float32)."
    )
  if spec.head_dim not in HEAD_DIMS:
    raise NotImplementedError(
      f"implementation={NAME!r} supports head_dim 64 or 128, got {spec.head_dim} "
      "(use implementation='pallas_gpu')."
    )


def default_fwd_tile(head_dim: int) -> Tile:
  """The forward's default tile (see ``forward`` for why block_k = 64; ring depth
  ``FWD_STAGES``)."""
  # block_k 64 for both head dims: two score tiles + two accumulators per warpgroup
  return Tile(ROWS_PER_WG, 64, None, FWD_STAGES.get(head_dim, 2))


def consumer_registers(producer: int, consumers: int = COMPUTE_WGS) -> int:
  """Registers per thread of each consumer warpgroup when the producer keeps ``producer``:
  an even share of the rest of the SM's 512 per-lane registers (64K over one warpgroup's 128
  threads), rounded down to a multiple of 8 and capped at 256, the rule of jax's
  ``emit_pipeline_warp_specialized`` (232 at 40, 240 at 24 with two consumers)."""
  check_producer_registers(producer)
  return int(min(256, (512 - producer) // consumers) // 8 * 8)


def check_producer_registers(producer: int) -> None:
  if producer not in PRODUCER_REGISTERS:
    raise ValueError(f"producer_registers must be one of {PRODUCER_REGISTERS}, got {producer!r}")


def cta_grid(seq_blocks: int, heads: int, batch: int, seq_name: str, order: str = "heads_outer"):
  """``(grid, grid_names)`` of a kernel with one CTA per (sequence block, head, batch).

  The Mosaic GPU lowering launches the grid reversed: its last axis becomes CUDA's x, the
  fastest-issued. "heads_outer", ``(heads, seq, batch)``, issues batch fastest, then the
  sequence blocks, then heads: the CTAs resident at one time (one per SM) then belong to one
  or two heads, and the K/V (or Q/R/dO) they all stream stays in L2. jax's own
  ``attention_mgpu`` orders its grid the same way. "seq_outer", ``(seq, heads, batch)``, was the
  earlier order: resident CTAs spanned every head, whose streams overflow the 50 MB L2. ncu
  measured a 60% L2 hit rate for the forward at (B 2, L 8K, H 16) against 97% for the Triton
  kernel, whose grid runs the sequence blocks fastest (docs/design.md §5.6). It is kept to
  compare the two in one run (``experiments/bench_cta_order.py``).
  """
  if order == "heads_outer":
    return (heads, seq_blocks, batch), ("heads", seq_name, "batch")
  if order == "seq_outer":
    return (seq_blocks, heads, batch), (seq_name, "heads", "batch")
  raise ValueError(f"cta_order must be one of {CTA_ORDERS}, got {order!r}")


def pad_to(x, axis: int, multiple: int, value=0):
  """Pads ``axis`` of ``x`` up to a multiple of ``multiple`` (no copy when it is one)."""
  extra = -x.shape[axis] % multiple
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def tma_transforms(dtype, swizzle: int = 128):
  """Tiling + swizzle of a wgmma operand tile: 128 bytes (64 half-precision elements; head
  dims are multiples of 64) by default. Mosaic's wgmma takes K only in multiples of the swizzle
  width, so a kernel with 32-row K tiles uses 64 (``backward_common.swizzle_for``)."""
  return (
    plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
    plgpu.SwizzleTransform(swizzle),
  )


def smem(shape, dtype, swizzle: int = 128):
  """A swizzled SMEM tile of a wgmma operand (the layout TMA writes and wgmma reads)."""
  return plgpu.SMEM(shape, dtype, transforms=tma_transforms(dtype, swizzle))


@contextlib.contextmanager
def interpret_compile_cache():
  """Compiles each interpreted kernel's thread program once instead of once per (grid point,
  thread), the cost that dominates interpret mode (jax 0.10 ``thread_map._run_jaxpr`` traces,
  lowers and compiles it anew for every call). For tests; a no-op where that hook is absent."""
  from jax._src import core as jax_core
  from jax._src.pallas.mosaic.interpret import thread_map  # private API

  original = getattr(thread_map, "_run_jaxpr", None)
  if original is None:
    yield
    return
  cache, lock = {}, threading.Lock()

  def run_jaxpr(jaxpr, consts, *args):
    avals = tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves((consts, args)))
    with lock:
      entry = cache.setdefault((jaxpr, avals), [threading.Lock(), None])
    with entry[0]:  # the block's threads run the same program: compile it once
      if entry[1] is None:
        fn = jax.jit(lambda consts, *args: jax_core.eval_jaxpr(jaxpr, consts, *args))
        entry[1] = fn.trace(consts, *args).lower().compile()
    entry[1](consts, *args)

  thread_map._run_jaxpr = run_jaxpr
  try:
    yield
  finally:
    thread_map._run_jaxpr = original


@dataclasses.dataclass(frozen=True)
class Ops:
  """The register-level operations that differ between the GPU and the interpreter."""

  interpret: bool

  def layout(self, x, layout=_WGMMA):
    return x if self.interpret else plgpu.layout_cast(x, layout)

  def rows(self, x):
    """A per-row vector ``[M]`` in the accumulator's row layout."""
    return self.layout(x, _ROW)

  def iota(self, shape, dim):
    if self.interpret:
      return lax.broadcasted_iota(jnp.int32, shape, dim)
    return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=_WGMMA)

  def load_rows(self, ref):
    """``ref[...]`` (GMEM ``[M]``) as a per-row vector of the accumulator."""
    return ref[...] if self.interpret else plgpu.load(ref, (), layout=_ROW, optimized=False)

  def load_cols(self, ref):
    """``ref[...]`` (GMEM ``[N]``) as a per-column vector of the accumulator."""
    return ref[...] if self.interpret else plgpu.load(ref, (), layout=_COL, optimized=False)

  def matmuls_nt(self, a_smems, b_smem, shape, while_running=lambda: None):
    """``[a @ b.T for a in a_smems]`` (SMEM operands, float32 results): wgmmas that share the
    SMEM tile ``b``, all in flight before the first result is read; ``while_running()`` runs
    between issue and wait (e.g. a schedule barrier)."""
    if self.interpret:
      dims = (((1,), (1,)), ((), ()))
      out = tuple(
        lax.dot_general(a[...], b_smem[...], dims, preferred_element_type=jnp.float32)
        for a in a_smems
      )
      while_running()
      return out
    b_t = b_smem.transpose((1, 0))  # plgpu.transpose_ref: deprecated in jax 0.11

    def issue(*acc_refs):
      for acc, a in zip(acc_refs, a_smems, strict=True):
        plgpu.wgmma(acc, a, b_t)
      while_running()
      return tuple(acc[...] for acc in acc_refs)

    return pl.run_scoped(issue, *[plgpu.ACC(shape, jnp.float32) for _ in a_smems])

  def matmuls_acc(self, accs, lhs, b_smem):
    """``[acc + x @ b for acc, x in zip(accs, lhs)]``: ``lhs`` in registers (input dtype),
    ``b`` in SMEM, float32 accumulators (returned once every wgmma has finished)."""
    if self.interpret:
      return tuple(
        acc + jnp.dot(x, b_smem[...], preferred_element_type=jnp.float32)
        for acc, x in zip(accs, lhs, strict=True)
      )

    def issue(acc_refs):
      for acc, x in zip(acc_refs, lhs, strict=True):
        plgpu.wgmma(acc, x, b_smem)

    return pl.run_state(issue)(tuple(plgpu.ACC.init(a) for a in accs))


def lowered_for_gpu(fn, *args) -> str:
  """StableHLO text of ``fn(*args)`` lowered for CUDA (no GPU needed): the Pallas -> Mosaic
  GPU lowering runs here, so register-layout and API errors show on CPU (tests)."""
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
