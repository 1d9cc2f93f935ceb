"""The Mosaic GPU backward kernels (``pallas_kernels/mosaic_gpu/backward*.py``).

* scope: what ``check`` / ``check_tiles`` refuse, with the reason;
* interpret mode (CPU): dq, dr, dk, dv against the float64 oracle's gradients with the shared
  tolerances, on residuals of the "xla" forward (the contract is path-independent), over
  causal / non-causal, window, segment ids, GQA, Tq != Tk, padded lengths, one and two consumer
  warpgroups, 32-, 64- and 128-wide streamed tiles. The interpreter cannot run register layouts, a
  transposed or a register wgmma operand: ``BwdOps`` swaps exactly those for plain products,
  so the wgmma path itself is covered by the next two items;
* lowering (CPU): both kernels lower to Mosaic GPU for CUDA (no GPU needed) under Lane and
  Warpgroup lowering semantics (jax 0.10 and 0.11 defaults): layouts, shapes and shared memory
  are checked there;
* GPU mode (``python -m pytest -m gpu tests/test_mosaic_gpu_backward.py``): the kernels
  compiled on a Hopper GPU, the shared case grid (in bf16/fp16 and head dims 64/128) against the
  oracle, and the error against the Triton backward's on the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import CASES, Case, errors, make_inputs, natural_scale, require_gpu
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mosaic_gpu import backward, backward_common, backward_dkv, backward_dq
from pallas_kernels.mosaic_gpu import common as mosaic_common
from pallas_kernels.mosaic_gpu.common import CTA_ORDERS
from parallax_jax.attention import xla
from parallax_jax.attention.block_sizes import BlockSizes, Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.attention.residuals import Residuals
from parallax_jax.attention.validation import validate
from parallax_jax.testing.attention_cases import TOLERANCES, assert_close, oracle_result, scale_of

GPU_COMMAND = "python -m pytest -m gpu tests/test_mosaic_gpu_backward.py -x -q"

TILES = {  # (dq, dkv)
  "default": None,
  "one_wg": (Tile(64, 64, None, 2), Tile(64, 64, None, 2)),
  "wide": (Tile(128, 128, None, 2), Tile(64, 128, None, 3)),  # fits D = 128
  "wide64": (Tile(128, 128, None, 2), Tile(128, 128, None, 2)),  # D = 64 only
  "deep": (Tile(64, 64, None, 4), Tile(64, 64, None, 3)),
  "narrow": (Tile(128, 32, None, 3), Tile(32, 128, None, 3)),  # 32-wide streamed tiles
  "stream64": (Tile(128, 64, None, 2), Tile(64, 128, None, 2)),  # the default until session 10
}


@pytest.fixture(scope="module", autouse=True)
def _interpreter_compile_cache():
  """Compiles each interpreted thread program once (``common.interpret_compile_cache``)."""
  with mosaic_common.interpret_compile_cache():
    yield


# ---------------------------------------------------------------------------------------------
# Scope.


def _spec(dtype="bfloat16", d=64, t=128, seg=False, block_sizes=None):
  q = jnp.zeros((1, t, 2, d), dtype)
  return validate(
    q,
    q,
    q,
    q,
    scale=None,
    causal=True,
    window_size=None,
    segment_ids=jnp.zeros((1, t), jnp.int32) if seg else None,
    interpret=True,
    block_sizes=block_sizes,
  )


def _blocks(dq, dkv):
  return BlockSizes(Tile(64, 64, None, 2), dq, dkv)


def test_check_accepts_defaults():
  for d, seg in itertools.product(backward.HEAD_DIMS, (False, True)):
    backward.check(_spec(d=d, seg=seg))
    backward.check_tiles(*backward.default_tiles(d), d, seg)


@pytest.mark.parametrize(
  "spec_kw,match",
  [
    (dict(dtype="float32"), "float32.*pallas_gpu"),
    (dict(d=96), "head_dim 64 or 128"),
    (dict(block_sizes=_blocks(Tile(32, 64), Tile(64, 64))), r"dq\.block_q must be 64 or 128"),
    (
      dict(block_sizes=_blocks(Tile(64, 256), Tile(64, 64))),
      r"dq\.block_k .*one of \(32, 64, 128\)",
    ),
    (dict(block_sizes=_blocks(Tile(64, 64), Tile(64, 64, 4))), r"dkv\.num_warps must be None"),
    (dict(block_sizes=_blocks(Tile(64, 64), Tile(64, 64, None, 5))), r"dkv\.num_stages"),
    (
      dict(d=128, block_sizes=_blocks(Tile(128, 128, None, 3), Tile(64, 64))),
      r"dq=.* needs \d+ bytes of shared memory",
    ),
    (
      dict(d=128, block_sizes=_blocks(Tile(64, 64), Tile(128, 128, None, 2))),
      r"dkv=.* needs \d+ bytes of shared memory",
    ),
  ],
)
def test_check_rejects(spec_kw, match):
  with pytest.raises(NotImplementedError, match=match):
    backward.check(_spec(**spec_kw))


def test_check_counts_the_fused_kernels_shared_memory():
  """``deterministic=False`` (the fused kernel, +GL/GU and a float32 staging tile per consumer)
  refuses a dk/dv tile the two-pass kernel takes."""
  wide = _blocks(Tile(64, 64), Tile(64, 128, None, 3))
  backward.check(_spec(d=128, block_sizes=wide))
  fused = dataclasses.replace(_spec(d=128, block_sizes=wide), deterministic=False)
  with pytest.raises(NotImplementedError, match=r"dkv=.* needs \d+ bytes of shared memory"):
    backward.check(fused)


# ---------------------------------------------------------------------------------------------
# Interpret mode against the float64 oracle.


def _run(case: Case, tiles, *, interpret: bool, kernel=backward.parallax_bwd):
  """The backward's ``(dq, dr, dk, dv)`` for the case's inputs and cotangent, on residuals of
  the "xla" forward."""
  dt = jnp.dtype(case.dtype)
  q, r, k, v, g = (jnp.asarray(x, jnp.float32).astype(dt) for x in make_inputs(case))
  seg = case.segment_ids()
  seg = None if seg is None else jnp.asarray(seg)
  mask = MaskSpec(case.q_len, case.tk, case.causal, case.window)
  scale = scale_of(case)
  _, res = jax.jit(functools.partial(xla.parallax_fwd, scale=scale, mask=mask))(q, r, k, v, seg)
  kw = {} if tiles is None else dict(cfg_dq=tiles[0], cfg_dkv=tiles[1])
  return kernel(q, r, k, v, seg, res, g, scale=scale, mask=mask, interpret=interpret, **kw)


def _check_grads(grads, case: Case):
  _, want = oracle_result(case)
  natural = natural_scale(case)
  for name, got, ref in zip(("dq", "dr", "dk", "dv"), grads, want, strict=True):
    assert str(got.dtype) == case.dtype and got.shape == ref.shape, (name, got.dtype, got.shape)
    assert_close(name, got, ref, case.dtype, natural)


def _supported(case: Case) -> Case:
  """The shared case in a dtype and head dim these kernels take (bf16 for float32, D -> 64 or
  128), so GPU mode covers the same masks and shapes."""
  dtype = "bfloat16" if case.dtype == "float32" else case.dtype
  return dataclasses.replace(case, dtype=dtype, d=64 if case.d <= 64 else 128, core=False)


GPU_CASES = list(dict.fromkeys(_supported(c) for c in CASES))
GPU_CORE_CASES = list(dict.fromkeys(_supported(c) for c in CASES if c.core))


_BF16 = dict(dtype="bfloat16")
INTERPRET_CASES = [  # (case, tiles name, slow)
  (Case(1, 128, None, 2, 2, 64, inputs="rms", **_BF16), "default", False),
  (Case(1, 256, None, 2, 1, 64, window=48, **_BF16), "default", False),
  (Case(1, 128, None, 2, 1, 64, dtype="float16", segments=(30, 60, 38)), "one_wg", False),
  (Case(1, 100, None, 2, 2, 64, causal=False, **_BF16), "wide64", True),
  (Case(1, 64, 192, 2, 1, 64, **_BF16), "one_wg", True),
  (Case(1, 256, None, 2, 1, 128, window=100, **_BF16), "wide", True),
  (Case(1, 200, None, 4, 1, 128, segments=(70, 130), window=33, **_BF16), "deep", True),
  (Case(1, 256, None, 2, 1, 128, window=100, **_BF16), "narrow", False),
  (Case(1, 256, None, 2, 1, 128, window=100, **_BF16), "stream64", True),
  (Case(1, 256, None, 2, 2, 64, window=200, dtype="float16", inputs="rms"), "wide64", True),
]


@pytest.mark.parametrize(
  "case,tiles",
  [
    pytest.param(c, t, id=f"{t}-{c.id}", marks=[pytest.mark.slow] if slow else [])
    for c, t, slow in INTERPRET_CASES
  ],
)
def test_interpret_matches_oracle(case, tiles):
  _check_grads(_run(case, TILES[tiles], interpret=True), case)


@pytest.mark.parametrize(
  "order",  # the earlier order only in the slow suite: the kernels use the first
  [pytest.param(o, marks=[pytest.mark.slow] if o != CTA_ORDERS[0] else []) for o in CTA_ORDERS],
)
def test_interpret_cta_orders(order):
  """Both CTA orders compute the same gradients. Batch, heads and sequence blocks all differ
  (3, 4, 2), so a grid axis named for the wrong one would leave blocks uncomputed."""
  case = Case(3, 256, None, 4, 2, 64, **_BF16)
  kernel = functools.partial(backward.parallax_bwd, cta_order=order)
  _check_grads(_run(case, TILES["default"], interpret=True, kernel=kernel), case)


QR_TILES_CASES = [  # (case, tiles, fused): GQA and a window; segments at D 128; Tq > Tk
  (Case(1, 256, None, 4, 2, 64, window=100, **_BF16), "default", False),
  (Case(2, 128, None, 2, 1, 128, dtype="float16", segments=(50, 78)), "default", False),
  (Case(1, 150, 60, 2, 1, 64, **_BF16), "one_wg", False),
  (Case(1, 256, None, 4, 2, 64, window=100, **_BF16), "default", True),
]


@pytest.mark.parametrize(
  "case,tiles,fused",
  [pytest.param(c, t, f, id=f"{t}-{'fused-' if f else ''}{c.id}") for c, t, f in QR_TILES_CASES],
)
def test_interpret_other_qr_tiles_match_oracle(case, tiles, fused):
  """The dk/dv kernel's Q/R tiling that is not the head dim's default (the grids run that one,
  ``backward_dkv.default_stack_qr``): separate Q and R tiles, two matmuls for ``S^T`` and
  ``T^T``, where the default forms ``[S^T | T^T]`` from one stacked tile and splits it. The
  four gradients against the float64 oracle."""
  stack_qr = not backward_dkv.default_stack_qr(case.d)
  kernel = functools.partial(backward.parallax_bwd, stack_qr=stack_qr, fused=fused)
  _check_grads(_run(case, TILES[tiles], interpret=True, kernel=kernel), case)


ROW_PACKING_CASES = [  # a window inside a block, segments, Tq > Tk (rows that see nothing)
  Case(1, 256, None, 4, 2, 64, window=100, **_BF16),
  Case(2, 128, None, 2, 1, 128, dtype="float16", segments=(50, 78)),
  Case(1, 150, 60, 2, 1, 64, **_BF16),
]


@pytest.mark.parametrize(  # a diagonal by default (each case, both kernels), the rest under -m slow
  "case, fused",
  [
    pytest.param(
      c,
      fused,
      id=f"{c.id}-{'fused' if fused else 'two_pass'}",
      marks=[] if fused == (i % 2 == 0) else [pytest.mark.slow],
    )
    for i, c in enumerate(ROW_PACKING_CASES)
    for fused in (False, True)
  ],
)
def test_row_constants_packed_in_xla_change_no_bit(case, fused):
  """``1 + bart`` and ``dO.barv - dO.o`` formed once per row in ``prepare`` (the default) give
  the same bits as the kernels forming them per element (``pack_row_constants=False``): the
  same float32 operations, only moved. Correctness against the oracle is the other tests'."""
  packed, earlier = (
    _run(
      case,
      None,
      interpret=True,
      kernel=functools.partial(backward.parallax_bwd, fused=fused, pack_row_constants=pack),
    )
    for pack in (True, False)
  )
  for name, a, b in zip(("dq", "dr", "dk", "dv"), packed, earlier, strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), name)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["two_pass", "fused"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GPU_CASES])
def test_interpret_shared_grid(case, fused):
  """The whole shared grid (as GPU mode runs it: bf16/fp16, D 64/128) with the default tiles,
  for the two-pass and the fused backward."""
  kernel = functools.partial(backward.parallax_bwd, fused=fused)
  _check_grads(_run(case, None, interpret=True, kernel=kernel), case)


FUSED_CASES = [  # (case, tiles name, slow): the fused backward (dq/dr added in the dk/dv kernel)
  (Case(1, 128, None, 2, 1, 64, **_BF16), "default", False),
  (Case(1, 256, None, 4, 2, 128, window=100, inputs="rms", **_BF16), "default", False),
  (Case(1, 128, None, 2, 1, 64, dtype="float16", segments=(30, 60, 38)), "one_wg", False),
  (Case(2, 200, None, 4, 1, 128, segments=(70, 130), window=33, **_BF16), "narrow", True),
  (Case(1, 64, 192, 2, 1, 64, **_BF16), "one_wg", True),
  (Case(1, 100, None, 2, 2, 64, causal=False, **_BF16), "deep", True),
]  # (the wide tiles do not fit the fused kernel's shared memory: check_tiles refuses them)


@pytest.mark.parametrize(
  "case,tiles",
  [
    pytest.param(c, t, id=f"{t}-{c.id}", marks=[pytest.mark.slow] if slow else [])
    for c, t, slow in FUSED_CASES
  ],
)
def test_interpret_fused_matches_oracle(case, tiles):
  """``fused=True``: the dk/dv kernel also yields every (key block, warpgroup, query tile)'s
  ``c GL`` and ``GU`` tiles, contracted with K in XLA in interpret mode (the interpreter has no
  TMA reductions); the four gradients against the float64 oracle. GQA, windows, segment ids,
  Tq != Tk and two consumers are all in the grid: a tile added to the wrong rows, head or key
  block fails it."""
  kernel = functools.partial(backward.parallax_bwd, fused=True)
  _check_grads(_run(case, TILES[tiles], interpret=True, kernel=kernel), case)


def test_fused_is_wired_to_deterministic_false(monkeypatch):
  """``BACKWARD="mosaic"`` with ``deterministic=False`` runs the fused kernel; ``"auto"`` never
  picks it (unmeasured on a GPU), and ``deterministic=True`` keeps the two passes."""
  import re

  from pallas_kernels.mosaic_gpu import implementation
  from parallax_jax import parallax_attention

  x = jnp.ones((1, 128, 2, 64), jnp.bfloat16)

  def kernels(backward_name, deterministic):
    def f(*a):
      with implementation.use_backward(backward_name):
        o, pullback = jax.vjp(
          lambda *b: parallax_attention(
            *b, implementation="pallas_mosaic_gpu", interpret=True, deterministic=deterministic
          ),
          *a,
        )
      return pullback(o)

    return set(re.findall(r"parallax_bwd_\w+", str(jax.make_jaxpr(f)(x, x, x, x))))

  # (the dk/dv kernels' names carry "_stacked": the default Q/R tiling)
  assert kernels("mosaic", False) == {"parallax_bwd_dkv_fused_stacked_mgpu"}
  assert kernels("mosaic", True) == {"parallax_bwd_dq_mgpu", "parallax_bwd_dkv_stacked_mgpu"}
  assert not any("fused" in name for name in kernels("auto", False))


def test_rows_without_keys_get_zero_gradients():
  """Tq > Tk, causal: the first Tq - Tk rows see no key: dq = dr = 0 exactly, all finite."""
  case = Case(1, 128, 64, 2, 2, 64, **_BF16)
  grads = _run(case, TILES["one_wg"], interpret=True)
  dq, dr = (np.asarray(x, np.float32) for x in grads[:2])
  assert np.all(dq[:, :64] == 0) and np.all(dr[:, :64] == 0)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in grads)
  _check_grads(grads, case)


# ---------------------------------------------------------------------------------------------
# Lowering for CUDA on CPU (Mosaic GPU's own checks: layouts, wgmma shapes, shared memory).


def _lower(d, seg, tiles, semantics, window=200, group=2, fused=False, **kw):
  plgpu_params = plgpu.CompilerParams(
    approx_math=True, lowering_semantics=getattr(plgpu.LoweringSemantics, semantics)
  )
  s = jax.ShapeDtypeStruct
  t = 512
  q = s((1, t, 2 * group, d), jnp.bfloat16)
  k = s((1, t, 2, d), jnp.bfloat16)
  res = Residuals(q, q, s((1, 2 * group, t), jnp.float32), s((1, 2 * group, t), jnp.float32))
  segs = s((1, t), jnp.int32) if seg else None
  fn = functools.partial(
    backward.parallax_bwd,
    scale=0.125,
    mask=MaskSpec(t, t, True, window),
    cfg_dq=tiles[0],
    cfg_dkv=tiles[1],
    fused=fused,
    **kw,
  )
  original = backward_common.compiler_params
  backward_common.compiler_params = lambda: plgpu_params
  try:
    text = jax.jit(fn).trace(q, q, k, k, segs, res, q).lower(lowering_platforms=("cuda",))
  finally:
    backward_common.compiler_params = original
  text = text.as_text()
  assert text.count("mosaic_gpu") >= 2
  return text


def _lowering_params():
  out = []
  for d, seg in ((64, True), (128, False), (128, True)):
    for cta, stream, stages in itertools.product(
      backward.CTA_BLOCKS, backward.STREAM_BLOCKS, backward.STAGES
    ):
      tiles = (Tile(cta, stream, None, stages), Tile(stream, cta, None, stages))
      try:
        backward.check_tiles(*tiles, d, seg)
      except NotImplementedError:
        continue
      default = tiles == backward.default_tiles(d) and seg == (d == 128)
      for sem in ("Lane", "Warpgroup"):
        marks = [] if default else [pytest.mark.slow]
        name = f"D{d}-{'seg-' if seg else ''}{cta}x{stream}x{stages}-{sem}"
        out.append(pytest.param(d, seg, tiles, sem, id=name, marks=marks))
  return out


@pytest.mark.parametrize("d,seg,tiles,semantics", _lowering_params())
def test_lowers_for_cuda(d, seg, tiles, semantics):
  """Every tile ``check_tiles`` accepts lowers (Pallas -> Mosaic GPU, CUDA target) with GQA, a
  window and segment ids; ptxas (registers) runs only on the GPU."""
  _lower(d, seg, tiles, semantics)


@pytest.mark.parametrize("fused", [False, True], ids=["two_pass", "fused"])
def test_earlier_row_packing_lowers_for_cuda(fused):
  """``pack_row_constants=False`` (the kernels before session 15, kept for
  ``experiments/bench_bwd_math.py``) still lowers."""
  tiles = backward.default_tiles(128)
  _lower(128, True, tiles, "Lane", fused=fused, pack_row_constants=False)


@pytest.mark.parametrize("tiles", ["default", "one_wg"])
@pytest.mark.parametrize("d", backward.HEAD_DIMS)
def test_fused_lowers_for_cuda(d, tiles):
  """The fused kernel (two consumers sharing the dq/dr work, or one doing both; GQA, window,
  segment ids) lowers for CUDA: one Mosaic kernel, whose dq/dr accumulators are aliased in and
  out and added to by TMA reductions."""
  text = _lower(d, True, TILES[tiles] or backward.default_tiles(d), "Lane", fused=True)
  assert text.count("custom_call @mosaic_gpu") == 1  # the two-pass backward lowers two
  assert "output_operand_alias" in text and "cp.reduce.async.bulk" in text


@pytest.mark.parametrize("fused", [False, True], ids=["two_pass", "fused_chunks1"])
def test_register_variants_lower_for_cuda(fused):
  """The split before the default's (producer 40, consumers 232) lowers for both backwards, and
  the fused kernel with its dq/dr parts formed whole (GQA, window, segment ids). The defaults
  (producer 24; two row chunks at D = 128) lower in the tests above."""
  kw = dict(fused_chunks=1) if fused else {}
  tiles = backward.default_tiles(128)
  text = _lower(128, True, tiles, "Lane", fused=fused, producer_registers=40, **kw)
  assert text.count("custom_call @mosaic_gpu") == (1 if fused else 2)


@functools.cache
def _default_tiles_lowering(d: int, fused: bool, **kw) -> str:
  """The lowered text at ``default_tiles(d)`` (segment ids, GQA, a window): a variant's
  lowering must differ from the same call's without the variant (else its flag never reached
  the kernel)."""
  return _lower(d, True, backward.default_tiles(d), "Lane", fused=fused, **kw)


@pytest.mark.parametrize("fused", [False, True], ids=["two_pass", "fused"])
@pytest.mark.parametrize("d", backward.HEAD_DIMS)
def test_other_qr_tiles_lower_for_cuda(d, fused):
  """The Q/R tiling that is not the head dim's default lowers for CUDA (separate Q and R tiles;
  the default stacks them: one N = 2 block_q wgmma for ``S^T`` and ``T^T``, split in registers,
  Q's and R's SMEM tiles as row slices of the stacked one)."""
  stack_qr = not backward_dkv.default_stack_qr(d)
  text = _lower(d, True, backward.default_tiles(d), "Lane", fused=fused, stack_qr=stack_qr)
  assert text != _default_tiles_lowering(d, fused)


def test_register_variants_are_checked():
  """A producer register count setmaxnreg cannot take, or row chunks below wgmma's M of 64,
  raise before anything is traced."""
  assert mosaic_common.consumer_registers(40) == 232
  assert mosaic_common.consumer_registers(24) == 240
  assert mosaic_common.consumer_registers(40, consumers=1) == 256  # capped
  assert backward_dkv.default_fused_chunks(128) == 2 and backward_dkv.default_fused_chunks(64) == 1
  with pytest.raises(ValueError, match="producer_registers must be one of"):
    _lower(128, False, backward.default_tiles(128), "Lane", producer_registers=20)
  with pytest.raises(NotImplementedError, match="fused_chunks must be 1 or 2"):
    _lower(64, False, backward.default_tiles(64), "Lane", fused=True, fused_chunks=2)


# ---------------------------------------------------------------------------------------------
# GPU mode.


def _gpu_params():
  """Default tiles on every case, the other tile sets on the core cases."""
  pairs = [(c, "default") for c in GPU_CASES]
  pairs += [(c, t) for t in TILES if t != "default" for c in GPU_CORE_CASES]
  return [pytest.param(c, t, id=f"{t}-{c.id}") for c, t in pairs]


@pytest.mark.gpu
@pytest.mark.parametrize("case,tiles", _gpu_params())
def test_compiled_matches_oracle(case, tiles):
  """GPU mode (``GPU_COMMAND``): the compiled kernels against the oracle."""
  require_gpu()
  if TILES[tiles] is not None:
    try:
      backward.check_tiles(*TILES[tiles], case.d, case.segments is not None)
    except NotImplementedError as e:
      pytest.skip(f"tile set {tiles!r} does not fit this case: {e}")
  _check_grads(_run(case, TILES[tiles], interpret=False), case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GPU_CASES])
def test_compiled_fused_matches_oracle(case):
  """GPU mode: the fused kernel (TMA reductions of ``K^T (c GL^T)``, ``K^T GU^T``) against the
  oracle on the whole shared grid."""
  require_gpu()
  kernel = functools.partial(backward.parallax_bwd, fused=True)
  _check_grads(_run(case, None, interpret=False, kernel=kernel), case)


REGISTER_VARIANTS = {  # the non-default kernel variants (experiments/bench_bwd_math.py)
  "producer40": dict(producer_registers=40),
  "fused_producer40_chunks1": dict(fused=True, producer_registers=40, fused_chunks=1),
  # the Q/R tiling the head dims do not default to (backward_dkv.default_stack_qr: stacked)
  "unstacked": dict(stack_qr=False),
  "fused_unstacked": dict(fused=True, stack_qr=False),
}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(REGISTER_VARIANTS))
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GPU_CORE_CASES])
def test_compiled_register_variants_match_oracle(case, variant):
  """GPU mode: the non-default variants (register split, the other Q/R tiling) against the
  oracle (the defaults run in the grids above)."""
  require_gpu()
  kw = REGISTER_VARIANTS[variant]
  if kw.get("stack_qr", None) == backward_dkv.default_stack_qr(case.d):
    pytest.skip(f"stack_qr={kw['stack_qr']} is the default at D = {case.d}: run in the grids")
  kernel = functools.partial(backward.parallax_bwd, **kw)
  _check_grads(_run(case, None, interpret=False, kernel=kernel), case)


def _triton_bwd(case: Case):
  from pallas_kernels.gpu import backward as triton_backward
  from pallas_kernels.gpu import block_sizes as triton_blocks

  bs = triton_blocks.default_block_sizes(case.dtype, case.d, max(case.q_len, case.tk))
  return functools.partial(
    triton_backward.parallax_bwd,
    cfg_dq=triton_blocks.clip(bs.dq, case.q_len, case.tk),
    cfg_dkv=triton_blocks.clip(bs.dkv, case.q_len, case.tk),
  )


@pytest.mark.gpu
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GPU_CASES])
def test_compiled_error_at_most_triton(case):
  """The issue's bar: this backward's error (RMS ratio against the oracle) is at most the Triton
  backward's on the same residuals and cotangent, up to summation-order noise (10%, plus 1e-3
  of the dtype's tolerance)."""
  require_gpu()
  ours = _run(case, None, interpret=False)
  theirs = _run(case, None, interpret=False, kernel=_triton_bwd(case))
  _, want = oracle_result(case)
  natural = natural_scale(case)
  slack = 1e-3 * TOLERANCES[case.dtype][1]
  for name, a, b, ref in zip(("dq", "dr", "dk", "dv"), ours, theirs, want, strict=True):
    ours_rms, theirs_rms = errors(a, ref, natural)[1], errors(b, ref, natural)[1]
    assert ours_rms <= 1.1 * theirs_rms + slack, (name, ours_rms, theirs_rms)


SWEEP_SHAPES = [  # (B, L, H, D, window): the benchmark shapes, D = 64, a window
  (4, 4096, 16, 128, None),
  (2, 8192, 16, 128, None),
  (8, 2048, 16, 128, None),
  (1, 16384, 16, 128, None),
  (4, 4096, 16, 64, None),
  (4, 4096, 16, 128, 1024),
]
SWEEP_DQ = [Tile(128, 64, None, 2), Tile(128, 64, None, 3), Tile(64, 64, None, 2)]
SWEEP_DQ += [Tile(128, 128, None, 2), Tile(64, 128, None, 2), Tile(128, 32, None, 2)]
SWEEP_DQ += [Tile(128, 32, None, 3)]
SWEEP_DKV = [Tile(64, 128, None, 2), Tile(64, 128, None, 3), Tile(64, 64, None, 2)]
SWEEP_DKV += [Tile(128, 128, None, 2), Tile(128, 64, None, 2), Tile(32, 128, None, 2)]
SWEEP_DKV += [Tile(32, 128, None, 3)]


def _median_ms(fn, *args, iters=10):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return float(np.median(times))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [pytest.param(s, id="x".join(map(str, s))) for s in SWEEP_SHAPES])
def test_tile_sweep(shape, capsys):
  """Times each backward kernel per tile (and the Triton backward) at the benchmark shapes, bf16,
  causal; prints one line per config (run with ``-s``) for choosing ``default_tiles``."""
  require_gpu()
  batch, length, heads, d, window = shape
  mask = MaskSpec(length, length, True, window)
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q, r, k, v, g = (jax.random.normal(key, (batch, length, heads, d), jnp.bfloat16) for key in keys)
  scale = d**-0.5
  _, res = jax.jit(functools.partial(xla.parallax_fwd, scale=scale, mask=mask))(q, r, k, v)
  args = jax.jit(functools.partial(backward.prepare, multiple_q=128, multiple_k=128))(
    q, r, k, v, None, res, g
  )
  lines = []
  for name, tiles, kernel in (
    ("dq", SWEEP_DQ, backward_dq.dq_dr),
    ("dkv", SWEEP_DKV, backward_dkv.dk_dv),
    ("fused dkv+dq", SWEEP_DKV, functools.partial(backward_dkv.dk_dv, fused=True)),
  ):
    for tile in tiles:
      dq_tile, dkv_tile = backward.default_tiles(d)
      pair = (tile, dkv_tile) if name == "dq" else (dq_tile, tile)
      try:
        backward.check_tiles(*pair, d, False, name.startswith("fused"))
      except NotImplementedError:
        continue
      fn = jax.jit(
        functools.partial(
          kernel,
          scale=scale,
          mask=mask,
          block_q=tile.block_q,
          block_k=tile.block_k,
          stages=tile.num_stages,
          interpret=False,
        )
      )
      lines.append(
        f"{shape} {name} {tile.block_q}x{tile.block_k}x{tile.num_stages}: "
        f"{_median_ms(fn, *args):.3f} ms"
      )
  case = Case(batch, length, None, heads, heads, d, window=window, dtype="bfloat16")
  triton = jax.jit(functools.partial(_triton_bwd(case), scale=scale, mask=mask))
  lines.append(f"{shape} triton bwd: {_median_ms(triton, q, r, k, v, None, res, g):.3f} ms")
  ours = jax.jit(functools.partial(backward.parallax_bwd, scale=scale, mask=mask))
  lines.append(
    f"{shape} mosaic bwd (default tiles): {_median_ms(ours, q, r, k, v, None, res, g):.3f} ms"
  )
  fused = jax.jit(functools.partial(backward.parallax_bwd, scale=scale, mask=mask, fused=True))
  fused_ms = _median_ms(fused, q, r, k, v, None, res, g)
  lines.append(f"{shape} fused mosaic bwd (default tiles): {fused_ms:.3f} ms")
  with capsys.disabled():
    print("\n" + "\n".join(lines))
