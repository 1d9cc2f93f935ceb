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
    ("Memset 3", "memset / copy"),
    ("Memcpy DtoD", "memset / copy"),
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
  assert got["memset / copy"] == 0.0 and got["other"] == 0.0
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
  assert "| parallax@pallas_mosaic_gpu | 120.0 | 250.5 | 0.0 | 0.0 | 0.0 | 370.5 | 400.0 |" in lines
  assert "- `parallax_bwd_dkv_mgpu`: 3000" in lines
  assert bench_train._kernel_lines([]) == []
