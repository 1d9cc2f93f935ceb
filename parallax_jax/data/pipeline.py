"""The grain pipeline: documents -> tokens -> packed rows -> batches for LM training.

    doc indices (train/eval split by hash, `document_split`, then [process_index::process_count])
      -> shuffle (train; reshuffled every epoch) -> repeat -> read + tokenize -> drop empty
      -> to_iter_dataset (threads) -> ConcatThenSplitIterDataset (no token wasted)
      -> batch (train: drop the remainder; eval: pad the last batch)

Each document becomes the pair inputs = [EOS] + tokens, targets = tokens + [EOS] (with
`add_eos`; else inputs = tokens[:-1], targets = tokens[1:]): the shift is done per document
before packing, so a target never comes from another document and packing splits inputs and
targets at the same place. A document that does not fit is continued in the next row as a new
segment whose positions restart at 0.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from parallax_jax.data.config import DataConfig
from parallax_jax.data.sources import DocumentSource, make_source
from parallax_jax.errors import UserError

_SPLIT_SALT = 0x5DEECE66D  # fixed: the eval split must not change with seeds


def split_documents(num_documents: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic train/eval partition of document indices by a hash of the index.

  Returns (train, eval) sorted int64 arrays. Document i is eval iff u(i) < eval_fraction with
  u a splitmix64 hash mapped to [0, 1): independent of any seed and of the number of
  processes. With eval_fraction > 0 and >= 2 documents both splits are non-empty; a single
  document is always train's (eval_fraction = 0: every document is).
  """
  with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
    z = np.arange(num_documents, dtype=np.uint64) + np.uint64(_SPLIT_SALT)
    z = z * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
  is_eval = u < eval_fraction
  if eval_fraction > 0 and num_documents >= 2:
    is_eval[np.argmin(u)] = True  # never an empty eval split ...
  if num_documents:
    is_eval[np.argmax(u)] = False  # ... nor an empty train split
  return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def document_split(source: DocumentSource, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) document indices: the source's own split where it has one (`PythonCorpus`:
  by a hash of each file's path), else `split_documents` (by a hash of the index)."""
  if hasattr(source, "split_indices"):
    return source.split_indices(eval_fraction)
  return split_documents(len(source), eval_fraction)


def state_from_json(state):
  """An iterator state read back from JSON (a checkpoint's `data` item) -> as `get_state()` gave
  it, for `set_state`. JSON has no tuples: grain's `ConcatThenSplitIterDataset` marks "no
  remainder" (the last row ended exactly at a document's end) by the slice (-1, -1) and compares
  it with `!=`, so the [-1, -1] that JSON gives back reads as a remainder: the restored iterator
  would drop a document and every later row would differ."""
  if isinstance(state, dict):
    return {
      k: {f: tuple(s) for f, s in v.items()}
      if k == "remainder_slices" and isinstance(v, dict)
      else state_from_json(v)
      for k, v in state.items()
    }
  if isinstance(state, list):
    return [state_from_json(v) for v in state]
  return state


class _ReadAndTokenize:
  """Document index -> {"inputs", "targets"}: int32 [n] each, targets[t] = next token. A document
  of no tokens gives n = 0 (dropped), not a lone EOS-to-EOS pair."""

  def __init__(self, source: DocumentSource, tokenizer, add_eos: bool):
    self.source, self.tokenizer, self.add_eos = source, tokenizer, add_eos

  def __call__(self, index) -> dict[str, np.ndarray]:
    doc = self.source[int(index)]
    tokens = np.asarray(self.tokenizer.encode(doc) if isinstance(doc, str) else doc, np.int32)
    if self.add_eos and tokens.size:
      eos = np.full((1,), self.tokenizer.eos_id, np.int32)
      return {"inputs": np.concatenate([eos, tokens]), "targets": np.concatenate([tokens, eos])}
    return {"inputs": tokens[:-1], "targets": tokens[1:]}


def _non_empty(example) -> bool:
  return example["inputs"].size > 0


def _lm_features(packed) -> dict[str, np.ndarray]:
  segment_ids = packed["inputs_segment_ids"].astype(np.int32)
  # Targets are packed in lockstep with inputs, so this only masks padding (segment 0).
  same_doc = packed["targets_segment_ids"] == segment_ids
  return {
    "inputs": packed["inputs"].astype(np.int32),
    "targets": packed["targets"].astype(np.int32),
    "segment_ids": segment_ids,
    "positions": packed["inputs_positions"].astype(np.int32),
    "loss_mask": ((segment_ids > 0) & same_doc).astype(np.float32),
  }


def _empty_split_advice(cfg, source, split, num_eval, process_count) -> str:
  """What is wrong and what works, for a split that leaves a process no document."""
  n = len(source)
  docs = f"the source has {n} document{'s' * (n != 1)}"
  procs = f" (one per process: {process_count} processes)" if process_count > 1 else ""
  more = "add documents"
  if getattr(source, "text_split", "line") != "line":  # a TextSource cutting coarser than lines
    more += f" (or cut files finer: data.text_split='paragraph' or 'line', now {cfg.text_split!r})"
  if split == "train":
    return (
      f"split='train' has no documents for every process: {docs}, {num_eval} held out for "
      f"eval (data.eval_fraction={cfg.eval_fraction}), and each process needs one{procs}; "
      f"{more} or lower data.eval_fraction"
    )
  off = "or turn eval off with train.eval_every=0"
  if cfg.eval_fraction == 0:
    why = "data.eval_fraction=0 holds out no document"
    fix = f"set data.eval_fraction > 0 (needs >= {process_count + 1} documents; {docs})"
  elif n < process_count + 1:
    why = (
      f"{docs}: eval holds out whole documents and training keeps at least one, so eval "
      f"needs >= {process_count + 1} documents{procs}"
    )
    fix = more
  else:
    why = f"data.eval_fraction={cfg.eval_fraction} holds out {num_eval} of {n} documents{procs}"
    fix = "raise data.eval_fraction"
  return f"split='eval' has no documents: {why}; {fix}, {off}"


def make_dataset(
  cfg: DataConfig,
  *,
  tokenizer,
  seq_len: int,
  batch_size: int,
  split: str,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_epochs: int | None = None,
  source: DocumentSource | None = None,
) -> grain.IterDataset:
  """Batches of packed documents for next-token prediction, deterministic given `seed`.

  Args:
    cfg: data settings. tokenizer: a `Tokenizer` (see `make_tokenizer(cfg.tokenizer)`).
    seq_len, batch_size: row length and rows per batch on this process.
    split: "train" (shuffled by (seed, cfg.shuffle_seed), reshuffled each epoch, last
      partial batch dropped) or "eval" (held-out documents in a fixed order; the last batch
      is padded with all-zero rows so every batch has the same shape).
    process_index, process_count: this process's share of documents (multi-host).
    num_epochs: passes over this process's documents; None means forever for "train" and
      once for "eval". Processes can get different numbers of eval batches, so multi-host
      eval should run the same fixed number of steps on every process.
    source: a prebuilt `make_source(cfg, tokenizer)` (e.g. to record `describe()`).

  Returns:
    A grain `IterDataset`; `iter(ds)` supports `get_state()`/`set_state()`. Each element:
      inputs      int32   [batch_size, seq_len]  token ids (pad: 0)
      targets     int32   [batch_size, seq_len]  next token within the same document
      segment_ids int32   [batch_size, seq_len]  1, 2, ... per packed document; 0 = padding
      positions   int32   [batch_size, seq_len]  position within the segment, from 0
      loss_mask   float32 [batch_size, seq_len]  1 where the target is trained, else 0
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: must be 'train' or 'eval'")
  for name, value in (
    ("seq_len", seq_len),
    ("batch_size", batch_size),
    ("process_count", process_count),
  ):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r}: must be an int >= 1")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index!r}: must be in [0, {process_count})")
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
    raise ValueError(f"num_epochs={num_epochs!r}: must be None or an int >= 1")
  if source is None:
    source = make_source(cfg, tokenizer)

  train_docs, eval_docs = document_split(source, cfg.eval_fraction)
  docs = (train_docs if split == "train" else eval_docs)[process_index::process_count]
  if len(docs) == 0:
    raise UserError(_empty_split_advice(cfg, source, split, len(eval_docs), process_count))

  ds = grain.MapDataset.source(docs)
  if split == "train":
    shuffle_seed = int(np.random.SeedSequence([seed, cfg.shuffle_seed]).generate_state(1)[0])
    ds = ds.shuffle(seed=shuffle_seed)
  ds = ds.repeat(num_epochs if num_epochs is not None or split == "train" else 1)
  ds = ds.map(_ReadAndTokenize(source, tokenizer, cfg.add_eos)).filter(_non_empty)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=4 * cfg.read_threads)
  )
  ds = grain.experimental.ConcatThenSplitIterDataset(
    ds, length_struct={"inputs": seq_len, "targets": seq_len}
  )
  ds = ds.map(_lm_features)
  if split == "train":
    return ds.batch(batch_size, drop_remainder=True)
  pad = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
  return ds.batch(batch_size, batch_fn=pad)
