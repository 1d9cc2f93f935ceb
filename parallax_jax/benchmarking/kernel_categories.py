"""Kernel device times (``kernel_times``) summed by what the kernels do, so a train step's time
can be split into attention, matmuls and XLA's other fusions.

The names are those a GPU profiler trace gives: our Pallas kernels (``parallax_*``), cuDNN's
attention (``cudnn_generated_*sdpa*`` and its ``cudnn::fusion`` helpers), cuBLAS / cuBLASLt
GEMMs (``nvjet_*``, ``sm90_xmma_gemm_*``, ``cutlass_*``), XLA's Triton GEMM fusions
(``*gemm_fusion*``) and XLA's other fusions (``loop_*_fusion``, ``input_*_fusion``, ...). The
first matching pattern names a kernel's category; the rest is ``other``. Work that serves the
attention but runs as an XLA fusion (Parallax's row statistics, ~55 us per call at (2, 8K);
cuDNN's memset and broadcast, ~140 us) counts where its kernel lands, not as attention.
"""

from __future__ import annotations

import collections
import re

CATEGORIES = (  # (category, pattern), first match wins: attention before "fusion"
  # cuDNN's attention kernels and helpers, not every cuDNN kernel (XLA also runs GEMM fusions
  # through cuDNN)
  ("attention", r"parallax|sdpa|flash|fmha|cudnn::fusion"),
  ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|matmul|splitkreduce"),
  ("collectives", r"nccl|all_?reduce|reduce_?scatter|all_?gather|all_?to_?all"),
  ("memset / memcpy", r"memset|memcpy"),
  (
    "other XLA fusions",
    r"fusion|^wrapped_|reduce|transpose|copy|convert|concatenate|slice|scatter|gather",
  ),
)
OTHER = "other"
NAMES = tuple(c for c, _ in CATEGORIES) + (OTHER,)


def category(kernel: str) -> str:
  """The category of one kernel name (case-insensitive)."""
  for name, pattern in CATEGORIES:
    if re.search(pattern, kernel, re.IGNORECASE):
      return name
  return OTHER


def by_category(times: dict[str, float]) -> dict[str, float]:
  """``{category: summed time}`` of ``{kernel name: time}``, every category present (0 if
  none), in ``NAMES`` order."""
  total = collections.Counter({name: 0.0 for name in NAMES})
  for kernel, t in times.items():
    total[category(kernel)] += t
  return {name: total[name] for name in NAMES}
