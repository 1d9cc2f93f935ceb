"""The Mosaic TPU kernels ("pallas_tpu"), run on CPU in Pallas interpret mode.

Outputs and all four gradients (``jax.vjp`` with the case's cotangent) over the shared case
grid (``parallax_jax/testing/attention_cases.py``) with unequal q/k block configs, against the
float64 oracle with the shared tolerances (the default blocks run in
tests/test_attention_oracle.py). Also: block size validation, ``check``, the choice of
``implementation=None``, the static schedules and tile classification against brute force,
empty rows, residual interchangeability with "xla", one run in the TPU-semantics interpreter,
and the Pallas -> Mosaic lowering of all three kernels for the TPU platform.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import (
  TOLERANCES,
  Impl,
  block_config_params,
  check_case,
  run_op,
)
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import IMPLEMENTATION
from pallas_kernels.tpu import implementation as tpu_impl
from parallax_jax.attention import (
  BlockSizes,
  MaskSpec,
  Tile,
  parallax_attention,
  parallax_bwd,
  parallax_fwd,
  parallax_reference,
)
from parallax_jax.attention.validation import validate

SMALL = BlockSizes.uniform(128)
F32_TOL = TOLERANCES["float32"][0]  # max-norm part of the shared table


# ------------------------------------------------------------------------------------------
# Helpers


@dataclasses.dataclass(frozen=True)
class Case:
  b: int = 1
  tq: int = 200
  tk: int | None = None  # None: tq
  hq: int = 2
  hkv: int = 1
  d: int = 64
  causal: bool = True
  window: int | None = None
  segments: bool = False
  dtype: str = "float32"
  blocks: BlockSizes | None = SMALL

  @property
  def kv_len(self):
    return self.tq if self.tk is None else self.tk


def _inputs(case: Case, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(keys[0], (case.b, case.tq, case.hq, case.d)).astype(dt)
  # Small r keeps t = r.k (unscaled) in a realistic range for the low-precision checks.
  r = (0.3 * jax.random.normal(keys[1], (case.b, case.tq, case.hq, case.d))).astype(dt)
  k = jax.random.normal(keys[2], (case.b, case.kv_len, case.hkv, case.d)).astype(dt)
  v = jax.random.normal(keys[3], (case.b, case.kv_len, case.hkv, case.d)).astype(dt)
  g = jax.random.normal(keys[4], (case.b, case.tq, case.hq, case.d)).astype(dt)
  seg = None
  if case.segments:
    starts = jax.random.bernoulli(keys[5], 0.04, (case.b, case.tq)).astype(jnp.int32)
    seg = jnp.cumsum(starts, axis=1)
  return q, r, k, v, g, seg


def _kernel_outputs(case: Case, q, r, k, v, g, seg):
  def f(q, r, k, v):
    return parallax_attention(
      q,
      r,
      k,
      v,
      causal=case.causal,
      window_size=case.window,
      segment_ids=seg,
      implementation="pallas_tpu",
      interpret=True,
      block_sizes=case.blocks,
    )

  @jax.jit
  def run(q, r, k, v, g):
    o, vjp = jax.vjp(f, q, r, k, v)
    return (o, *vjp(g))

  return run(q, r, k, v, g)


def _reference_outputs(case: Case, q, r, k, v, g, seg):
  f32 = [x.astype(jnp.float32) for x in (q, r, k, v, g)]
  mask = MaskSpec(case.tq, case.kv_len, case.causal, case.window)

  def f(q, r, k, v):
    return parallax_reference(q, r, k, v, scale=case.d**-0.5, mask=mask, segment_ids=seg)

  o, vjp = jax.vjp(f, *f32[:4])
  return (o, *vjp(f32[4]))


def _rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ------------------------------------------------------------------------------------------
# Block sizes and check()


def _spec(**kw):
  x = jnp.zeros((1, 16, 2, 8), jnp.float32)
  return validate(
    x,
    x,
    x,
    x,
    scale=None,
    causal=True,
    window_size=None,
    segment_ids=None,
    interpret=True,
    block_sizes=kw.pop("block_sizes", None),
  )


def test_check_rejects_float64_and_foreign_block_sizes():
  with pytest.raises(NotImplementedError, match="float64"):
    IMPLEMENTATION.check(dataclasses.replace(_spec(), dtype="float64"))
  with pytest.raises(NotImplementedError, match="multiple of 128"):
    IMPLEMENTATION.check(_spec(block_sizes=BlockSizes.uniform(64)))
  IMPLEMENTATION.check(_spec(block_sizes=SMALL))
  IMPLEMENTATION.check(_spec())


def test_api_refuses_foreign_block_sizes():
  x = jnp.zeros((1, 16, 2, 8), jnp.float32)
  with pytest.raises(NotImplementedError, match=r"BlockSizes\(\.\.\.\)"):
    parallax_attention(x, x, x, x, implementation="pallas_tpu", interpret=True, block_sizes=(8, 8))


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="on a TPU the kernels compile")
def test_api_refuses_cpu_without_interpret():
  x = jnp.zeros((1, 16, 2, 8), jnp.float32)
  with pytest.raises(NotImplementedError, match="interpret=True"):
    parallax_attention(x, x, x, x, implementation="pallas_tpu")


def _traces_a_kernel(x) -> bool:
  jaxpr = jax.make_jaxpr(lambda x: parallax_attention(x, x, x, x))(x)
  return "pallas_call" in str(jaxpr)


def test_default_implementation_on_a_tpu_backend(monkeypatch):
  """implementation=None takes the kernels on tpu, falls back to "xla" for calls they refuse
  (float64), and never takes them on cpu (traced only: nothing compiles)."""
  x = jnp.zeros((1, 16, 2, 8), jnp.float32)
  assert not _traces_a_kernel(x)  # cpu
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert _traces_a_kernel(x)
  with jax.enable_x64(True):
    assert not _traces_a_kernel(x.astype(jnp.float64))


# ------------------------------------------------------------------------------------------
# Kernel block configs over the shared case grid (parallax_jax/testing/attention_cases.py),
# against the float64 oracle with the shared tolerances. The oracle test
# (test_attention_oracle.py) runs the default blocks; these add unequal q/k blocks (and dq/dkv
# blocks unlike the forward's). Each core case takes one config by default, every pairing runs
# under -m slow.

BLOCK_CONFIGS = {
  "128": BlockSizes.uniform(128),
  "256x128": BlockSizes(Tile(256, 128), Tile(256, 128), Tile(128, 256)),
  "128x256": BlockSizes(Tile(128, 256), Tile(128, 256), Tile(256, 128)),
}


@pytest.mark.parametrize("case,blocks", block_config_params(BLOCK_CONFIGS))
def test_block_configs_match_oracle(case, blocks):
  o, grads = run_op(Impl("pallas_tpu", interpret=True), case, block_sizes=blocks)
  check_case(o, grads, case)


def test_empty_rows_are_zero_with_finite_grads():
  case = Case(tq=150, tk=60, d=32)
  q, r, k, v, g, seg = _inputs(case)
  o, dq, dr, dk, dv = _kernel_outputs(case, q, r, k, v, g, seg)
  empty = case.tq - case.kv_len  # rows before key 0's position see nothing
  assert bool(jnp.all(o[:, :empty] == 0)) and bool(jnp.all(dq[:, :empty] == 0))
  assert bool(jnp.all(dr[:, :empty] == 0))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in (dk, dv))


def test_segments_across_blocks_match_the_reference():
  """Documents spanning several 128-row blocks, so a tile's key block differs from its query
  block: each kernel must read the key block's segment ids (the shared grid's segment cases
  fit in one block)."""
  case = Case(tq=300, hq=2, hkv=1, d=64)
  q, r, k, v, g, _ = _inputs(case)
  seg = jnp.asarray(np.repeat([0, 1, 2], [100, 120, 80])[None], jnp.int32)
  got = _kernel_outputs(case, q, r, k, v, g, seg)
  want = _reference_outputs(case, q, r, k, v, g, seg)
  for name, x, ref in zip(("o", "dq", "dr", "dk", "dv"), got, want, strict=True):
    assert _rel_err(x, ref) < F32_TOL, name


def test_r_zero_is_softmax_attention():
  case = Case(tq=130, d=64, causal=True)
  q, _, k, v, _, _ = _inputs(case)
  r = jnp.zeros_like(q)
  o = parallax_attention(q, r, k, v, implementation="pallas_tpu", interpret=True, block_sizes=SMALL)
  s = jnp.einsum("bihd,bjhd->bhij", q, jnp.repeat(k, 2, axis=2)) * case.d**-0.5
  s = jnp.where(jnp.tril(jnp.ones((130, 130), bool)), s, -jnp.inf)
  want = jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(s, -1), jnp.repeat(v, 2, axis=2))
  assert _rel_err(o, want) < F32_TOL


# ------------------------------------------------------------------------------------------
# Interchangeability with "xla", TPU-semantics interpreter, Mosaic lowering


def test_residuals_interchangeable_with_xla():
  case = Case(b=1, tq=111, d=60, hq=2, hkv=1, window=70)
  q, r, k, v, g, _ = _inputs(case)
  spec = validate(
    q,
    r,
    k,
    v,
    scale=None,
    causal=True,
    window_size=case.window,
    segment_ids=None,
    interpret=True,
    block_sizes=SMALL,
  )
  o_t, res_t = tpu_impl.fwd(q, r, k, v, None, spec)
  o_x, res_x = parallax_fwd(q, r, k, v, scale=spec.scale, mask=spec.mask)
  assert _rel_err(o_t, o_x) < F32_TOL
  for name in ("o", "barv", "lse", "bart"):
    a, b = getattr(res_t, name), getattr(res_x, name)
    assert a.shape == b.shape and a.dtype == b.dtype, name
    assert _rel_err(a, b) < F32_TOL, name
  grads_t = tpu_impl.bwd(q, r, k, v, None, res_x, g, spec)  # kernels on xla residuals
  grads_x = parallax_bwd(q, r, k, v, None, res_t, g, scale=spec.scale, mask=spec.mask)
  for a, b in zip(grads_t, grads_x, strict=True):
    assert _rel_err(a, b) < F32_TOL


def test_tpu_semantics_interpreter():
  """DMAs, VMEM and scratch simulated (uninitialised memory reads as NaN)."""
  case = Case(tq=200, tk=256, hq=4, hkv=2, d=60, window=90)
  q, r, k, v, g, seg = _inputs(case)
  params = pltpu.InterpretParams(uninitialized_memory="nan")
  with pltpu.force_tpu_interpret_mode(params):
    got = _kernel_outputs(case, q, r, k, v, g, seg)
  want = _reference_outputs(case, q, r, k, v, g, seg)
  for x, ref in zip(got, want, strict=True):
    assert _rel_err(x, ref) < F32_TOL


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kernels_lower_to_mosaic(dtype):
  """Pallas -> Mosaic lowering for the TPU platform (no TPU needed; not the layout passes)."""
  b, t, hq, hkv, d = 1, 1000, 4, 2, 100
  q = jnp.zeros((b, t, hq, d), dtype)
  k = jnp.zeros((b, t, hkv, d), dtype)
  seg = jnp.zeros((b, t), jnp.int32)
  spec = validate(
    q,
    q,
    k,
    k,
    scale=None,
    causal=True,
    window_size=300,
    segment_ids=seg,
    interpret=False,
    block_sizes=None,
  )
  fwd = jax.jit(tpu_impl.fwd, static_argnums=5).trace(q, q, k, k, seg, spec)
  _, res = jax.eval_shape(tpu_impl.fwd, q, q, k, k, seg, spec)
  res = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), res)
  bwd = jax.jit(tpu_impl.bwd, static_argnums=7).trace(q, q, k, k, seg, res, q, spec)
  text = (
    fwd.lower(lowering_platforms=("tpu",)).as_text()
    + bwd.lower(lowering_platforms=("tpu",)).as_text()
  )
  assert text.count("tpu_custom_call") == 3


def test_gqa_float32_with_x64_enabled():
  """With x64 on, float32 GQA inputs run (the kv-head index map divided an int32 program id
  by an int64 constant: TypeError) and match a float64 autodiff of the formula."""

  def dense(q, r, k, v):  # float64, causal, G = 2
    k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(np.tril(np.ones((9, 9), bool)), s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    t = jnp.einsum("bihd,bjhd->bhij", r, k)
    a = p * (1 + (p * t).sum(-1, keepdims=True) - t)
    return jnp.einsum("bhij,bjhd->bihd", a, v)

  rng = np.random.default_rng(0)
  x = [rng.normal(size=(1, 9, h, 8)).astype(np.float32) for h in (2, 2, 1, 1)]
  x[1] /= np.sqrt(8)
  do = rng.normal(size=(1, 9, 2, 8)).astype(np.float32)
  with jax.enable_x64(True):
    op = lambda *a: parallax_attention(*a, implementation="pallas_tpu", interpret=True)
    o, vjp = jax.vjp(op, *map(jnp.asarray, x))
    ref, ref_vjp = jax.vjp(dense, *(jnp.asarray(a, jnp.float64) for a in x))
    got_all = (o, *vjp(jnp.asarray(do)))
    want_all = (ref, *ref_vjp(jnp.asarray(do, jnp.float64)))
    for got, want in zip(got_all, want_all, strict=True):
      got, want = np.asarray(got, np.float64), np.asarray(want)
      assert np.abs(got - want).max() / np.abs(want).max() < F32_TOL
