"""Block sizes of the Pallas GPU (Triton) kernels: their checks and tuned defaults.

The kernels take the op's ``BlockSizes``: one ``Tile(block_q, block_k, num_warps, num_stages)``
per pass (forward, dq/dr, dk/dv). Defaults come per (dtype, head-dim bucket) from
``tuned_block_sizes.json`` (written by ``python -m pallas_kernels.gpu.autotune``), falling back
to ``DEFAULT``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from parallax_jax.attention.block_sizes import PASSES, BlockSizes, Tile, check_for

_JSON = os.path.join(os.path.dirname(__file__), "tuned_block_sizes.json")

# The defaults where no tuned entry exists (the H200 bf16 D=128 tuning).
DEFAULT = BlockSizes(
  fwd=Tile(64, 64, num_warps=4, num_stages=3),
  dq=Tile(64, 64, num_warps=4, num_stages=2),
  dkv=Tile(32, 64, num_warps=4, num_stages=3),
)


def check(block_sizes: BlockSizes) -> None:
  """Triton tiles are powers of two >= 16 and every pass needs its launch parameters."""
  check_for("pallas_gpu", block_sizes, power_of_two_min=16, launch=True)


def clip(tile: Tile, q_len: int, kv_len: int) -> Tile:
  """``tile`` with its blocks capped at the (power-of-two rounded) sequence lengths."""
  return tile.clipped(pow2_at_least(q_len), pow2_at_least(kv_len))


def pow2_at_least(n: int, floor: int = 16) -> int:
  """The smallest power of two >= max(n, floor)."""
  p = floor
  while p < n:
    p *= 2
  return p


def head_dim_bucket(head_dim: int) -> int:
  return pow2_at_least(head_dim)


def bucket_key(dtype: str, head_dim: int) -> str:
  return f"{dtype}/d{head_dim_bucket(head_dim)}"


@functools.cache
def _tuned(path: str = _JSON) -> dict:
  try:
    with open(path) as f:
      return json.load(f).get("entries", {})
  except FileNotFoundError:
    return {}


def default_block_sizes(dtype: str, head_dim: int, seq_len: int | None = None) -> BlockSizes:
  """Tuned defaults for (dtype, head-dim bucket); ``DEFAULT`` where none is tuned.

  An entry may hold length-specific configs ``"<kernel>@<L>"`` used when ``seq_len >= L``
  (the largest such ``L`` wins): the best forward tile differs between L=4096 and L=16384.
  """
  entry = _tuned().get(bucket_key(dtype, head_dim))
  if entry is None:
    # float16 shares bfloat16's tuning (same tensor-core rate and register footprint).
    entry = _tuned().get(bucket_key("bfloat16" if dtype == "float16" else dtype, head_dim))
  bs = DEFAULT
  if entry:
    for name in PASSES:
      key, best = name, -1
      for k in entry:
        kname, _, threshold = k.partition("@")
        if kname == name and threshold and seq_len is not None and best < int(threshold) <= seq_len:
          key, best = k, int(threshold)
      if key in entry:
        bs = dataclasses.replace(bs, **{name: Tile(**entry[key])})
  return bs
