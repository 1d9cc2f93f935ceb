"""The "pallas_tpu" decode kernel (pallas_kernels/tpu/decode.py), run in Pallas interpret mode.

The shared case grid (tests/test_decode.py) runs the default tuning, where most caches are one
block; here: small blocks and split counts (ragged last blocks, more splits than blocks), the
split ranges against brute force, the default block and split choices, lengths that travel by
scalar prefetch (one compile for any lengths), junk slots (NaN, inf) that never leak, the
TPU-semantics interpreter, the Mosaic lowering, and the tuning errors.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import decode as tpu_decode
from pallas_kernels.tpu.decode_kernel import kv_block
from parallax_jax import DecodeTuning, parallax_decode
from parallax_jax.decode.validation import DecodeSpec, validate_decode
from parallax_jax.testing import oracle
from parallax_jax.testing.decode_cases import (
  DecodeCase,
  check_decode,
  make_decode_inputs,
  run_decode,
)


def _tuning(splits, block_k):
  return DecodeTuning(num_splits=splits, block_k=block_k)


# (case, tuning): up to 8 key blocks per row, ragged last blocks (S = 100, 300), windows that
# start past block 0, more splits than blocks, GQA 1 to 6, Tq up to 4, empty rows.
SPLIT_CASES = [
  (DecodeCase((0, 1, 37, 64), cache_len=64), _tuning(3, 8)),
  (DecodeCase((100, 5), cache_len=100, hq=4, hkv=2), _tuning(4, 16)),
  (DecodeCase((50, 1), cache_len=80, hq=6, hkv=2, window=16), _tuning(2, 8)),
  (
    DecodeCase((3, 70), cache_len=96, q_len=4, hq=8, hkv=2, d=128, window=40, dtype="bfloat16"),
    _tuning(3, 16),
  ),
  (DecodeCase((33, 9), cache_len=48, q_len=2, hq=6, hkv=1, window=1), _tuning(2, 8)),
  (DecodeCase((200, 0, 77), cache_len=300, q_len=3, hq=4, hkv=2), _tuning(8, 128)),
  # Five rows of one kv head, two splits: jaxlib 0.10.2's XLA:CPU miscompiled this merge
  # (errors ~10; docs/design.md §11.3).
  (DecodeCase((24,) * 5, cache_len=24, q_len=5, hq=4, hkv=1), _tuning(2, 8)),
]
SLOW_SPLIT_CASES = [
  (DecodeCase((64, 17), cache_len=64, hq=3, hkv=1, dtype="float16"), _tuning(1, 16)),
  (DecodeCase((300, 150), cache_len=300, q_len=2, hq=4, hkv=2, window=70), _tuning(3, 32)),
  (DecodeCase((255, 1), cache_len=256, hq=8, hkv=1, d=128, dtype="bfloat16"), _tuning(5, 16)),
]


def _params():
  out = [pytest.param(c, t, id=f"{c.id}-s{t.num_splits}-bk{t.block_k}") for c, t in SPLIT_CASES]
  out += [
    pytest.param(c, t, id=f"{c.id}-s{t.num_splits}-bk{t.block_k}", marks=pytest.mark.slow)
    for c, t in SLOW_SPLIT_CASES
  ]
  return out


@pytest.mark.parametrize("case, tuning", _params())
def test_splits_and_blocks_match_oracle(case, tuning):
  o = run_decode("pallas_tpu", case, interpret=True, tuning=tuning)
  check_decode(o, case)
  empty = np.asarray(case.lengths) == 0  # every split empty: exactly zero, not merely small
  assert not np.any(np.asarray(o, np.float32)[empty])


def _spec(cache_len, q_len, window, *, batch=1, hkv=1, d=64, dtype="float32", tuning=None):
  return DecodeSpec(
    scale=d**-0.5,
    q_len=q_len,
    cache_len=cache_len,
    window_size=window,
    dtype=dtype,
    batch=batch,
    num_q_heads=hkv,
    num_kv_heads=hkv,
    head_dim=d,
    interpret=True,
    tuning=tuning or DecodeTuning(),
  )


@pytest.mark.parametrize("window", [None, 1, 5, 23])
@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("bk, splits", [(8, 1), (8, 3), (16, 4), (32, 7)])
def test_split_ranges_visit_each_visible_block_once(window, q_len, bk, splits):
  """Over the grid ``(B, splits, steps)``: the steps that run the body fetch exactly the blocks
  holding a visible key (brute force from the oracle's mask), each once, in range; the clamped
  steps repeat the previous block (no DMA), so a row costs one fetch per visible block."""
  cache_len = 100
  lengths = np.array([0, 1, 2, 3, 7, 8, 9, 40, 63, 64, 65, 99, 100], np.int32)
  spec = _spec(cache_len, q_len, window, batch=len(lengths))
  start, count = tpu_decode.split_ranges(lengths, spec, bk, splits, xp=np)
  steps = -(-spec.mask(0).max_key_blocks(q_len, bk) // splits)
  mask = oracle.decode_mask(lengths, q_len, cache_len, window_size=window)  # [B, Tq, S]
  n_blocks = -(-cache_len // bk)
  pair, step = np.arange(len(lengths) * splits)[:, None], np.arange(steps)[None, :]
  fetched = np.asarray(kv_block(start, count, pair, step)).reshape(len(lengths), splits, steps)
  assert fetched.min() >= 0 and fetched.max() < n_blocks
  runs = step < count.reshape(len(lengths), splits, 1)
  for b in range(len(lengths)):
    keys = np.flatnonzero(mask[b].any(axis=0))
    want = sorted(set(keys // bk))
    ran = list(fetched[b][runs[b]])  # split-major, step order
    fetches = 1 + int(np.count_nonzero(np.diff(fetched[b].reshape(-1))))
    assert ran == want, (b, ran, want)
    assert fetches == max(len(want), 1), (b, fetches, want)


@pytest.mark.parametrize(
  "cache_len, hkv, d, dtype, block_k, want",
  [
    (64, 8, 64, "float32", None, 64),  # short cache: one block (all of S)
    (300, 2, 64, "float32", None, 300),
    (4096, 2, 128, "float32", None, 512),
    (1000, 2, 128, "float32", None, 200),  # largest multiple of 8 dividing S, <= 512
    (4100, 2, 128, "float32", None, 512),  # no such divisor >= 128: ragged last block
    (4096, 32, 128, "float32", None, 128),  # 32 heads x 128 x 4 B: 2 MiB per 128 keys
    (4096, 8, 128, "bfloat16", None, 512),
    (4096, 24, 128, "bfloat16", None, 256),  # 24 heads pad to 32 (16-row tiles): 8 KiB a key
    (300, 2, 64, "float32", 1024, 300),  # an explicit block is an upper bound
    (300, 2, 64, "float32", 64, 64),
  ],
)
def test_default_and_explicit_block_k(cache_len, hkv, d, dtype, block_k, want):
  spec = _spec(cache_len, 1, None, hkv=hkv, d=d, dtype=dtype, tuning=DecodeTuning(block_k=block_k))
  assert tpu_decode.block_k(spec) == want


def test_default_num_splits(monkeypatch):
  """One split per row on a single-core device (interpret mode, v5e/v6e); a megacore with one
  row to decode gets two; ``DecodeTuning.num_splits`` overrides."""
  one_row, four_rows = _spec(4096, 1, None), _spec(4096, 1, None, batch=4)
  assert tpu_decode.num_splits(one_row, 512) == 1
  monkeypatch.setattr(tpu_decode, "_num_cores", lambda: 2)
  assert tpu_decode.num_splits(one_row, 512) == 2
  assert tpu_decode.num_splits(four_rows, 512) == 1
  assert tpu_decode.num_splits(_spec(4096, 1, None, tuning=DecodeTuning(num_splits=5)), 512) == 5


def test_lengths_are_runtime_values():
  """One compiled call serves any lengths (scalar prefetch): each matches the oracle."""
  cases = [
    DecodeCase(lengths, cache_len=64, q_len=2, hq=4, hkv=2, d=32, window=20)
    for lengths in [(60, 3), (0, 64), (17, 33)]
  ]

  traces = []

  @jax.jit
  def f(q, r, k, v, n):
    traces.append(n)
    return parallax_decode(
      q, r, k, v, lengths=n, window_size=20, implementation="pallas_tpu", interpret=True,
      tuning=_tuning(2, 8),
    )  # fmt: skip

  for case in cases:
    q, r, k, v, n = make_decode_inputs(case)
    check_decode(f(*(jnp.asarray(x, jnp.float32) for x in (q, r, k, v)), jnp.asarray(n)), case)
  assert len(traces) == 1


def _junk_inputs(case: DecodeCase):
  """The case's inputs with the slots past each length set to +-inf and NaN (K and V)."""
  q, r, k, v, lengths = make_decode_inputs(case)
  junk = np.array([np.inf, -np.inf, np.nan])
  for b, n in enumerate(lengths):
    tail = k[b, n:].shape
    k[b, n:] = junk[np.arange(np.prod(tail)) % 3].reshape(tail)
    v[b, n:] = junk[(np.arange(np.prod(tail)) + 1) % 3].reshape(tail)
  return [jnp.asarray(x, jnp.float32) for x in (q, r, k, v)] + [jnp.asarray(lengths)]


def test_junk_slots_never_leak():
  """inf, -inf and NaN past each row's length (and, in interpret mode, NaN past S in the ragged
  last block) leave the output equal to the oracle's on the clean cache."""
  case = DecodeCase((100, 9, 0), cache_len=100, q_len=2, hq=2, hkv=1, window=50)
  q, r, k, v, n = _junk_inputs(case)
  o = parallax_decode(
    q, r, k, v, lengths=n, window_size=case.window, implementation="pallas_tpu",
    interpret=True, tuning=_tuning(3, 16),
  )  # fmt: skip
  check_decode(o, case)


def test_tpu_semantics_interpreter():
  """DMAs, VMEM and scratch simulated; uninitialised memory (scratch, the tail of the ragged
  last block) reads as NaN."""
  case = DecodeCase((40, 21, 0), cache_len=40, q_len=2, hq=3, hkv=1, window=12)
  params = pltpu.InterpretParams(uninitialized_memory="nan")
  with pltpu.force_tpu_interpret_mode(params):
    o = run_decode("pallas_tpu", case, interpret=True, tuning=_tuning(2, 16))
  check_decode(o, case)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lowers_to_mosaic_reading_the_cache_in_place(dtype):
  """Pallas -> Mosaic lowering for the TPU platform (no TPU needed; not Mosaic's own layout
  passes): one kernel, whose K/V operands are the caller's cache arrays untouched."""
  q = jnp.zeros((2, 2, 6, 64), dtype)
  k = jnp.zeros((2, 300, 2, 64), dtype)
  n = jnp.array([5, 300], jnp.int32)
  spec = validate_decode(
    q, q, k, k, lengths=n, scale=None, window_size=100, interpret=False,
    tuning=_tuning(3, 64),
  )  # fmt: skip
  traced = jax.jit(tpu_decode.fwd, static_argnums=5).trace(q, q, k, k, n, spec)
  text = traced.lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 1
  # In the private @fwd function, %arg2 and %arg3 are k_cache and v_cache.
  assert re.search(r"@tpu_custom_call\([^)]*%arg2, %arg3\)", text)


# Tuning and dtype errors: NotImplementedError naming the field ---------------------------------
def _call(dtype="float32", cache_len=64, **tuning):
  q = jnp.zeros((1, 1, 2, 16), dtype)
  k = jnp.zeros((1, cache_len, 1, 16), dtype)
  return parallax_decode(
    q, q, k, k, lengths=jnp.array([cache_len], jnp.int32), implementation="pallas_tpu",
    interpret=True, tuning=DecodeTuning(**tuning),
  )  # fmt: skip


@pytest.mark.parametrize(
  "dtype, tuning, match",
  [
    ("float32", dict(block_k=12), r"DecodeTuning.block_k=12.*multiple of 8 for float32"),
    ("bfloat16", dict(block_k=8), r"DecodeTuning.block_k=8.*multiple of 16 for bfloat16"),
    ("float16", dict(block_k=40), r"multiple of 16 for float16"),
    ("float32", dict(num_warps=4), "DecodeTuning.num_warps is a Triton launch parameter"),
    ("float32", dict(num_stages=2), "DecodeTuning.num_stages is a Triton launch parameter"),
  ],
)
def test_tuning_errors(dtype, tuning, match):
  with pytest.raises(NotImplementedError, match=match):
    _call(dtype, **tuning)


def test_float64_is_refused():
  with jax.enable_x64(True), pytest.raises(NotImplementedError, match="got float64"):
    _call("float64")


def test_block_k_of_the_whole_cache_is_allowed():
  """A block of all S keys needs no alignment (the full dimension)."""
  case = DecodeCase((20, 7), cache_len=20, hq=2, hkv=1, d=16)
  check_decode(run_decode("pallas_tpu", case, interpret=True, tuning=_tuning(1, 20)), case)


def test_needs_interpret_off_tpu():
  q = jnp.zeros((1, 1, 2, 16))
  with pytest.raises(NotImplementedError, match="interpret=True"):
    parallax_decode(q, q, q, q, lengths=jnp.array([1], jnp.int32), implementation="pallas_tpu")
