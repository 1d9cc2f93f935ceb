"""How many programs share one (row, kv head)'s keys: the split-KV heuristic (docs/design.md
§13.3).

Decode reads the whole valid cache once; with ``B * Hkv`` programs alone the GPU's cores sit
idle when ``B * Hkv`` is small (B = 1, Hkv = 8 fills 8 of an H200's 132 SMs). Splitting each
row's keys into ``S`` ranges gives ``B * Hkv * S`` programs whose float32 partial states are
merged afterwards. The rule (after the official kernel's, rounded the same way):

* ``B * Hkv >= cores``: 1 split (every core already has a program);
* otherwise ``ceil(waves * cores / (B * Hkv))`` splits, capped so each split keeps at least
  ``min_blocks`` key blocks of the cache (``S * block_k * min_blocks <= cache_len``) and at most
  ``max_splits``; rounded down to a power of two (fewer, fuller programs).

``DecodeTuning.num_splits`` overrides it (``configs``: ``inference.decode_num_splits``).
"""

from __future__ import annotations

from parallax_jax.attention.masking import cdiv

MAX_SPLITS = 256


def choose_num_splits(
  batch: int,
  num_kv_heads: int,
  cache_len: int,
  *,
  num_cores: int,
  block_k: int,
  waves: int = 1,
  min_blocks: int = 1,
  max_splits: int = MAX_SPLITS,
) -> int:
  """The split count for ``batch * num_kv_heads`` (row, kv head) pairs over ``cache_len`` keys."""
  pairs = batch * num_kv_heads
  if pairs >= num_cores:
    return 1
  needed = cdiv(waves * num_cores, pairs)
  cap = max(1, min(max_splits, cache_len // (block_k * min_blocks)))
  splits = max(1, min(needed, cap))
  return 1 << (splits.bit_length() - 1)
