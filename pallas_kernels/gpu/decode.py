"""The "pallas_gpu" decode path: split-KV flash decoding (docs/design.md §13.3).

``IMPLEMENTATION`` is the ``DECODE`` registry's "pallas_gpu" entry. ``fwd`` launches
``decode_kernel`` on a ``(B, Hkv, num_splits)`` grid; with one split the kernel writes ``o``
itself, otherwise ``decode_merge`` merges the float32 partial states in one more launch (the
exact merge of ``decode.partials.merge_splits`` + ``finish``, which ``MERGE = "xla"`` runs
instead, as a few XLA fusions). The split count comes from ``decode.splits.choose_num_splits``
with the GPU's SM count (132, an H200's, when no GPU is attached: interpret mode on CPU);
``DecodeTuning`` overrides it and the launch parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.gpu.block_sizes import pow2_at_least
from pallas_kernels.gpu.decode_kernel import Launch, decode_call
from pallas_kernels.gpu.decode_merge import merge_call
from pallas_kernels.gpu.decode_rows import row_padding
from parallax_jax.attention.implementations import Implementation
from parallax_jax.decode.partials import finish, merge_splits
from parallax_jax.decode.splits import choose_num_splits
from parallax_jax.decode.validation import DecodeSpec

_DTYPES = ("float32", "bfloat16", "float16")
# Defaults from H200 sweeps (bf16, D = 128, B = 1 and 32, L = 512 to 16K, experiments/
# bench_decode.py): 128-key blocks, 4 warps, 3 stages were the best or tied at every shape
# (2 stages: ~20% slower at B = 1; 64-key blocks, 256-key blocks and 8 warps no better).
# Three stages only where K + V of three blocks stay within the footprint measured to compile
# (bf16, D = 128: 192 KiB of shared memory); other dtypes and head dims keep two.
BLOCK_K = 128
# Short caches at small batch (several splits, each one block): 64-key blocks halve each
# program's latency, and the cheap merge keeps the extra splits free. H200, B = 1, Hkv = 8
# (kernel + merge): 4.9 vs 6.3 us at L = 512, 5.3 vs 6.5 at 1K; at 4K 128 wins (8.7 vs 9.5).
SHORT_CACHE = 1024
SHORT_BLOCK_K = 64
NUM_WARPS = 4
NUM_STAGES = 3
FALLBACK_STAGES = 2
STAGED_BYTES = 192 * 1024
FALLBACK_CORES = 132  # an H200's SM count, for interpret mode without a GPU
MAX_ROWS = 128  # Tq * G query rows one program holds (padded to powers of two)
# The split merge: "in_kernel" (the last program of each (row, kv head) merges, one launch),
# "pallas" (decode_merge's second launch) or "xla" (partials.merge_splits, a few fusions).
MERGE = "pallas"
MERGES = ("in_kernel", "pallas", "xla")


def _pow2(x: int) -> bool:
  return x >= 1 and x & (x - 1) == 0


def _check(spec: DecodeSpec) -> None:
  if spec.dtype not in _DTYPES:
    raise NotImplementedError(
      f"implementation='pallas_gpu' decode takes {', '.join(_DTYPES)} inputs, got "
      f"{spec.dtype} (use implementation='xla' for float64)."
    )
  d = spec.head_dim
  if not (_pow2(d) and 16 <= d <= 256):
    raise NotImplementedError(
      f"implementation='pallas_gpu' decode needs head_dim (q.shape[3]) a power of two in "
      f"[16, 256] (Triton tiles; the cache is never padded), got {d}; use implementation='xla'."
    )
  tq_p, g_p = row_padding(spec.q_len, spec.group)
  if tq_p * g_p > MAX_ROWS:
    raise NotImplementedError(
      f"implementation='pallas_gpu' decode holds q_len * (Hq / Hkv) query rows per program, "
      f"at most {MAX_ROWS} after padding to powers of two; got q_len={spec.q_len}, "
      f"group={spec.group}. Decode fewer queries per call (or use parallax_attention for "
      "prefill, or implementation='xla')."
    )
  t = spec.tuning
  if t.block_k is not None and not (_pow2(t.block_k) and t.block_k >= 16):
    raise NotImplementedError(
      f"DecodeTuning.block_k must be a power of two >= 16 for implementation='pallas_gpu', "
      f"got {t.block_k}."
    )
  if t.num_warps is not None and not (_pow2(t.num_warps) and t.num_warps <= 16):
    raise NotImplementedError(
      f"DecodeTuning.num_warps must be a power of two <= 16 (Triton), got {t.num_warps}."
    )


def num_cores() -> int:
  """Streaming multiprocessors of the default device (``FALLBACK_CORES`` off-GPU)."""
  device = jax.devices()[0]
  return getattr(device, "core_count", None) or FALLBACK_CORES


def launch_for(spec: DecodeSpec) -> Launch:
  """The call's launch: ``DecodeTuning`` fields where given, else the defaults and heuristic.

  The key block is ``BLOCK_K``, or ``SHORT_BLOCK_K`` for a cache of at most ``SHORT_CACHE``
  keys that the split heuristic splits (``B * Hkv`` below the core count), capped at the cache
  length rounded up to a power of two.
  """
  t = spec.tuning
  short = spec.cache_len <= SHORT_CACHE and spec.batch * spec.num_kv_heads < num_cores()
  block_k = t.block_k or min(SHORT_BLOCK_K if short else BLOCK_K, pow2_at_least(spec.cache_len))
  splits = t.num_splits or choose_num_splits(
    spec.batch, spec.num_kv_heads, spec.cache_len, num_cores=num_cores(), block_k=block_k
  )
  itemsize = jnp.dtype(spec.dtype).itemsize
  fits = itemsize == 2 and 2 * block_k * spec.head_dim * itemsize * NUM_STAGES <= STAGED_BYTES
  if MERGE not in MERGES:
    raise ValueError(f"pallas_kernels.gpu.decode.MERGE must be one of {MERGES}, got {MERGE!r}.")
  return Launch(
    block_k=block_k,
    num_splits=splits,
    num_warps=t.num_warps or NUM_WARPS,
    num_stages=t.num_stages or (NUM_STAGES if fits else FALLBACK_STAGES),
    merge_in_kernel=splits > 1 and MERGE == "in_kernel",
  )


def fwd(q, r, k_cache, v_cache, lengths, spec: DecodeSpec):
  """``[B, Tq, Hq, D]`` output of ``parallax_decode`` in q's dtype (see its docstring)."""
  launch = launch_for(spec)
  out = decode_call(q, r, k_cache, v_cache, lengths, spec, launch)
  if launch.num_splits == 1 or launch.merge_in_kernel:
    pass  # the kernel wrote o
  elif MERGE == "xla":
    states = jax.tree.map(lambda x: x[:, : launch.num_splits], out)  # drop the padding splits
    out = finish(merge_splits(states, axis=1), q.dtype)  # [B, Tq, Hkv, G, D]
  else:
    out = merge_call(out, launch.num_splits, q.dtype, interpret=spec.interpret)
  return out.reshape(q.shape)


IMPLEMENTATION = Implementation(
  name="pallas_gpu", fwd=fwd, bwd=None, platforms=("gpu",), check=_check, interpretable=True
)
