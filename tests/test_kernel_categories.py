"""The kernel-name categories of ``bench_train --kernel-times``, on names GPU traces give."""

import pytest

from parallax_jax.benchmarking import kernel_categories as kc


@pytest.mark.parametrize(
  "name, want",
  [
    ("parallax_fwd_mgpu_mosaic_gpu_kernel", "attention"),
    ("parallax_bwd_dkv", "attention"),  # the Triton backward
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16", "attention"),
    ("void cudnn::fusion::compute_dot_do_o_specialized<true>", "attention"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("gemm_fusion_dot_123", "matmul"),  # XLA's Triton GEMM, not "other XLA fusions"
    ("Memset 3", "memset / memcpy"),
    ("Memcpy DtoD", "memset / memcpy"),
    ("cudnn_generated_gemm_fusion_bf16", "matmul"),  # XLA's cuDNN GEMM: not attention
    ("void splitKreduce_kernel<32, 16>", "matmul"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "collectives"),
    ("wrapped_broadcast", "other XLA fusions"),
    ("copy_fusion_3", "other XLA fusions"),
    ("loop_multiply_fusion_2", "other XLA fusions"),
    ("input_reduce_fusion", "other XLA fusions"),
    ("wrapped_transpose", "other XLA fusions"),
    ("some_custom_kernel", "other"),
  ],
)
def test_category(name, want):
  assert kc.category(name) == want


def test_by_category_sums_and_lists_every_category():
  times = {"parallax_bwd_dq": 3.0, "nvjet_x": 2.0, "gemm_fusion_dot": 1.5, "loop_add_fusion": 1.0}
  got = kc.by_category(times)
  assert list(got) == list(kc.NAMES)
  assert got["attention"] == 3.0 and got["matmul"] == 3.5 and got["other XLA fusions"] == 1.0
  assert got["memset / memcpy"] == 0.0 and got["other"] == 0.0
  assert sum(got.values()) == pytest.approx(sum(times.values()))


def test_bench_train_tabulates_the_categories():
  """``bench_train``'s markdown: one row per benchmarked kind with every category, the sum and
  the step, then each kind's largest kernels; nothing without ``--kernel-times``."""
  from experiments import bench_train

  cats = dict.fromkeys(kc.NAMES, 0.0) | {"attention": 120.0, "matmul": 250.5}
  row = {
    "attention": "parallax@pallas_mosaic_gpu",
    "step_time_s": 0.4,
    "kernel_ms_by_category": cats,
    "top_kernels_us": {"parallax_bwd_dkv_mgpu": 3000.0},
  }
  lines = bench_train._kernel_lines([row])
  assert (
    "| parallax@pallas_mosaic_gpu | 120.0 | 250.5 | 0.0 | 0.0 | 0.0 | 0.0 | 370.5 | 400.0 |"
    in lines
  )
  assert "- `parallax_bwd_dkv_mgpu`: 3000" in lines
  assert bench_train._kernel_lines([]) == []


def test_bench_train_keeps_a_timed_row_when_the_profiler_fails(monkeypatch):
  """A ``--kernel-times`` failure is recorded in the row; the row's timing survives (the bench
  must not throw away a measured row, or retry it at another batch)."""
  import dataclasses

  from experiments import bench_train
  from parallax_jax.model import ModelConfig
  from parallax_jax.train.config import load_config
  from parallax_jax.train.optimizer import OptimizerConfig

  def broken(*args, **kwargs):
    raise RuntimeError("CUPTI_ERROR_INSUFFICIENT_PRIVILEGES")

  monkeypatch.setattr(bench_train, "kernel_times", broken)
  cfg = load_config("configs/tiny.py", [])
  model = dataclasses.replace(ModelConfig.from_dict(cfg.model.to_dict()), attention="parallax")
  opt = OptimizerConfig.from_dict(cfg.optimizer.to_dict())
  row = bench_train.bench_one(model, opt, 2, 32, steps=1, warmup=0, kernel_repeats=1)
  assert row["step_time_s"] > 0 and row["init_on"] == "host" and row["init_s"] > 0
  assert "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES" in row["kernel_times_error"]
  assert "kernel_ms_by_category" not in row
