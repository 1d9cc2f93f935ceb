"""The "pallas_tpu" decode path: the split-KV Mosaic kernel and its wrapper (docs/design.md §13.3).

``fwd`` picks the key block and split count, computes each (row, split)'s key-block range from
the runtime ``lengths`` (``spec.mask(lengths).key_range``: the windowed range of the row's
queries, cut into ``num_splits`` contiguous pieces of ``cdiv(blocks, num_splits)`` blocks),
runs ``decode_kernel.partial_states`` and merges the splits with ``decode.partials``
(``merge_splits`` + ``finish``; with one split too: the merge of one state is exact, and the
kernel keeps one output format). The cache goes to the kernel as it is; only q and r (``Tq``
tokens) are rearranged, to ``[B, Hkv, Tq * G, D]``.

Tuning (``DecodeTuning``):

* ``block_k``: keys per block (the sublanes of each head's ``[bk, D]`` K/V tile): a multiple of
  8 (16 for bfloat16/float16, two rows per sublane) or at least S; an upper bound, capped at S.
  Default: the largest such divisor of S up to ``MAX_BLOCK_K`` keys and ``BLOCK_BYTES`` per K
  block; if S has none of at least a quarter of that, a ragged last block (its rows past S are
  masked like any junk slot).
* ``num_splits``: default ``decode.splits.choose_num_splits`` over the ``B`` programs of a
  split with the TensorCores of the device (1 on v5e/v6e/v7x devices and in interpret mode, 2
  on a v4/v5p megacore), so 1 split unless a megacore has a single row to decode.
* ``num_warps``, ``num_stages``: Triton parameters; NotImplementedError here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tpu import decode_kernel
from pallas_kernels.tpu.kernel_utils import LANES
from parallax_jax.attention.implementations import Implementation
from parallax_jax.attention.masking import cdiv
from parallax_jax.decode.partials import finish, merge_splits
from parallax_jax.decode.splits import choose_num_splits
from parallax_jax.decode.validation import DecodeSpec

_DTYPES = ("float32", "bfloat16", "float16")
MAX_BLOCK_K = 512
BLOCK_BYTES = 2 * 1024 * 1024  # one K block in VMEM; K and V are double-buffered: 4x this


def sublane_rows(dtype) -> int:
  """Rows of one (sublanes x 128 lanes) tile: 8 of a 32-bit type, 16 of a 16-bit one."""
  return 8 * 4 // jnp.dtype(dtype).itemsize


def _check(spec: DecodeSpec) -> None:
  """NotImplementedError for what this kernel cannot run."""
  if spec.dtype not in _DTYPES:
    raise NotImplementedError(
      f"implementation='pallas_tpu' takes {', '.join(_DTYPES)} inputs, got {spec.dtype}; "
      "use implementation='xla'."
    )
  t = spec.tuning
  for name in ("num_warps", "num_stages"):
    if getattr(t, name) is not None:
      raise NotImplementedError(
        f"DecodeTuning.{name} is a Triton launch parameter ('pallas_gpu'); it means nothing "
        "to implementation='pallas_tpu': leave it None."
      )
  rows = sublane_rows(spec.dtype)
  if t.block_k is not None and t.block_k % rows and t.block_k < spec.cache_len:
    raise NotImplementedError(
      f"DecodeTuning.block_k={t.block_k}: implementation='pallas_tpu' needs a multiple of "
      f"{rows} for {spec.dtype} (keys sit on sublanes, Mosaic's (8, 128) tiling) or at least "
      f"the cache length {spec.cache_len}."
    )


def block_k(spec: DecodeSpec) -> int:
  """Keys per block of this call (see the module doc)."""
  s_len = spec.cache_len
  if spec.tuning.block_k is not None:
    return min(spec.tuning.block_k, s_len)
  rows = sublane_rows(spec.dtype)
  # VMEM bytes of one key (Hkv x D, padded to whole (rows, 128) tiles: the worst case).
  itemsize = jnp.dtype(spec.dtype).itemsize
  row_bytes = cdiv(spec.num_kv_heads, rows) * rows * cdiv(spec.head_dim, LANES) * LANES * itemsize
  cap = max(rows, min(MAX_BLOCK_K, BLOCK_BYTES // row_bytes) // rows * rows)
  if s_len <= cap:
    return s_len
  for bk in range(cap, cap // 4 - 1, -rows):
    if s_len % bk == 0:
      return bk
  return cap


def _num_cores() -> int:
  """TensorCores behind one device (2 on a megacore); 1 off TPU (interpret mode)."""
  if jax.default_backend() != "tpu":
    return 1
  try:
    return pltpu.get_tpu_info().num_cores
  except Exception:  # an unknown chip or an older jax: a single core is the safe guess
    return 1


def num_splits(spec: DecodeSpec, bk: int) -> int:
  """Split count: the override, else the heuristic over the ``B`` programs of one split (each
  program serves every kv head of its row)."""
  if spec.tuning.num_splits is not None:
    return spec.tuning.num_splits
  return choose_num_splits(spec.batch, 1, spec.cache_len, num_cores=_num_cores(), block_k=bk)


def split_ranges(lengths, spec: DecodeSpec, bk: int, splits: int, xp=jnp):
  """``(start, count)``, ``[B * splits]`` int32: each (row, split)'s first key block and number
  of blocks. Row ``b``'s blocks ``[first, first + n)`` hold every key its queries may see;
  split ``s`` takes ``[first + s * per, first + (s + 1) * per)`` of them, ``per = cdiv(n,
  splits)``. ``xp``: ``jax.numpy`` (traced lengths) or ``numpy``, as in ``masking``."""
  zero = xp.zeros_like(lengths)
  lo, hi = spec.mask(lengths).key_range(zero, zero + spec.q_len - 1, xp=xp)
  first = lo // bk
  n = xp.where(hi >= lo, hi // bk + 1 - first, 0)
  per = cdiv(n, splits)[:, None]
  offset = xp.arange(splits, dtype=np.int32)[None, :] * per
  count = xp.clip(n[:, None] - offset, 0, per)
  # An empty split points at its row's last block (the step before it fetched that block: no
  # new DMA); the clip keeps unchecked (traced) out-of-range lengths inside the cache.
  last = xp.maximum(first + n - 1, 0)[:, None]
  start = xp.clip(xp.minimum(first[:, None] + offset, last), 0, cdiv(spec.cache_len, bk) - 1)
  return start.reshape(-1).astype(np.int32), count.reshape(-1).astype(np.int32)


@functools.partial(jax.jit, static_argnums=5)
def fwd(q, r, k_cache, v_cache, lengths, spec: DecodeSpec):
  """``[B, Tq, Hq, D]`` output of ``parallax_decode`` in q's dtype (see its docstring)."""
  _check(spec)
  batch, q_len, hq, d = q.shape
  hkv, group = spec.num_kv_heads, spec.group
  bk = block_k(spec)
  splits = num_splits(spec, bk)
  lengths = lengths.astype(jnp.int32)
  start, count = split_ranges(lengths, spec, bk, splits)

  def rows(x):  # [B, Tq, Hq, D] -> [B, Hkv, Tq * G, D], row t * G + g
    x = x.reshape(batch, q_len, hkv, group, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(batch, hkv, q_len * group, d)

  state = decode_kernel.partial_states(
    rows(q), rows(r), k_cache, v_cache, lengths, start, count,
    spec=spec, bk=bk, splits=splits,
  )  # fmt: skip
  o = finish(merge_splits(state, axis=1), q.dtype)  # [B, Hkv, Tq * G, D]
  o = o.reshape(batch, hkv, q_len, group, d).transpose(0, 2, 1, 3, 4)
  return o.reshape(batch, q_len, hq, d)


IMPLEMENTATION = Implementation(
  name="pallas_tpu", fwd=fwd, bwd=None, platforms=("tpu",), check=_check, interpretable=True
)
