"""Safetensors checkpoints in a Hugging Face directory: streamed reads, sharded writes.

Reading: a single ``model.safetensors`` or a sharded set named by
``model.safetensors.index.json`` (``weight_map``: tensor name -> file); a directory holding both
is refused (one is stale: transformers would load the single file, whatever the index says).
``SafetensorsReader`` opens each file with ``safetensors.safe_open(framework="numpy")``
(memory-mapped, lazy): the names, shapes and dtypes come from the headers, and ``get(name)``
reads one tensor only.

Writing: ``write_safetensors`` takes tensors one at a time and fills shards up to
``max_shard_bytes``; one shard is ``model.safetensors``, several are
``model-0000k-of-0000n.safetensors`` plus the index, as ``save_pretrained`` writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from parallax_jax.errors import UserError, UserFileNotFoundError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class SafetensorsReader(contextlib.AbstractContextManager):
  """The tensors of a HF model directory, read lazily (use as a context manager)."""

  def __init__(self, directory: str | Path):
    from safetensors import safe_open

    self.directory = Path(directory)
    index, single = self.directory / INDEX, self.directory / SINGLE
    if index.is_file() and single.is_file():  # one is stale (save_pretrained removes neither)
      raise UserError(
        f"{self.directory} holds both {SINGLE} and {INDEX} (transformers loads {SINGLE}, "
        "ignoring the index): remove the stale one"
      )
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
      if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) for f in weight_map.values()
      ):
        raise UserError(f"{index}: 'weight_map' must map each tensor name to a file name")
      files = sorted(set(weight_map.values()))
    elif single.is_file():
      weight_map, files = None, [SINGLE]
    else:
      present = sorted(p.name for p in self.directory.glob("*.safetensors"))
      raise UserFileNotFoundError(
        f"{self.directory}: no {SINGLE} and no {INDEX}"
        + (f" (found {present}: a sharded set needs its index)" if present else "")
      )
    self._stack = contextlib.ExitStack()
    self._handles = {}
    for name in files:
      path = self.directory / name
      if not path.is_file():
        raise UserFileNotFoundError(f"{index} names {name}, which does not exist in {directory}")
      try:
        self._handles[name] = self._stack.enter_context(safe_open(str(path), framework="numpy"))
      except Exception as e:  # the Rust side raises plain exceptions for damaged headers
        raise UserError(f"{path}: not a readable safetensors file: {e}") from e
    self._file_of: dict[str, str] = {}
    for name, handle in self._handles.items():
      for key in handle.keys():
        self._file_of[key] = name
    if weight_map is not None:  # the index and the files' headers must agree
      for key, name in weight_map.items():
        if self._file_of.get(key) != name:
          raise UserError(f"{index} maps {key!r} to {name}, but that file does not hold it")
      unlisted = sorted(set(self._file_of) - set(weight_map))
      if unlisted:
        raise UserError(f"{index} does not list tensors its files hold: {unlisted[:5]}")

  def names(self) -> list[str]:
    return sorted(self._file_of)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

  def dtype(self, name: str) -> str:
    """The safetensors dtype code (``"BF16"``, ``"F32"``, ...)."""
    return self._handles[self._file_of[name]].get_slice(name).get_dtype()

  def get(self, name: str) -> np.ndarray:
    """One tensor (bfloat16 as ``ml_dtypes.bfloat16``)."""
    return self._handles[self._file_of[name]].get_tensor(name)

  def __exit__(self, *exc):
    self._stack.close()
    return None


def write_safetensors(
  directory: str | Path,
  tensors: Iterable[tuple[str, np.ndarray]],
  *,
  max_shard_bytes: int = 5 * 2**30,
) -> list[Path]:
  """Writes ``(name, array)`` pairs into ``directory``; returns the files written.

  At most one shard's tensors are held at a time (a tensor larger than ``max_shard_bytes``
  gets a shard of its own). Metadata ``{"format": "pt"}``, which transformers expects.
  """
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  shards: list[tuple[Path, list[str]]] = []
  pending: dict[str, np.ndarray] = {}
  size = total = 0

  def flush():
    nonlocal pending, size
    if pending:
      path = directory / f".shard-{len(shards):05d}.tmp"
      save_file(pending, str(path), metadata={"format": "pt"})
      _umask_mode(path)
      shards.append((path, list(pending)))
      pending, size = {}, 0

  for name, array in tensors:
    array = np.ascontiguousarray(array)
    if name in pending or any(name in names for _, names in shards):
      raise ValueError(f"write_safetensors: tensor {name!r} given twice")
    if pending and size + array.nbytes > max_shard_bytes:
      flush()
    pending[name] = array
    size += array.nbytes
    total += array.nbytes
  flush()
  if len(shards) <= 1:
    out = directory / SINGLE
    if shards:
      os.replace(shards[0][0], out)
    else:
      save_file({}, str(out), metadata={"format": "pt"})
      _umask_mode(out)
    return [out]
  n = len(shards)
  weight_map, written = {}, []
  for k, (tmp, names) in enumerate(shards, start=1):
    final = directory / f"model-{k:05d}-of-{n:05d}.safetensors"
    os.replace(tmp, final)
    written.append(final)
    weight_map.update({name: final.name for name in names})
  index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
  (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
  return written


def _umask_mode(path: Path) -> None:
  """Gives ``path`` the mode an ordinary file gets (0o666 less the umask): ``save_file`` creates
  its files 0o600, which a shared model directory's other readers cannot open."""
  umask = os.umask(0)
  os.umask(umask)  # reading the umask means setting it; restored at once
  os.chmod(path, 0o666 & ~umask)
