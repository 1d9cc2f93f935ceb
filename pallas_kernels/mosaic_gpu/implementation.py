"""The "pallas_mosaic_gpu" implementation: wiring of the Mosaic GPU kernels into the registry.

The forward is ``forward.parallax_fwd``. The backward is chosen per call by ``BACKWARD``:

* ``"auto"`` (the default): ``backward_for(spec)``, the rule measured on the H200
  (docs/design.md §6.2): the Mosaic backward where it was measured faster, the Triton one
  elsewhere. The choice is logged once per (backward, reason).
* ``"triton"``: ``pallas_kernels.gpu.backward.parallax_bwd``, which consumes this forward's
  residuals unchanged (the residual contract of ``parallax_jax.attention.residuals`` is
  shared). It runs with the "pallas_gpu" tuned dq/dkv tiles unless the call gives
  ``BlockSizes``, whose ``dq``/``dkv`` tiles it then takes (Triton rules); with
  ``deterministic=False`` it is the fused (atomic dq/dr) single pass.
* ``"mosaic"``: ``backward.parallax_bwd``, the warp-specialised Mosaic GPU dq/dr and dk/dv
  kernels (``BlockSizes.dq``/``dkv`` then follow ``backward.check``); with
  ``deterministic=False`` the fused one: the dk/dv kernel alone, adding dq/dr by TMA
  reductions (measured 2-6% slower than the two passes, bench_kernels_2026-12-03_144822, so
  ``"auto"`` never picks it).
  Its dk/dv kernel streams Q and R as one stacked tile (``backward_dkv.default_stack_qr``,
  measured 4-6% off the backward at D = 128, 2-3% at D = 64, docs/design.md §5.6).
* ``"mosaic_unstacked"``: ``"mosaic"`` with the dk/dv kernel's separate Q and R tiles (the
  default before session 21), kept to time beside it (``experiments/bench_kernels.py``,
  ``experiments/bench_train.py``); never picked by ``"auto"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import jax.numpy as jnp

from pallas_kernels.mosaic_gpu import backward as mosaic_backward
from pallas_kernels.mosaic_gpu import common, forward
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.validation import CallSpec

log = logging.getLogger("parallax_jax")

BACKWARDS = ("auto", "triton", "mosaic", "mosaic_unstacked")
BACKWARD = "auto"
# The "auto" rule's scope: where the Mosaic backward was measured faster than the Triton one, or
# equal (H200, H = 16, bf16, causal, pipelined fwd+bwd, docs/design.md §5.6). Key: (head_dim,
# windowed); value: the shortest length measured. D = 128, no window
# (bench_kernels_2026-12-03_144822): 9.2 / 8.1 / 8.3 / 8.0% less time at (B, L) = (4, 4K) /
# (2, 8K) / (8, 2K) / (1, 16K). D = 64, no window (bench_kernels_2026-12-03_181304_d64): 7.4 /
# 8.9% less at (4, 4K) / (2, 8K). D = 128, window 1024 (bench_kernels_2026-12-03_181341_window1024):
# 0.8 / 0.6% less at (4, 4K) / (2, 8K), a tie; windows narrower than the one measured, windows at
# D = 64 and shorter lengths stay on Triton (not measured).
# Measured with the unstacked dk/dv tile; the stacked one (the default since sessions 21-22)
# takes 4-6% (D = 128) and 2-3% (D = 64) more off the Mosaic backward where timed (no window),
# widening its lead.
MOSAIC_BACKWARD_MIN_LEN = {(128, False): 2048, (64, False): 4096, (128, True): 4096}
MOSAIC_BACKWARD_MIN_WINDOW = 1024
_logged: set[tuple[str, str]] = set()


@contextlib.contextmanager
def use_backward(name: str):
  """Sets ``BACKWARD`` for the block, then restores it.

  The backward is read when ``parallax_attention`` is called (``backward_for``) and fixed in
  the custom VJP's static arguments, so the block need only enclose the forward call.
  """
  global BACKWARD
  if name not in BACKWARDS:
    raise ValueError(f"backward must be one of {BACKWARDS}, got {name!r}.")
  saved, BACKWARD = BACKWARD, name
  try:
    yield
  finally:
    BACKWARD = saved


def _backward() -> str:
  if BACKWARD not in BACKWARDS:
    raise ValueError(
      f"pallas_kernels.mosaic_gpu.implementation.BACKWARD must be one of {BACKWARDS}, got "
      f"{BACKWARD!r}."
    )
  return BACKWARD


def _auto_rule(spec: CallSpec) -> tuple[str, str]:
  """``(backward, why)`` of ``BACKWARD="auto"``: the Mosaic backward only where measured."""
  if spec.block_sizes is not None:  # the call's dq/dkv tiles follow the Triton rules
    return "triton", "the call gives BlockSizes (Triton dq/dkv tiles)"
  if not spec.deterministic:
    return "triton", "deterministic=False (the fused atomic backward is Triton's)"
  # A window as long as the keys masks nothing: the call runs as unwindowed.
  windowed = spec.mask.window_size is not None and spec.mask.window_size < spec.mask.kv_len
  min_len = MOSAIC_BACKWARD_MIN_LEN.get((spec.head_dim, windowed))
  where = f"head_dim {spec.head_dim}" + (f", window {spec.mask.window_size}" if windowed else "")
  if min_len is None:
    return "triton", f"{where} (the Mosaic backward is not measured there)"
  if windowed and spec.mask.window_size < MOSAIC_BACKWARD_MIN_WINDOW:
    return "triton", f"{where} < {MOSAIC_BACKWARD_MIN_WINDOW} (not measured there)"
  length = max(spec.mask.q_len, spec.mask.kv_len)
  if length < min_len:
    return "triton", f"{where}, length {length} < {min_len} (not measured there)"
  return "mosaic", f"{where}, length {length} >= {min_len}"


def backward_for(spec: CallSpec) -> str:
  """The backward (``"triton"`` or ``"mosaic"``) this call runs: ``BACKWARD``, or with
  ``"auto"`` the measured rule (docs/design.md §6.2), logged once per choice and reason."""
  name = _backward()
  if name != "auto":
    return name
  name, why = _auto_rule(spec)
  if (name, why) not in _logged:
    _logged.add((name, why))
    log.info("pallas_mosaic_gpu: BACKWARD='auto' runs the %s backward (%s).", name, why)
  return name


def _check(spec: CallSpec) -> None:
  common.check(spec)
  if backward_for(spec).startswith("mosaic"):
    mosaic_backward.check(spec)
  elif spec.block_sizes is not None:  # the Triton backward's tiles (Triton rules)
    from pallas_kernels.gpu import block_sizes

    bs = spec.block_sizes
    block_sizes.check(dataclasses.replace(bs, fwd=bs.dq))


def _fwd(q, r, k, v, segment_ids, spec: CallSpec):
  tile = spec.block_sizes.fwd if spec.block_sizes is not None else None
  tile = tile or common.default_fwd_tile(spec.head_dim)
  return forward.parallax_fwd(
    q,
    r,
    k,
    v,
    segment_ids,
    scale=spec.scale,
    mask=spec.mask,
    block_q=tile.block_q,
    block_k=tile.block_k,
    num_stages=tile.num_stages,  # None: parallax_fwd takes the head dim's default
    interpret=spec.interpret,
  )


def _bwd(q, r, k, v, segment_ids, residuals, do, spec: CallSpec, variant: str | None = None):
  backward_name = variant or backward_for(spec)  # fixed at the op's call (backward_variant)
  do = jnp.asarray(do, q.dtype)
  bs = spec.block_sizes
  if backward_name.startswith("mosaic"):
    return mosaic_backward.parallax_bwd(
      q,
      r,
      k,
      v,
      segment_ids,
      residuals,
      do,
      scale=spec.scale,
      mask=spec.mask,
      cfg_dq=bs.dq if bs is not None else None,
      cfg_dkv=bs.dkv if bs is not None else None,
      interpret=spec.interpret,
      fused=not spec.deterministic,  # dq/dr by TMA reductions in the dk/dv kernel (§5.5)
      stack_qr=False if backward_name == "mosaic_unstacked" else None,  # None: by head_dim
    )
  from pallas_kernels.gpu import backward, block_sizes

  q_len, kv_len = spec.mask.q_len, spec.mask.kv_len
  bs = bs or block_sizes.default_block_sizes(spec.dtype, spec.head_dim, max(q_len, kv_len))
  return backward.parallax_bwd(
    q,
    r,
    k,
    v,
    segment_ids,
    residuals,
    do,
    scale=spec.scale,
    mask=spec.mask,
    cfg_dq=block_sizes.clip(bs.dq, q_len, kv_len),
    cfg_dkv=block_sizes.clip(bs.dkv, q_len, kv_len),
    interpret=spec.interpret,
    fused=not spec.deterministic,  # the atomic single pass (docs/design.md §5.5)
  )


IMPLEMENTATION = Implementation(
  name=common.NAME,
  fwd=_fwd,
  bwd=_bwd,
  platforms=("gpu",),
  check=_check,
  interpretable=True,
  backward_variant=backward_for,
)
