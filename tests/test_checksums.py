"""Checkpoint checksums: the documented formula (a NumPy oracle), and that any one changed
element, a swap of two elements, or a missing leaf is caught."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from parallax_jax.train import checksums

GOLDEN = 2654435761


def _oracle(x: np.ndarray) -> int:
  """sum_i w_i c_i mod 2^32 with c_i = (i * 2654435761 mod 2^32) | 1, in Python integers."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    words = x.astype(np.uint64).ravel()
  else:
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    words = x.view(unsigned).astype(np.uint64).ravel()
  i = np.arange(words.size, dtype=np.uint64)
  weights = ((i * GOLDEN) % 2**32) | 1
  return int(sum(int(w) * int(c) for w, c in zip(words, weights, strict=True)) % 2**32)


def _arrays(rng):
  return {
    "f32": rng.standard_normal((7, 33)).astype(np.float32),
    "bf16": rng.standard_normal((5, 40)).astype(ml_dtypes.bfloat16),
    "i32": rng.integers(-(2**31), 2**31, (3, 17), dtype=np.int64).astype(np.int32),
    "u8": rng.integers(0, 256, (4, 9), dtype=np.uint8),
    "bool": rng.random((6, 5)) < 0.5,
    "scalar": np.int32(30),
  }


def test_checksums_follow_the_documented_formula():
  arrays = _arrays(np.random.default_rng(0))
  got = checksums.checksums({k: jnp.asarray(v) for k, v in arrays.items()})
  assert got == {f"['{k}']": _oracle(v) for k, v in arrays.items()}


@pytest.mark.parametrize("name", ["f32", "bf16", "i32", "u8", "bool"])
def test_any_changed_element_or_swap_is_caught(name):
  rng = np.random.default_rng(1)
  x = _arrays(rng)[name]
  saved = checksums.record({"x": jnp.asarray(x)})
  checksums.verify({"x": jnp.asarray(x)}, saved)  # unchanged: accepted
  flat = x.ravel()
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[flat.dtype.itemsize]
  for i in rng.choice(flat.size, 8, replace=False):
    changed = flat.copy()
    bit = 0 if name == "bool" else rng.integers(0, 8 * flat.dtype.itemsize)
    changed.view(unsigned)[i] ^= unsigned(1 << bit)  # one bit of one element
    with pytest.raises(checksums.ChecksumMismatch, match=r"1 array\(s\) differ .*\['x'\]"):
      checksums.verify({"x": jnp.asarray(changed.reshape(x.shape))}, saved)
  i, j = next((i, j) for i in range(flat.size) for j in range(i) if flat[i] != flat[j])
  swapped = flat.copy()
  swapped[[i, j]] = swapped[[j, i]]
  with pytest.raises(checksums.ChecksumMismatch):
    checksums.verify({"x": jnp.asarray(swapped.reshape(x.shape))}, saved)


def test_64_bit_leaves_count_both_words():
  """Under x64 an 8-byte element is two words (little-endian: low, high): the formula over them,
  and a flip of its top bit (in the high word) is caught."""
  import jax

  with jax.enable_x64(True):
    x = np.random.default_rng(2).standard_normal((3, 5))  # float64
    words = x.view(np.uint32)  # [3, 10]: each element's low and high word
    assert checksums.checksums({"x": jnp.asarray(x)}) == {"['x']": _oracle(words)}
    saved = checksums.record({"x": jnp.asarray(x)})
    flipped = x.copy()
    flipped.view(np.uint64)[1, 2] ^= np.uint64(1 << 63)  # the sign bit: the high word only
    with pytest.raises(checksums.ChecksumMismatch):
      checksums.verify({"x": jnp.asarray(flipped)}, saved)


def test_leaves_missing_on_either_side_and_partial_reads():
  tree = {"params": {"w": jnp.ones((2, 3))}, "opt_state": {"mu": jnp.zeros((2, 3))}}
  saved = checksums.record(tree)
  checksums.verify({"params": tree["params"]}, saved, partial=True)  # a params-only restore
  with pytest.raises(checksums.ChecksumMismatch, match="1 have none"):
    checksums.verify({"params": tree["params"]}, saved)
  with pytest.raises(checksums.ChecksumMismatch, match="have none"):
    checksums.verify({**tree, "extra": jnp.ones(2)}, saved, partial=True)
  with pytest.raises(checksums.ChecksumMismatch, match="unknown checksum record version"):
    checksums.verify(tree, {**saved, "version": 99})


def test_the_data_state_is_checked_as_json_gives_it_back():
  """The saved state holds tuples (grain's remainder slices) that the JSON item gives back as
  lists, its keys in any order: the same state. Any changed number is caught; a record written
  before the data digest (no "data") checks nothing."""
  import hashlib
  import json

  state = {"parent_state": {"next_index": 67}, "remainder_slices": {"inputs": (138, 158)}}
  saved = checksums.record({"w": jnp.ones(2)}, state)
  canonical = '{"parent_state": {"next_index": 67}, "remainder_slices": {"inputs": [138, 158]}}'
  assert saved["data"] == hashlib.sha256(canonical.encode()).hexdigest()
  back = json.loads(json.dumps({"remainder_slices": {"inputs": [138, 158]}, **state}))
  checksums.verify_data(back, saved)
  with pytest.raises(checksums.ChecksumMismatch, match="data iterator's state differs"):
    checksums.verify_data({**back, "parent_state": {"next_index": 68}}, saved)
  checksums.verify_data({"anything": 1}, checksums.record({"w": jnp.ones(2)}))
