"""The "pallas_gpu" decode kernel (pallas_kernels/gpu/decode*.py) beyond the shared grid:
split counts (1, 2, 4, odd; more splits than key blocks), key blocks (16 to larger than the
cache), junk cache slots, tuning overrides and their checks, the benchmark's smoke run.

Interpret mode on CPU by default; ``python -m pytest -m gpu`` compiles the same cases.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import require_gpu
from cli_runner import script_error

from pallas_kernels.gpu import decode as gpu_decode
from parallax_jax import DecodeTuning, parallax_decode
from parallax_jax.decode.validation import validate_decode
from parallax_jax.testing.decode_cases import (
  DecodeCase,
  check_decode,
  make_decode_inputs,
  run_decode,
)

# Odd cache and row lengths (no length a multiple of any block), GQA, windows, Tq > 1, rows
# shorter than Tq and empty rows; each case runs with several (splits, block_k) launches.
_CASES = {
  "gqa4": DecodeCase((300, 1, 129, 0), cache_len=300, hq=8, hkv=2, d=64, dtype="bfloat16"),
  "window": DecodeCase((100, 37), cache_len=100, q_len=3, hq=6, hkv=2, d=32, window=20),
  "tq4": DecodeCase((2, 70, 81), cache_len=81, q_len=4, hq=4, hkv=4, d=16, dtype="bfloat16"),
  "mqa_w1": DecodeCase((48, 9), cache_len=48, q_len=2, hq=6, hkv=1, d=64, window=1),
}
_LAUNCHES = {
  "s1_bk16": DecodeTuning(num_splits=1, block_k=16),
  "s2_bk32": DecodeTuning(num_splits=2, block_k=32),
  "s3_bk16": DecodeTuning(num_splits=3, block_k=16),
  "s4_bk64": DecodeTuning(num_splits=4, block_k=64),
  "s5_bk256": DecodeTuning(num_splits=5, block_k=256),  # one block: four empty splits
  "s32_bk16": DecodeTuning(num_splits=32, block_k=16),  # more splits than blocks
}


def _params(gpu: bool):
  out = []
  for i, (cname, case) in enumerate(_CASES.items()):
    for j, (lname, tuning) in enumerate(_LAUNCHES.items()):
      # Interpret mode runs a diagonal of the grid by default, the rest under -m slow.
      marks = [pytest.mark.gpu] if gpu else ([] if j % len(_CASES) == i else [pytest.mark.slow])
      out.append(pytest.param(case, tuning, id=f"{cname}-{lname}", marks=marks))
  return out


@pytest.mark.parametrize("case, tuning", _params(gpu=False))
def test_launches_match_oracle(case, tuning):
  check_decode(run_decode("pallas_gpu", case, interpret=True, tuning=tuning), case)


@pytest.mark.parametrize("case, tuning", _params(gpu=True))
def test_launches_match_oracle_gpu(case, tuning):
  require_gpu()
  check_decode(run_decode("pallas_gpu", case, tuning=tuning), case)


@pytest.mark.parametrize("cname, splits", [("window", 3), ("gqa4", 32)])
@pytest.mark.parametrize("merge", gpu_decode.MERGES)
def test_every_merge_matches_oracle(monkeypatch, merge, cname, splits):
  """Each ``MERGE`` (in-kernel last program, a second kernel, XLA) merges the same partial
  states exactly, with 16-key blocks: 3 splits (padded to 4) over rows of 0-100 keys, empty
  splits included, fold in one chunk; 32 splits over a 300-key row (19 of them hold keys)
  fold in several chunks (``decode_merge.fold_splits``)."""
  monkeypatch.setattr(gpu_decode, "MERGE", merge)
  case = _CASES[cname]
  tuning = DecodeTuning(num_splits=splits, block_k=16)
  check_decode(run_decode("pallas_gpu", case, interpret=True, tuning=tuning), case)


@pytest.mark.gpu
@pytest.mark.parametrize("merge", gpu_decode.MERGES)
def test_every_merge_matches_oracle_gpu(monkeypatch, merge):
  require_gpu()
  monkeypatch.setattr(gpu_decode, "MERGE", merge)
  for case in _CASES.values():
    for splits in (2, 5, 16):
      check_decode(run_decode("pallas_gpu", case, tuning=DecodeTuning(num_splits=splits)), case)


def test_merge_switch_rejects_unknown(monkeypatch):
  monkeypatch.setattr(gpu_decode, "MERGE", "atomic")
  with pytest.raises(ValueError, match="MERGE must be one of"):
    run_decode("pallas_gpu", _CASES["window"], interpret=True, tuning=DecodeTuning(num_splits=2))


@pytest.mark.parametrize("junk", [np.inf, -np.inf, 1e30])
@pytest.mark.parametrize("tuning", [DecodeTuning(num_splits=1), DecodeTuning(num_splits=3)])
def test_junk_slots_never_reach_the_output(junk, tuning):
  """Bitwise the same output whatever the slots past each row's length hold (NaN, inf, huge):
  they are multiplied by zero weights, so anything leaking there shows."""
  case = DecodeCase((37, 64, 5), cache_len=64, q_len=2, hq=4, hkv=2, d=32, window=40)
  q, r, k, v, lengths = make_decode_inputs(case)  # junk = NaN
  f = jax.jit(
    lambda k, v: parallax_decode(
      *(jnp.asarray(x, jnp.float32) for x in (q, r)),
      k,
      v,
      lengths=jnp.asarray(lengths),
      window_size=case.window,
      implementation="pallas_gpu",
      interpret=True,
      tuning=dataclasses.replace(tuning, block_k=16),
    )
  )
  o_nan = np.asarray(f(jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32)))
  k2, v2 = (np.where(np.isnan(x), junk, x) for x in (k, v))
  o_junk = np.asarray(f(jnp.asarray(k2, jnp.float32), jnp.asarray(v2, jnp.float32)))
  assert np.isfinite(o_nan).all()
  np.testing.assert_array_equal(o_junk, o_nan)


def _spec(batch=1, q_len=1, hq=8, hkv=8, d=128, cache_len=4096, dtype=jnp.bfloat16, **kw):
  q = jnp.zeros((batch, q_len, hq, d), dtype)
  k = jnp.zeros((batch, cache_len, hkv, d), dtype)
  args = dict(lengths=jnp.full((batch,), 1, jnp.int32), scale=None, window_size=None)
  args.update(interpret=True, tuning=None)
  args.update(kw)
  return validate_decode(q, q, k, k, **args)


def test_launch_defaults_and_overrides():
  spec = _spec()
  launch = gpu_decode.launch_for(spec)
  assert launch.block_k == gpu_decode.BLOCK_K
  assert (launch.num_warps, launch.num_stages) == (gpu_decode.NUM_WARPS, gpu_decode.NUM_STAGES)
  assert launch.num_splits > 1  # B * Hkv = 8 programs would leave most SMs idle
  # Three pipeline stages only where three K + V blocks fit the measured footprint.
  assert gpu_decode.launch_for(_spec(dtype=jnp.float32)).num_stages == gpu_decode.FALLBACK_STAGES
  assert gpu_decode.launch_for(_spec(d=256)).num_stages == gpu_decode.FALLBACK_STAGES
  tuned = DecodeTuning(num_splits=3, block_k=32, num_warps=8, num_stages=4)
  launch = gpu_decode.launch_for(_spec(tuning=tuned))
  assert (launch.num_splits, launch.block_k, launch.num_warps, launch.num_stages) == (3, 32, 8, 4)
  # A short cache caps the default key block; a full GPU gets one split.
  assert gpu_decode.launch_for(_spec(cache_len=40)).block_k == 64
  # A short cache that is split (B * Hkv below the SM count) takes the short key block.
  short = gpu_decode.launch_for(_spec(cache_len=gpu_decode.SHORT_CACHE))
  assert (short.block_k, short.num_splits) == (gpu_decode.SHORT_BLOCK_K, 16)
  assert gpu_decode.launch_for(_spec(batch=32, cache_len=512)).block_k == gpu_decode.BLOCK_K
  assert gpu_decode.launch_for(_spec(batch=64, hkv=8)).num_splits == 1


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(tuning=DecodeTuning(block_k=48)), "DecodeTuning.block_k must be a power of two"),
    (dict(tuning=DecodeTuning(block_k=8)), "DecodeTuning.block_k must be a power of two"),
    (dict(tuning=DecodeTuning(num_warps=3)), "DecodeTuning.num_warps must be a power of two"),
    (dict(d=96), r"head_dim \(q.shape\[3\]\) a power of two"),
    (dict(d=512), r"head_dim \(q.shape\[3\]\) a power of two"),
    (dict(q_len=32, hq=8, hkv=1), "query rows per program"),
  ],
)
def test_check_rejects_what_the_kernel_cannot_run(kw, match):
  spec = _spec(**{k: v for k, v in kw.items() if k != "tuning"}, tuning=kw.get("tuning"))
  with pytest.raises(NotImplementedError, match=match):
    gpu_decode._check(spec)


def test_float64_is_rejected_by_name():
  with jax.enable_x64(True):
    spec = _spec(dtype=jnp.float64)
    with pytest.raises(NotImplementedError, match="got float64"):
      gpu_decode._check(spec)


def test_explicit_request_raises_through_the_op():
  q = jnp.zeros((1, 1, 2, 96))
  with pytest.raises(NotImplementedError, match="head_dim"):
    parallax_decode(
      q, q, q, q, lengths=jnp.ones((1,), jnp.int32), implementation="pallas_gpu", interpret=True
    )


@pytest.mark.slow
def test_bench_decode_smoke(tmp_path):
  from experiments import bench_decode

  result, stem = bench_decode.main(["--smoke", "--out", str(tmp_path)])
  rows = {(r["L"], r["Hkv"], r["path"]): r for r in result["rows"]}
  kernel = [r for r in result["rows"] if r["path"].startswith("pallas_gpu")]
  assert kernel and all("us" in r and r["accuracy"]["max"] < 1e-2 for r in kernel)
  assert all("us" in r for (_, _, p), r in rows.items() if p in ("parallax_xla", "softmax_xla"))
  assert (tmp_path / (stem.split("/")[-1] + ".md")).exists()
  # A second run never overwrites the first.
  _, stem2 = bench_decode.main(["--smoke", "--out", str(tmp_path), "--paths", "parallax_xla"])
  assert stem2 != stem and stem2.endswith("_2")


@pytest.mark.parametrize(
  "argv, says",
  [
    (["--shapes", "abc"], "--shapes: expected a comma list of BxL such as 2x8192, got 'abc'"),
    (["--paths", "nope"], "--paths: unknown ['nope']; choose from"),
    (["--dtype", "foo"], "--dtype: unknown dtype 'foo'"),
    (["--iters", "0"], "--iters: must be >= 1, got 0"),
    (["--kv-heads", "3", "--paths", "parallax_xla"], "--kv-heads: [3] do not divide --heads 8"),
    (["--paths", "pallas_gpu,parallax_xla"], "--paths pallas_gpu: run on a GPU, not on this 'cpu'"),
    (["--smoke", "--heads", "16"], "--smoke sets its own tiny shapes and counts: drop --heads"),
  ],
  ids=["shapes", "paths", "dtype", "iters", "kv-heads", "no-gpu", "smoke-ignores"],
)
def test_bench_decode_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, says):
  """Each ended in a traceback, wrote a result file of error rows (exit 0), or, beside
  --smoke, was replaced by the smoke's shapes silently."""
  from experiments import bench_decode

  assert says in script_error(capsys, bench_decode.main, [*argv, "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()
