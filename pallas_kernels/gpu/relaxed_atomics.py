"""A relaxed-order atomic add for Pallas Triton kernels (docs/design.md §5.5).

``pltriton.atomic_add`` lowers every atomic with acquire-release order at GPU scope. An
accumulation such as the fused backward's dq/dr needs only atomicity (CUDA's ``atomicAdd`` is
relaxed too), and acq_rel makes each thread wait for each add before the next one: the fused
backward measured 5-10x slower than the two-pass one on the H200 with it.

``relaxed_atomic_add`` is the same operation (same abstract evaluation and discharge, so the
interpret mode is unchanged) with ``MemSemantic.RELAXED``. It binds a primitive of its own
whose Triton lowering mirrors jax's ADD branch: Pallas exposes no memory-order argument, so
this touches jax's private lowering helpers, checked against jax 0.10.2 and 0.11.
"""

from __future__ import annotations

import inspect
import logging

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as pltriton

__all__ = ["relaxed_atomic_add"]

log = logging.getLogger("parallax_jax")

# Why the relaxed primitive cannot be built on this jax (private API changed), or None. Then
# relaxed_atomic_add falls back to pltriton.atomic_add: the same sums, only slower.
_UNAVAILABLE: str | None = None
_warned = False

try:
  from jax._src import core as jax_core
  from jax._src import state
  from jax._src.lib.mlir import ir
  from jax._src.lib.triton import dialect as tt_dialect
  from jax._src.pallas.triton import lowering
  from jax._src.pallas.triton import primitives as triton_primitives
  from jax._src.state import discharge as state_discharge
  from jax._src.state import indexing
  from jax._src.state import primitives as state_primitives

  if "semantic" not in inspect.signature(lowering._atomic_rmw).parameters:
    raise ImportError("jax's Triton _atomic_rmw takes no 'semantic'")
  _ADD = triton_primitives.AtomicOpType.ADD
  relaxed_atomic_add_p = jax_core.Primitive("relaxed_atomic_add")
  relaxed_atomic_add_p.def_effectful_abstract_eval(triton_primitives._atomic_abstract_eval)
  state_discharge.register_discharge_rule(relaxed_atomic_add_p)(
    triton_primitives._atomic_rmw_discharge_rule
  )
except (ImportError, AttributeError) as e:  # a jax whose private Pallas API moved
  _UNAVAILABLE = f"{type(e).__name__}: {e}"


def _relaxed_add_lowering(ctx, *args_flat, args_tree, atomic_type):
  del atomic_type  # always ADD
  (block_info, *_) = ctx.block_infos
  ptr, indexers, val, mask = args_tree.unflatten(args_flat)
  *_, value_aval, mask_aval = args_tree.unflatten(ctx.avals_in)
  indexers = list(indexers)
  if not indexers or not isinstance(indexers[-1], indexing.NDIndexer):
    ref_aval = state.transform_type(indexers, ctx.avals_in[0])
    indexers.append(indexing.NDIndexer.make_trivial_indexer(ref_aval.shape))
  if len(indexers) != 1:
    raise NotImplementedError("relaxed_atomic_add: only a single indexer is supported")
  ptr = lowering._compute_pointers_from_indices(ptr, block_info, indexers[0])
  val = lowering._ensure_ir_value(val, value_aval)
  if mask is not None:
    mask = lowering._ensure_ir_value(mask, mask_aval)
  op = tt_dialect.RMWOp.ADD if isinstance(val.type, ir.IntegerType) else tt_dialect.RMWOp.FADD
  return lowering._atomic_rmw(op, ptr, val, mask=mask, semantic=tt_dialect.MemSemantic.RELAXED)


if _UNAVAILABLE is None:
  lowering.register_lowering(relaxed_atomic_add_p)(_relaxed_add_lowering)


def relaxed_atomic_add(ref, idx, val: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """``ref[idx] += val`` atomically, relaxed memory order; returns the old value.

  Only atomicity is promised: no other memory access is ordered by it, so use it for sums
  whose result is read after the kernel, never for flags or tickets (``pltriton.atomic_add``).
  float32 or int32 ``ref`` (the abstract evaluation of ``pltriton.atomic_add``). On a jax whose
  private Pallas API no longer fits, it is ``pltriton.atomic_add`` (same sums, acq_rel, slower)
  and says so once.
  """
  global _warned
  if _UNAVAILABLE is not None:
    if not _warned:
      log.warning("relaxed atomics unavailable (%s): using acq_rel atomic_add", _UNAVAILABLE)
      _warned = True
    return pltriton.atomic_add(ref, idx, val, mask=mask)
  x_ref, transforms = state_primitives.get_ref_and_transforms(ref, idx, "relaxed_atomic_add")
  args_flat, args_tree = jax.tree_util.tree_flatten((x_ref, transforms, jnp.asarray(val), mask))
  return relaxed_atomic_add_p.bind(*args_flat, args_tree=args_tree, atomic_type=_ADD)
