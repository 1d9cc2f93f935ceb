"""``parallax_attention``: the one entry point; validates, picks a path, wires the VJP."""

from __future__ import annotations

import functools

import jax
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Float, Int

from parallax_jax.attention import implementations
from parallax_jax.attention.validation import CallSpec, validate

# The forward's output and residuals carry this ``checkpoint_name``: a remat policy that saves
# it (``save_only_these_names(CHECKPOINT_NAME)``) keeps the backward from rerunning the forward.
CHECKPOINT_NAME = "parallax_attention_residuals"


def parallax_attention(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"],
  k: Float[Array, "B Tk Hkv D"],
  v: Float[Array, "B Tk Hkv D"],
  *,
  scale: float | None = None,
  causal: bool = True,
  window_size: int | None = None,
  segment_ids: Int[Array, "B T"] | None = None,
  implementation: str | None = None,
  interpret: bool = False,
  block_sizes: object | None = None,
  deterministic: bool = True,
) -> Float[Array, "B Tq Hq D"]:
  """Parallax attention: ``o_i = sum_j p_ij (1 + tbar_i - t_ij) v_j``.

  ``p = softmax(scale q.k)`` over the visible keys, ``t = r.k`` (never scaled),
  ``tbar_i = sum_j p_ij t_ij``: softmax attention minus ``Cov_p(t, v)``; ``r = 0`` gives
  softmax attention exactly.

  Args:
    q, r: ``[B, Tq, Hq, D]``.
    k, v: ``[B, Tk, Hkv, D]``; ``Hq`` a multiple of ``Hkv`` (query head h uses kv head
      ``h // (Hq // Hkv)``). float32, bfloat16 or float16, all one dtype (float64 too for
      "reference" and "xla" when x64 is on); accumulation is float32.
    scale: multiplies ``q.k`` only; default ``1 / sqrt(D)``.
    causal: end-aligned: query i sees keys ``j <= Tk - Tq + i``. False: no mask.
    window_size: keep the ``W`` most recent keys, diagonal included (needs causal).
    segment_ids: ``[B, T]`` ints (``Tq == Tk``): attend only within the same id (packing).
    implementation: None (best for the backend, logged once), "reference", "xla",
      "pallas_gpu" or "pallas_tpu". A path that cannot serve the call raises
      NotImplementedError.
    interpret: run Pallas kernels in interpret mode (pure-JAX paths ignore it).
    block_sizes: ``BlockSizes`` (the tiles of the forward, dq/dr and dk/dv passes) that the
      chosen path can run; None: the path's (tuned) defaults.
    deterministic: True (default): gradients are bitwise reproducible on every path. False
      lets a path take a backward that is not: on GPU ("pallas_gpu", and the Triton backward
      of "pallas_mosaic_gpu") one dk/dv pass that adds dq/dr with float32 atomics (fewer
      matmuls, but 1.6-1.9x slower than the default on the H200; docs/design.md §5.5).
      Paths without such a backward ignore it.

  Returns:
    ``[B, Tq, Hq, D]`` in q's dtype. Rows that see no key are 0.
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
    interpret=interpret,
    block_sizes=block_sizes,
    deterministic=deterministic,
  )
  impl = implementations.select(implementation, spec)
  if impl.bwd is None:
    return impl.fwd(q, r, k, v, segment_ids, spec)
  # The backward's variant is fixed now, at the call, and is part of the custom VJP's static
  # arguments: the backward traced later (after the forward returns) cannot see another one.
  variant = impl.backward_variant(spec) if impl.backward_variant is not None else None
  return _attention(impl.name, spec, variant, q, r, k, v, segment_ids)


# The implementation's forward and backward each run under their own jit. Calls with the same
# (name, spec, variant) and shapes, e.g. the layers of a model, then trace to one jaxpr, which
# JAX lowers once: one function per kernel in the module, called from every layer, instead of a
# copy of the kernel (lowered again in Python each time) per layer.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _impl_fwd(name: str, spec: CallSpec, q, r, k, v, segment_ids):
  return implementations.get(name).fwd(q, r, k, v, segment_ids, spec)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _impl_bwd(name: str, spec: CallSpec, variant, q, r, k, v, segment_ids, residuals, do):
  kw = {} if variant is None else {"variant": variant}
  return implementations.get(name).bwd(q, r, k, v, segment_ids, residuals, do, spec, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _attention(name: str, spec: CallSpec, variant, q, r, k, v, segment_ids):
  o, _ = _impl_fwd(name, spec, q, r, k, v, segment_ids)
  return o


def _attention_fwd(name, spec, variant, q, r, k, v, segment_ids):
  o, residuals = _impl_fwd(name, spec, q, r, k, v, segment_ids)
  o, residuals = jax.tree.map(lambda a: checkpoint_name(a, CHECKPOINT_NAME), (o, residuals))
  return o, (q, r, k, v, segment_ids, residuals)


def _attention_bwd(name, spec, variant, saved, do):
  q, r, k, v, segment_ids, residuals = saved
  dq, dr, dk, dv = _impl_bwd(name, spec, variant, q, r, k, v, segment_ids, residuals, do)
  return dq, dr, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
