"""benchmarking: the FLOP conventions (against brute-force pair counts and the model's own
parameter tree), the timer, and the synthetic batch."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.attention.masking import MaskSpec
from parallax_jax.benchmarking import result_files
from parallax_jax.benchmarking.kernel_times import kernel_times, summarize
from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
from parallax_jax.benchmarking.timing import time_call, time_pipelined
from parallax_jax.flops import (
  attention_model_flops,
  kernel_executed_flops,
  visible_pairs,
)
from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.train.step import check_batch

MASKS = [(True, None), (False, None), (True, 1), (True, 3), (True, 16), (True, 17), (True, 40)]


def _brute_force_pairs(length, causal, window):
  mask = MaskSpec(length, length, causal=causal, window_size=window)
  i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
  return int(np.sum(mask.visible(i, j)))


@pytest.mark.parametrize("length", [1, 2, 7, 17])
@pytest.mark.parametrize("causal,window", MASKS)
def test_visible_pairs_counts_what_the_mask_lets_through(length, causal, window):
  want = _brute_force_pairs(length, causal, window)
  assert visible_pairs(length, causal=causal, window_size=window) == want


def test_attention_flops_conventions():
  shape = dict(batch=2, heads=3, length=17, head_dim=8, window_size=5)
  pairs = 2 * 3 * _brute_force_pairs(17, True, 5)
  per_matmul = 2 * 8 * pairs
  assert kernel_executed_flops("parallax", **shape) == {
    "fwd": 4 * per_matmul,
    "fwd_bwd": 15 * per_matmul,
  }
  assert kernel_executed_flops("softmax", **shape) == {
    "fwd": 2 * per_matmul,
    "fwd_bwd": 7 * per_matmul,
  }
  # Model FLOPs: the backward counted as twice the forward.
  assert attention_model_flops("parallax", **shape) == 3 * 4 * per_matmul
  assert attention_model_flops("softmax", **shape) == 3 * 2 * per_matmul
  with pytest.raises(ValueError, match="attention kind"):
    kernel_executed_flops("lla", **shape)


BASE = ModelConfig(
  vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=40
)


@pytest.mark.parametrize(
  "changes",
  [
    {},
    {"attention": "softmax", "tie_embeddings": False},
    {"window_size": 5},
    {"input_dim": 3, "output_dim": 2, "tie_embeddings": False},
  ],
)
def test_model_flops_per_token_from_the_parameter_tree(changes):
  """6 FLOPs per weight of every matmul (forward 2, backward 4) plus 3x the attention forward,
  the weights read off the model's parameters, the pairs off the mask."""
  cfg = dataclasses.replace(BASE, **changes)
  params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  sizes = {jax.tree_util.keystr(p): x.size for p, x in jax.tree_util.tree_leaves_with_path(params)}
  weights = sum(n for k, n in sizes.items() if k.endswith(("['kernel']", "['head']")))
  if cfg.tie_embeddings:  # the embedding is also the LM head's matmul
    weights += sizes["['embed']"]
  seq_len = 12
  pairs = _brute_force_pairs(seq_len, True, cfg.window_size)
  matmuls = 4 if cfg.attention == "parallax" else 2
  attn = cfg.num_layers * 3 * matmuls * 2 * cfg.head_dim * cfg.num_heads * pairs / seq_len
  assert cfg.flops_per_token(seq_len) == pytest.approx(6 * weights + attn, rel=1e-12)


def _sleeper(seconds: float):
  """A call that takes ``seconds`` and records when it was made."""
  calls = []

  def fn(x):
    calls.append(time.perf_counter())
    time.sleep(seconds)
    return x + 1

  return fn, calls


def test_time_call_warms_up_then_times_each_call():
  fn, calls = _sleeper(0.01)
  timing = time_call(fn, (jnp.ones(3),), iters=4, warmup=2)
  assert len(calls) == 6 and len(timing.samples_s) == 4
  assert timing.median_s == pytest.approx(float(np.median(timing.samples_s)))
  assert min(timing.samples_s) >= 0.01
  with pytest.raises(ValueError, match="iters"):
    time_call(fn, (jnp.ones(3),), iters=0)


def test_time_pipelined_is_seconds_per_call_of_back_to_back_calls():
  fn, calls = _sleeper(0.005)
  timing = time_pipelined(fn, (jnp.ones(3),), iters=4, repeats=3, warmup=2)
  assert len(calls) == 2 + 4 * 3 and len(timing.samples_s) == 3
  assert timing.median_s == pytest.approx(float(np.median(timing.samples_s)))
  # per call, not per repeat of 4 calls (that would be >= 0.02)
  assert 0.005 <= min(timing.samples_s) and max(timing.samples_s) < 0.015
  with pytest.raises(ValueError, match="repeats"):
    time_pipelined(fn, (jnp.ones(3),), iters=2, repeats=0)


def test_kernel_times_reads_device_planes_only():
  """On CPU the trace has no device plane: no kernel times (GPU rows come from
  experiments/bench_decode.py on the H200); bad repeats is refused; summarize formats pairs."""
  f = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((64, 64))
  expected = {} if jax.default_backend() == "cpu" else None
  times = kernel_times(f, (x,), repeats=2)
  if expected is not None:
    assert times == expected
  else:
    assert times and all(us > 0 for us in times.values())
  with pytest.raises(ValueError, match="repeats"):
    kernel_times(f, (x,), repeats=0)
  assert summarize({"parallax_decode": 4.5, "merge": 1.25}) == "parallax_decode=4.50, merge=1.25"


@pytest.mark.parametrize("packed", [True, False])
def test_synthetic_batch_fits_the_model(packed):
  b, t = 3, 10
  batch = synthetic_batch(BASE, b, t, seed=1, packed=packed)
  check_batch(batch)
  assert batch["inputs"].shape == (b, t) and batch["inputs"].dtype == np.int32
  assert 0 <= batch["inputs"].min() and batch["targets"].max() < BASE.vocab_size
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["positions"], np.tile(np.arange(t), (b, 1)))
  assert (batch["segment_ids"] is None) != packed
  reg = dataclasses.replace(BASE, input_dim=3, output_dim=2, tie_embeddings=False)
  batch = synthetic_batch(reg, b, t)
  check_batch(batch)
  assert batch["inputs"].shape == (b, t, 3) and batch["targets"].shape == (b, t, 2)


def test_bench_generate_smoke_writes_both_kinds(tmp_path):
  """experiments/bench_generate.py end to end on a tiny CPU model: a row per attention kind,
  the Parallax/softmax ratio, JSON + markdown written; a later run's name does not overwrite."""
  from experiments import bench_generate

  record = bench_generate.main(["--smoke", "--out-dir", str(tmp_path)])
  kinds = {r["attention"] for r in record["rows"] if "error" not in r}
  assert kinds == {"parallax", "softmax"}, record["rows"]
  assert all(r["decode_tokens"] == 2 * 7 for r in record["rows"])  # 2 rows, 7 decode steps
  assert len(record["parallax_over_softmax"]) == 1
  (written,) = tmp_path.glob("*.json")
  assert result_files.new_stem(tmp_path, written.stem).name == written.stem + "_2"


def test_bench_generate_smoke_keeps_explicit_shapes():
  """--smoke's shapes are defaults: it used to overwrite --batches, --prompt-lens, --new-tokens
  and --repeats given with it, measuring other shapes than the command asked for."""
  from experiments import bench_generate

  argv = ["--smoke", "--attention", "softmax", "--batches", "1", "--prompt-lens", "8"]
  record = bench_generate.main([*argv, "--new-tokens", "3", "--repeats", "2"])
  (row,) = record["rows"]
  assert (row["batch"], row["prompt_len"], row["new_tokens"]) == (1, 8, 3), row
  assert row["decode_tokens"] == 1 * 2  # 1 row, 2 decode steps


def test_bench_kernels_paths_trace_the_backward_they_name():
  """Each GPU path's gradient program names its own backward kernels (Triton two-pass
  "parallax_bwd_dq" + "_dkv", fused "parallax_bwd_row_stats" + "_dkv", Mosaic "*_mgpu")."""
  import re

  from experiments import bench_kernels

  x = jnp.ones((1, 128, 2, 128), jnp.bfloat16)  # D = 128: the Mosaic dk/dv tile is stacked
  kernels = {}
  for name, fn in bench_kernels.path_fns(True, True).items():
    if not name.startswith("pallas"):
      continue
    with bench_kernels.path_context(name):
      jaxpr = jax.make_jaxpr(lambda *a, fn=fn: jax.vjp(fn, *a)[1](a[0]))(x, x, x, x)
    kernels[name] = set(re.findall(r"parallax_bwd_\w+", str(jaxpr)))
  two_pass, fused = (
    {"parallax_bwd_dq", "parallax_bwd_dkv"},
    {"parallax_bwd_row_stats", "parallax_bwd_dkv"},
  )
  # at this length "pallas_mosaic_gpu" (BACKWARD="auto") runs the Triton backward
  assert kernels["pallas_gpu"] == kernels["pallas_mosaic_gpu"] == two_pass
  assert kernels["pallas_mosaic_gpu_triton_bwd"] == two_pass
  assert kernels["pallas_gpu_fused"] == kernels["pallas_mosaic_gpu_fused"] == fused
  stacked = {"parallax_bwd_dq_mgpu", "parallax_bwd_dkv_stacked_mgpu"}
  assert kernels["pallas_mosaic_gpu_bwd"] == stacked
  assert kernels["pallas_mosaic_gpu_fused_bwd"] == {"parallax_bwd_dkv_fused_stacked_mgpu"}
  unstacked = {"parallax_bwd_dq_mgpu", "parallax_bwd_dkv_mgpu"}
  assert kernels["pallas_mosaic_gpu_unstacked_bwd"] == unstacked
  assert kernels["pallas_mosaic_gpu_fwd_s2"] == kernels["pallas_mosaic_gpu_fwd_s4"] == stacked


@pytest.mark.parametrize("d,default_slots", [(128, 4), (64, 2)])
def test_bench_kernels_ring_depth_paths_reach_the_forward(d, default_slots):
  """``pallas_mosaic_gpu_fwd_s2`` / ``_s4`` trace the Mosaic forward with a 2- / 4-slot K/V ring
  at either head dim, the default path with its head dim's depth (at a length whose key range
  does not clip the ring)."""
  from experiments import bench_kernels

  x = jnp.ones((1, 512, 2, d), jnp.bfloat16)
  paths = bench_kernels.path_fns(True, True)

  def traced(name):
    with bench_kernels.path_context(name):
      return str(jax.make_jaxpr(paths[name])(x, x, x, x))

  four = {
    n: "barrier[4]" in traced(n) for n in ("pallas_mosaic_gpu_fwd_s2", "pallas_mosaic_gpu_fwd_s4")
  }
  assert four == {"pallas_mosaic_gpu_fwd_s2": False, "pallas_mosaic_gpu_fwd_s4": True}
  assert ("barrier[4]" in traced("pallas_mosaic_gpu")) == (default_slots == 4)


def test_mosaic_backward_switch_is_read_at_the_call():
  """``BACKWARD`` is fixed when the op is called (a static argument of the custom VJP): a
  backward traced after the switch is restored still runs the call's backward, and the same
  call under the other setting is not served from the first one's trace."""
  import re

  from pallas_kernels.mosaic_gpu import implementation
  from parallax_jax import parallax_attention

  x = jnp.ones((1, 128, 2, 64), jnp.bfloat16)

  def kernels(name: str):
    def f(*a):
      with implementation.use_backward(name):
        o, pullback = jax.vjp(
          lambda *b: parallax_attention(*b, implementation="pallas_mosaic_gpu", interpret=True),
          *a,
        )
      return pullback(o)  # traced outside the block

    return set(re.findall(r"parallax_bwd_\w+", str(jax.make_jaxpr(f)(x, x, x, x))))

  mosaic, triton = (
    {"parallax_bwd_dq_mgpu", "parallax_bwd_dkv_stacked_mgpu"},
    {"parallax_bwd_dq", "parallax_bwd_dkv"},
  )
  assert kernels("mosaic") == mosaic
  assert kernels("triton") == triton
  assert kernels("mosaic") == mosaic


@pytest.mark.parametrize("text", ["2x8192,4", "2x", "axb", "0x128", ""])
def test_bad_shapes_are_one_line_naming_the_flag(text, capsys):
  import argparse

  from experiments import bench_kernels

  with pytest.raises(SystemExit):
    bench_kernels.parse_shapes(argparse.ArgumentParser(), text)
  assert "--shapes: expected a comma list of BxL" in capsys.readouterr().err


def test_unknown_path_is_one_line_naming_the_flag(tmp_path, capsys):
  """A path name bench_kernels does not know (e.g. one renamed since) stops the run before
  anything is timed or written, naming the flag and the known paths."""
  from experiments import bench_kernels

  with pytest.raises(SystemExit):
    bench_kernels.main(
      ["--paths", "xla,pallas_mosaic_gpu_stack_qr_bwd", "--out-dir", str(tmp_path)]
    )
  err = capsys.readouterr().err
  assert "--paths: unknown ['pallas_mosaic_gpu_stack_qr_bwd']" in err
  assert "pallas_mosaic_gpu_unstacked_bwd" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
  ("bench", "argv", "flag"),
  [
    ("bench_kernels", ["--paths", "xla", "--heads", "-1"], "--heads"),
    ("bench_kernels", ["--paths", "xla", "--iters", "0"], "--iters"),
    ("bench_kernels", ["--paths", "xla", "--window", "-3"], "--window"),
    ("bench_kernels", ["--paths", "xla", "--dtype", "foo"], "--dtype"),
    ("bench_kernels", ["--paths", "xla,pallas_gpu,softmax_cudnn"], "--paths pallas_gpu,"),
    ("bench_fwd_math", [], "the Mosaic GPU kernels"),
    ("bench_cta_order", ["--head-dim", "0", "--interpret"], "--head-dim"),
  ],
)
def test_bad_or_gpu_only_requests_are_one_line_before_anything_is_written(
  tmp_path, capsys, bench, argv, flag
):
  """A bad size, or a GPU kernel asked for on a CPU host without --interpret, used to be a
  traceback or a result file of error rows (exit 0); now one line naming the flag (exit 2)."""
  import importlib

  module = importlib.import_module(f"experiments.{bench}")
  out = tmp_path / "out"
  with pytest.raises(SystemExit) as exit_:
    module.main(["--shapes", "1x128", *argv, "--out-dir", str(out)])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err
  assert f"error: {flag}" in err.strip().splitlines()[-1] and not out.exists()


def test_interpret_softmax_is_labelled_by_what_ran(tmp_path, capsys):
  """Under --interpret softmax_cudnn timed XLA's softmax under cuDNN's name; on a host without a
  GPU it is now refused in one line, and XLA's softmax runs as ``softmax_xla``."""
  from experiments import bench_kernels

  out = tmp_path / "out"
  quick = ["--quick", "--interpret", "--iters", "1", "--out-dir", str(out)]
  with pytest.raises(SystemExit) as exit_:
    bench_kernels.main(["--paths", "softmax_cudnn", *quick])
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert exit_.value.code == 2 and "error: --paths softmax_cudnn" in err and not out.exists()
  record = bench_kernels.main(["--paths", "softmax_xla", *quick])
  assert [(r["path"], "error" in r) for r in record["rows"]] == [("softmax_xla", False)]


def test_good_shapes_parse():
  import argparse

  from experiments import bench_kernels

  assert bench_kernels.parse_shapes(argparse.ArgumentParser(), "4x4096,2X8192") == [
    (4, 4096),
    (2, 8192),
  ]
