"""Kernel-specific checks of the Pallas GPU (Triton) kernels, run in interpret mode on CPU.

* ``GpuBlockSizes`` validation and the tuned-defaults lookup;
* the tile classification (skip / unmasked / masked) of the forward + dq/dr passes and of the
  dk/dv pass against brute-force ``MaskSpec.visible`` over a grid of shapes, blocks and windows
  (including block_q > block_k with aligned W, W not a multiple of the tile, Tq < Tk, Tq > Tk);
* the shared case grid (``parallax_jax/testing/attention_cases.py``) with small and
  block_q > block_k tiles against the float64 oracle (the default blocks run in
  tests/test_attention_oracle.py);
* ``implementation=None`` picks the kernels on a GPU backend; explicit requests elsewhere raise.

GPU mode: ``python -m pytest -m gpu`` compiles the kernels on a real GPU (``interpret=False``)
and runs the whole shared grid against the oracle with the shared tolerances.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import CASES, CORE_CASES, Impl, check_case, gpu_params, require_gpu, run_op

from pallas_kernels.gpu import IMPLEMENTATION, GpuBlockSizes, default_block_sizes, schedule
from parallax_jax import BlockSizes, MaskSpec, Tile, parallax_attention
from parallax_jax.attention.validation import validate
from parallax_jax.attention.xla import XlaBlockSizes

# ---------------------------------------------------------------------------------------------
# Block sizes.


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("block_q", 48, "block_q must be a power of two >= 16"),
    ("block_k", 8, "block_k must be a power of two >= 16"),
    ("block_k_dkv", 100, "block_k_dkv must be a power of two"),
    ("block_q_dq", 0, "block_q_dq must be a power of two"),
    ("num_warps", 3, "num_warps must be a power of two in"),
    ("num_warps_dkv", 32, "num_warps_dkv must be a power of two in"),
    ("num_stages", 0, r"num_stages must be in \[1, 8\]"),
    ("num_stages_dq", 9, r"num_stages_dq must be in \[1, 8\]"),
  ],
)
def test_block_sizes_validation(field, value, match):
  with pytest.raises(ValueError, match=match):
    GpuBlockSizes(**{field: value})


@pytest.mark.parametrize("value", [64.0, "64", True, None])
def test_block_sizes_type(value):
  with pytest.raises(TypeError, match="GpuBlockSizes.block_q must be an int"):
    GpuBlockSizes(block_q=value)


def test_block_sizes_clip_and_defaults():
  bs = GpuBlockSizes(block_q=128, block_k=64)
  cfg = bs.kernel("fwd", 20, 300)
  assert (cfg.block_q, cfg.block_k) == (32, 64)  # clipped to next_pow2(T) >= 16
  assert bs.kernel("dkv", 1, 1).block_q == 16
  for dtype in ("float32", "bfloat16", "float16"):
    for d in (32, 60, 64, 100, 128, 256):
      default_block_sizes(dtype, d)  # valid configs for every bucket


def _q(dtype=jnp.float32, t=16, d=32):
  return jnp.zeros((1, t, 2, d), dtype)


def test_check_rejects():
  q = _q()
  with pytest.raises(NotImplementedError, match="GpuBlockSizes"):
    parallax_attention(
      q, q, q, q, implementation="pallas_gpu", interpret=True, block_sizes=XlaBlockSizes()
    )
  spec = validate(
    q,
    q,
    q,
    q,
    scale=None,
    causal=True,
    window_size=None,
    segment_ids=None,
    interpret=True,
    block_sizes=None,
  )
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
# Tile classification against brute force.

_BLOCKS = (16, 32, 64)
_WINDOWS = (None, 1, 16, 32, 33, 64, 100)
_LENGTHS = ((64, 64), (100, 100), (37, 100), (100, 37), (1, 77), (130, 130))


def _mask_grid():
  for (tq, tk), causal, w in itertools.product(_LENGTHS, (True, False), _WINDOWS):
    if w is not None and not causal:
      continue
    yield MaskSpec(tq, tk, causal=causal, window_size=w)


def _check_tile(vis, real_rows, real_keys, state, where):
  """vis: visibility of the tile's real rows x all its keys (keys beyond Tk invisible)."""
  if state == "skip":
    assert not vis.any(), f"{where}: skipped tile has a visible pair"
  elif state == "unmasked":
    assert real_keys.all(), f"{where}: unmasked tile holds padded keys"
    assert vis[real_rows].all(), f"{where}: unmasked tile has an invisible pair"
  else:
    assert vis.any(), f"{where}: masked tile without any visible pair (should be skipped)"


def _states(lo, safe_lo, safe_hi, hi, n):
  assert lo <= safe_lo <= safe_hi <= hi <= n, (lo, safe_lo, safe_hi, hi, n)
  out = np.full(n, "skip", dtype=object)
  out[lo:safe_lo] = "masked"
  out[safe_lo:safe_hi] = "unmasked"
  out[safe_hi:hi] = "masked"
  return out


@pytest.mark.parametrize("bq,bk", list(itertools.product(_BLOCKS, _BLOCKS)))
def test_tile_classification_exhaustive(bq, bk):
  for mask in _mask_grid():
    n_q, n_k = -(-mask.q_len // bq), -(-mask.kv_len // bk)
    rows = np.arange(n_q * bq)[:, None]
    cols = np.arange(n_k * bk)[None, :]
    vis = np.asarray(mask.visible(rows, cols))
    real_rows, real_keys = rows[:, 0] < mask.q_len, cols[0] < mask.kv_len
    # Forward and dq/dr pass: query block -> key blocks.
    for qi in range(n_q):
      st = _states(*(int(x) for x in schedule.key_blocks(mask, qi * bq, bq, bk)), n_k)
      for kb in range(n_k):
        r, c = slice(qi * bq, (qi + 1) * bq), slice(kb * bk, (kb + 1) * bk)
        _check_tile(vis[r, c], real_rows[r], real_keys[c], st[kb], f"fwd {mask} q{qi} k{kb}")
    # dk/dv pass: key block -> query blocks.
    for kb in range(n_k):
      st = _states(*(int(x) for x in schedule.query_blocks(mask, kb * bk, bq, bk)), n_q)
      for qi in range(n_q):
        r, c = slice(qi * bq, (qi + 1) * bq), slice(kb * bk, (kb + 1) * bk)
        _check_tile(vis[r, c], real_rows[r], real_keys[c], st[qi], f"dkv {mask} k{kb} q{qi}")


def test_tile_classification_last_row_rule():
  """The upstream first-row rule would mark this tile unmasked (docs/design.md §2.3)."""
  mask = MaskSpec(512, 512, causal=True, window_size=128)
  lo, safe_lo, safe_hi, hi = schedule.key_blocks(mask, 256, 128, 64)
  # Rows 256..383 see keys >= 129..256: key block 2 ([128, 192)) must be masked.
  assert lo == 2 and safe_lo == 4 and (lo, safe_lo) != (2, 2)
  assert (safe_hi, hi) == (4, 6)


def test_schedule_traced_matches_numpy():
  mask = MaskSpec(100, 130, causal=True, window_size=33)
  for start in (0, 32, 96):
    want = schedule.key_blocks(mask, start, 32, 16)
    got = jax.jit(lambda s: jnp.stack(schedule.key_blocks(mask, s, 32, 16, jnp)))(start)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    want = schedule.query_blocks(mask, start, 32, 16)
    got = jax.jit(lambda s: jnp.stack(schedule.query_blocks(mask, s, 32, 16, jnp)))(start)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------------------------
# End to end against the reference (interpret mode).

_SMALL = GpuBlockSizes(16, 16, 4, 2, 16, 16, 4, 2, 16, 32, 4, 2)
_WIDE_Q = GpuBlockSizes(32, 16, 4, 2, 32, 16, 4, 2, 16, 32, 4, 2)


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


def _block_params():
  names = list(BLOCK_CONFIGS)
  out = []
  for case in CASES:
    # Core case i runs config i mod n by default; every other pairing is slow.
    default = names[CORE_CASES.index(case) % len(names)] if case.core else None
    for name, blocks in BLOCK_CONFIGS.items():
      marks = [] if name == default else [pytest.mark.slow]
      out.append(pytest.param(case, blocks, id=f"{name}-{case.id}", marks=marks))
  return out


@pytest.mark.parametrize("case,blocks", _block_params())
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


def test_residuals_interchangeable_with_xla():
  """Kernel forward residuals drive the XLA backward (and vice versa) to the same grads."""
  from parallax_jax.attention import xla

  mask = MaskSpec(48, 48, causal=True, window_size=20)
  q, r, k, v, g = _inputs(1, 48, 48, 2, 1, 32, jnp.float32)
  from pallas_kernels.gpu import backward, forward

  fwd_cfg = _SMALL.kernel("fwd", 48, 48)
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
    cfg_dq=_SMALL.kernel("dq", 48, 48),
    cfg_dkv=_SMALL.kernel("dkv", 48, 48),
    interpret=True,
  )
  for a, b in zip(grads_k, grads_x, strict=True):
    assert _max_rel(a, b) < 2e-5


def test_empty_rows_are_zero():
  """Tq > Tk causal: the first Tq - Tk rows see no key -> 0 output and 0 grads, never NaN."""
  q, r, k, v, g = _inputs(1, 40, 24, 2, 2, 32, jnp.float32)

  def f(q, r, k, v):
    return parallax_attention(
      q, r, k, v, implementation="pallas_gpu", interpret=True, block_sizes=_SMALL
    )

  o, vjp = jax.vjp(f, q, r, k, v)
  dq, dr, dk, dv = vjp(g)
  assert np.all(np.asarray(o[:, :16]) == 0) and np.all(np.isfinite(np.asarray(o)))
  assert np.all(np.asarray(dq[:, :16]) == 0) and np.all(np.asarray(dr[:, :16]) == 0)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in (dq, dr, dk, dv))
