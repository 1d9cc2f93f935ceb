"""Kernel-specific checks of the Pallas GPU (Triton) kernels, run in interpret mode on CPU.

* what the kernels serve (dtypes, head dims, backends); block sizes are checked in
  tests/test_block_sizes.py and the tile classes the loops use in tests/test_masking.py;
* the shared case grid (``parallax_jax/testing/attention_cases.py``) with small and
  block_q > block_k tiles against the float64 oracle (the default blocks run in
  tests/test_attention_oracle.py);
* ``implementation=None`` picks the kernels on a GPU backend; explicit requests elsewhere raise.

GPU mode: ``python -m pytest -m gpu`` compiles the kernels on a real GPU (``interpret=False``)
and runs the whole shared grid against the oracle with the shared tolerances.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import (
  Impl,
  block_config_params,
  check_case,
  gpu_params,
  require_gpu,
  run_op,
)
from jax._src.pallas.triton import lowering as triton_lowering

from pallas_kernels.gpu import IMPLEMENTATION
from parallax_jax import BlockSizes, MaskSpec, Tile, parallax_attention
from parallax_jax.attention import implementations
from parallax_jax.attention.validation import validate

# ---------------------------------------------------------------------------------------------
# What the kernels serve (block sizes: tests/test_block_sizes.py).


def _q(dtype=jnp.float32, t=16, d=32):
  return jnp.zeros((1, t, 2, d), dtype)


def _validate(q, *, interpret: bool):
  """The causal self-attention ``CallSpec`` of ``q`` as q, r, k and v."""
  return validate(
    q,
    q,
    q,
    q,
    scale=None,
    causal=True,
    window_size=None,
    segment_ids=None,
    interpret=interpret,
    block_sizes=None,
  )


def test_check_rejects():
  q = _q()
  with pytest.raises(NotImplementedError, match=r"BlockSizes\(\.\.\.\)"):
    parallax_attention(
      q, q, q, q, implementation="pallas_gpu", interpret=True, block_sizes=(16, 16)
    )
  spec = _validate(q, interpret=True)
  IMPLEMENTATION.check(spec)
  with pytest.raises(NotImplementedError, match="float64"):
    IMPLEMENTATION.check(dataclasses.replace(spec, dtype="float64"))
  with pytest.raises(NotImplementedError, match="head_dim <= 256"):
    IMPLEMENTATION.check(dataclasses.replace(spec, head_dim=512))


def test_explicit_request_off_gpu_raises():
  if jax.default_backend() == "gpu":
    pytest.skip("on a GPU backend the kernels compile; GPU mode (-m gpu) runs them")
  q = _q()
  with pytest.raises(NotImplementedError, match="runs on gpu.*interpret=True"):
    parallax_attention(q, q, q, q, implementation="pallas_gpu", interpret=False)


def _traces_a_kernel(q) -> bool:
  jaxpr = jax.make_jaxpr(lambda x: parallax_attention(x, x, x, x))(q)
  return "pallas_call" in str(jaxpr)


def test_default_implementation_on_a_gpu_backend(monkeypatch):
  """implementation=None takes the kernels on gpu, falls back to "xla" for calls they
  refuse, and never takes them elsewhere (traced only: nothing compiles)."""
  assert not _traces_a_kernel(_q())  # cpu
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _traces_a_kernel(_q())
  assert not _traces_a_kernel(_q(d=512))  # head_dim > 256: "xla" serves it


# ---------------------------------------------------------------------------------------------
# End to end against the reference (interpret mode).


def _inputs(b, tq, tk, hq, hkv, d, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(keys[0], (b, tq, hq, d))
  r = 0.3 * jax.random.normal(keys[1], (b, tq, hq, d))
  k = jax.random.normal(keys[2], (b, tk, hkv, d))
  v = jax.random.normal(keys[3], (b, tk, hkv, d))
  g = jax.random.normal(keys[4], (b, tq, hq, d))
  return tuple(x.astype(dtype) for x in (q, r, k, v, g))


def _max_rel(a, b):
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


# Kernel block configs over the shared case grid (parallax_jax/testing/attention_cases.py):
# the oracle test (test_attention_oracle.py) runs the default blocks; these run small tiles
# (many per axis) and block_q > block_k. Each core case takes one config by default, every
# pairing runs under -m slow.
BLOCK_CONFIGS = {
  "small": BlockSizes(Tile(16, 16, 4, 2), Tile(16, 16, 4, 2), Tile(16, 32, 4, 2)),
  "wide_q": BlockSizes(Tile(32, 16, 4, 2), Tile(32, 16, 4, 2), Tile(16, 32, 4, 2)),
}


@pytest.mark.parametrize("case,blocks", block_config_params(BLOCK_CONFIGS))
def test_block_configs_match_oracle(case, blocks):
  o, grads = run_op(Impl("pallas_gpu", interpret=True), case, block_sizes=blocks)
  check_case(o, grads, case)


@pytest.mark.parametrize("case,blocks", gpu_params({"default": None, **BLOCK_CONFIGS}))
def test_compiled_kernels_match_oracle(case, blocks):
  """GPU mode: ``python -m pytest -m gpu`` compiles the Triton kernels (interpret=False) and
  checks every shared case, with the default and the test block configs, against the oracle
  with the shared tolerances. Skips without a GPU backend."""
  require_gpu()
  o, grads = run_op(Impl("pallas_gpu", interpret=False), case, block_sizes=blocks)
  check_case(o, grads, case)


@pytest.mark.parametrize("case,blocks", block_config_params(BLOCK_CONFIGS))
def test_fused_backward_matches_oracle(case, blocks):
  """``deterministic=False``: the fused backward (the dk/dv pass adding dq/dr with atomics) on
  the shared cases, against the same oracle and tolerances as the two-pass backward."""
  impl = Impl("pallas_gpu", interpret=True)
  o, grads = run_op(impl, case, block_sizes=blocks, deterministic=False)
  check_case(o, grads, case)


@pytest.mark.parametrize("case,blocks", gpu_params({"default": None, **BLOCK_CONFIGS}))
def test_compiled_fused_backward_matches_oracle(case, blocks):
  """GPU mode: the fused backward compiled (its atomics on real hardware) on every case."""
  require_gpu()
  impl = Impl("pallas_gpu", interpret=False)
  o, grads = run_op(impl, case, block_sizes=blocks, deterministic=False)
  check_case(o, grads, case)


def test_deterministic_picks_the_backward():
  """``deterministic`` (default True) picks the two passes; False the fused kernels; a
  non-bool is a TypeError naming it."""
  import re

  x = _q(t=32, d=16)

  def kernels(**kw):
    def f(*a):
      fn = functools.partial(parallax_attention, implementation="pallas_gpu", interpret=True, **kw)
      o, pullback = jax.vjp(fn, *a)
      return pullback(o)

    return set(re.findall(r"parallax_bwd_\w+", str(jax.make_jaxpr(f)(x, x, x, x))))

  assert kernels() == kernels(deterministic=True) == {"parallax_bwd_dq", "parallax_bwd_dkv"}
  assert kernels(deterministic=False) == {"parallax_bwd_row_stats", "parallax_bwd_dkv"}
  with pytest.raises(TypeError, match="deterministic must be a bool"):
    parallax_attention(x, x, x, x, deterministic="no")


def test_residuals_interchangeable_with_xla():
  """Kernel forward residuals drive the XLA backward (and vice versa) to the same grads."""
  from parallax_jax.attention import xla

  mask = MaskSpec(48, 48, causal=True, window_size=20)
  q, r, k, v, g = _inputs(1, 48, 48, 2, 1, 32, jnp.float32)
  from pallas_kernels.gpu import backward, forward

  small = BLOCK_CONFIGS["small"]
  fwd_cfg = small.fwd
  o_k, res_k = forward.parallax_fwd(
    q, r, k, v, None, scale=0.2, mask=mask, cfg=fwd_cfg, interpret=True
  )
  o_x, res_x = xla.parallax_fwd(q, r, k, v, None, scale=0.2, mask=mask)
  for a, b in zip(res_k, res_x, strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  grads_x = xla.parallax_bwd(q, r, k, v, None, res_k, g, scale=0.2, mask=mask)
  grads_k = backward.parallax_bwd(
    q,
    r,
    k,
    v,
    None,
    res_x,
    g,
    scale=0.2,
    mask=mask,
    cfg_dq=small.dq,
    cfg_dkv=small.dkv,
    interpret=True,
  )
  for a, b in zip(grads_k, grads_x, strict=True):
    assert _max_rel(a, b) < 2e-5


def test_empty_rows_are_zero():
  """Tq > Tk causal: the first Tq - Tk rows see no key -> 0 output and 0 grads, never NaN."""
  q, r, k, v, g = _inputs(1, 40, 24, 2, 2, 32, jnp.float32)

  def f(q, r, k, v):
    return parallax_attention(
      q, r, k, v, implementation="pallas_gpu", interpret=True, block_sizes=BLOCK_CONFIGS["small"]
    )

  o, vjp = jax.vjp(f, q, r, k, v)
  dq, dr, dk, dv = vjp(g)
  assert np.all(np.asarray(o[:, :16]) == 0) and np.all(np.isfinite(np.asarray(o)))
  assert np.all(np.asarray(dq[:, :16]) == 0) and np.all(np.asarray(dr[:, :16]) == 0)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in (dq, dr, dk, dv))


class _FakeGpu:
  """A stand-in device with a compute capability (nothing runs on it: only checks read it)."""

  platform = "gpu"

  def __init__(self, cc, kind):
    self.compute_capability, self.device_kind = cc, kind


@pytest.mark.parametrize(
  "cc, dtype, d, expected",
  [
    ("9.0", jnp.bfloat16, 128, "pallas_mosaic_gpu"),  # Hopper, in the Mosaic kernels' scope
    ("9.0", jnp.float16, 64, "pallas_mosaic_gpu"),
    ("9.0", jnp.float32, 128, "pallas_gpu"),  # Mosaic: bf16/f16 only
    ("9.0", jnp.bfloat16, 32, "pallas_gpu"),  # Mosaic: D 64 or 128 only
    ("8.0", jnp.bfloat16, 128, "pallas_gpu"),  # an A100: no wgmma / TMA
    ("10.0", jnp.bfloat16, 128, "pallas_gpu"),  # Blackwell: these kernels are sm_90 wgmma
  ],
)
def test_default_prefers_mosaic_on_hopper(monkeypatch, caplog, cc, dtype, d, expected):
  """implementation=None on a GPU takes the Mosaic forward exactly where it can serve the
  call (a Hopper device, bf16/f16, D 64/128) and logs which path it took; everything else
  falls through to the Triton kernels."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [_FakeGpu(cc, f"fake sm_{cc}")])
  implementations.ATTENTION.clear_log()
  q = _q(d=d, dtype=dtype)
  spec = _validate(q, interpret=False)
  with caplog.at_level(logging.INFO):
    assert implementations.select(None, spec).name == expected
  assert f"uses {expected!r}" in caplog.text
  if expected != "pallas_mosaic_gpu":
    with pytest.raises(NotImplementedError, match="pallas_mosaic_gpu"):
      implementations.select("pallas_mosaic_gpu", spec)  # an explicit request raises


def _spy_atomic_order(monkeypatch) -> list:
  """The memory order (``semantic``; None: jax's acq_rel default) of every atomic the Triton
  lowering emits from now on, appended in order."""
  semantics = []
  emit = triton_lowering._atomic_rmw

  def spy(*args, semantic=None, **kwargs):
    semantics.append(semantic)
    return emit(*args, **({} if semantic is None else {"semantic": semantic}), **kwargs)

  monkeypatch.setattr(triton_lowering, "_atomic_rmw", spy)
  return semantics


@pytest.mark.parametrize("hkv", [1, 2])
@pytest.mark.parametrize("deterministic", [True, False])
def test_backward_lowers_for_cuda(monkeypatch, hkv, deterministic):
  """Both backwards lower to Triton for a CUDA target on any host (lowering only, nothing
  compiles), GQA and G = 1, segment ids: catches lowering errors before GPU time. The fused
  one carries its two atomic adds, both relaxed-order (design §5.5)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q = jnp.ones((1, 256, 2, 64), jnp.bfloat16)
  kv = jnp.ones((1, 256, hkv, 64), jnp.bfloat16)
  seg = jnp.zeros((1, 256), jnp.int32)

  def loss(q, r, k, v):
    o = parallax_attention(
      q, r, k, v, segment_ids=seg, implementation="pallas_gpu", deterministic=deterministic
    )
    return o.astype(jnp.float32).sum()

  semantics = _spy_atomic_order(monkeypatch)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  grad.trace(q, q, kv, kv).lower(lowering_platforms=("cuda",))
  # acq_rel (Pallas' default, semantic=None here) made the fused backward 5-10x slower
  assert bool(semantics) != deterministic  # two per inlined copy of the loop body
  assert all("relaxed" in str(s).lower() for s in semantics), semantics


def test_relaxed_atomics_fall_back_when_jax_changed(monkeypatch, caplog):
  """On a jax whose private Pallas API no longer fits, the fused backward still lowers, with
  Pallas' own (acq_rel) atomics, and says so once."""
  from pallas_kernels.gpu import relaxed_atomics

  monkeypatch.setattr(relaxed_atomics, "_UNAVAILABLE", "ImportError: planted")
  monkeypatch.setattr(relaxed_atomics, "_warned", False)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  semantics = _spy_atomic_order(monkeypatch)
  q = jnp.ones((1, 128, 2, 64), jnp.bfloat16)

  def loss(q):
    o = parallax_attention(q, q, q, q, implementation="pallas_gpu", deterministic=False)
    return o.astype(jnp.float32).sum()

  with caplog.at_level(logging.WARNING, logger="parallax_jax"):
    jax.jit(jax.grad(loss)).trace(q).lower(lowering_platforms=("cuda",))
  assert semantics and all(s is None for s in semantics)  # jax's default order
  assert [r.message for r in caplog.records].count(
    "relaxed atomics unavailable (ImportError: planted): using acq_rel atomic_add"
  ) == 1


@pytest.mark.parametrize(
  "argv, code, says",
  [
    (["--help"], 0, "--interpret"),
    (["--interpert"], 2, "unrecognized arguments: --interpert"),
    ([], 2, "pass --interpret"),
  ],
  ids=["help", "typo", "no-gpu"],
)
def test_gpu_smoke_script_reads_its_flags_before_running(monkeypatch, capsys, argv, code, says):
  """experiments/gpu_smoke.py looked for '--all' / '--interpret' in argv: --help and a mistyped
  flag ran the smoke, and off a GPU each case printed the same traceback."""
  from experiments import gpu_smoke

  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  monkeypatch.setattr(gpu_smoke, "run", lambda *a: pytest.fail("a case ran"))
  with pytest.raises(SystemExit) as e:
    gpu_smoke.main(argv)
  out, err = capsys.readouterr()
  assert e.value.code == code and says in out + err and "Traceback" not in err
