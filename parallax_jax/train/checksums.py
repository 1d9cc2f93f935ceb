"""Content checksums of a checkpoint's arrays, saved beside them and checked on restore.

Orbax notices a truncated or missing file, but bytes changed in place (a bad disk block, a
partial overwrite) restore without error as different numbers: a model that evaluates to NaN,
or worse, to plausible garbage. So every save also records, per leaf of the saved tree, a
32-bit checksum of the leaf's bytes, computed on device from the arrays being saved (one fused
pass, no host copy), and a restore recomputes it from the restored arrays and refuses the step
on any difference (``restore_latest`` then falls back to an older step).

The checksum of a leaf is ``sum_i w_i * c_i mod 2^32`` over its elements' bit patterns ``w_i``
(zero-extended to 32 bits; a 64-bit element as two words) with odd weights
``c_i = (i * 2654435761) | 1``: a change to any one word always changes the sum (an odd weight
is invertible mod 2^32), and several changes cancel with probability about 2^-32. It reads the
bits, so NaN payloads and signed zeros count.

The data iterator's state (a JSON item) is no array, but a changed number there resumes from
another place in the data stream without error just the same: the record also holds a sha256 of
its canonical JSON (``"data"``; records written before 2026-12-05 lack it and check no data).
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

VERSION = 1
_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant, odd


def _words(x: jax.Array) -> jax.Array:
  """The bit patterns of ``x`` as a flat uint32 vector (PRNG keys by their key data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = x.dtype.itemsize
  if size == 8:
    return lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # [..., 2] words
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  words = _words(jnp.asarray(x))
  weights = lax.iota(jnp.uint32, words.shape[0]) * _GOLDEN | np.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)  # uint32 arithmetic wraps: mod 2^32


@jax.jit
def _tree_checksums(tree):
  return jax.tree.map(_leaf_checksum, tree)


def checksums(tree) -> dict[str, int]:
  """``{keystr(path): checksum}`` of every array leaf of ``tree`` (JSON-ready ints)."""
  sums = jax.device_get(_tree_checksums(tree))
  flat, _ = jax.tree_util.tree_flatten_with_path(sums)
  return {jax.tree_util.keystr(path): int(value) for path, value in flat}


def data_digest(data) -> str:
  """sha256 of the data item ``data`` as JSON gives it back (tuples as lists, sorted keys)."""
  plain = json.loads(json.dumps(data))
  return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def record(tree, data=None) -> dict:
  """What a checkpoint stores beside ``tree`` and its data item ``data`` (None: none saved)."""
  out = {"version": VERSION, "leaves": checksums(tree)}
  if data is not None:
    out["data"] = data_digest(data)
  return out


def verify_data(data, stored: dict) -> None:
  """Raises ``ChecksumMismatch`` unless the data item ``data`` has the digest ``stored``
  (``record``'s dict) holds; a record without one (older checkpoints) checks nothing."""
  want = stored.get("data")
  if want is not None and data_digest(data) != want:
    raise ChecksumMismatch(
      "the data iterator's state differs from the checksum saved with it: the files were "
      "changed after the save"
    )


def verify(tree, stored: dict, *, partial: bool = False) -> None:
  """Raises ``ChecksumMismatch`` unless ``tree``'s leaves have the checksums ``stored``
  (``record``'s dict) holds. ``partial``: ``tree`` is a part of the saved tree (a params-only
  restore): only its own leaves are compared, and each must be in ``stored``."""
  if stored.get("version") != VERSION:
    raise ChecksumMismatch(f"unknown checksum record version {stored.get('version')!r}")
  want, have = stored["leaves"], checksums(tree)
  missing = sorted(set(have) - set(want))
  if not partial:
    missing += sorted(set(want) - set(have))
  bad = sorted(k for k in set(have) & set(want) if have[k] != want[k])
  if bad or missing:
    shown = ", ".join((bad + missing)[:3]) + (" ..." if len(bad) + len(missing) > 3 else "")
    raise ChecksumMismatch(
      f"{len(bad)} array(s) differ from the checksums saved with them"
      + (f" and {len(missing)} have none" if missing else "")
      + f" ({shown}): the files were changed after the save"
    )


class ChecksumMismatch(ValueError):
  """A restored checkpoint's arrays are not the bytes that were saved."""
