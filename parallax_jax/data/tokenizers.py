"""Tokenizers: UTF-8 bytes, Hugging Face `tokenizers` JSON files, SentencePiece models.

All share the `Tokenizer` protocol. `pad_id` is only the value written into padded positions;
padding is marked by `segment_ids == 0` and `loss_mask == 0`, so it needs no reserved id.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from parallax_jax.errors import UserError, UserFileNotFoundError, UserPermissionError

VOCAB_MULTIPLE = 128  # embedding/logit tables are padded to this for efficient matmuls

# EOS spellings searched in HF tokenizer files, most common first.
_HF_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[SEP]")
_HF_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int  # ids are in [0, vocab_size)
  eos_id: int
  pad_id: int

  @property
  def padded_vocab_size(self) -> int: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


def round_up(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
  return -(-n // multiple) * multiple


class _Base:
  vocab_size: int

  @property
  def padded_vocab_size(self) -> int:
    """`vocab_size` rounded up to a multiple of 128: the size of the embedding table."""
    return round_up(self.vocab_size)


class ByteTokenizer(_Base):
  """UTF-8 bytes: byte b has id b (0..255), EOS is 256; vocab_size 257 (padded: 384).

  pad_id is 0 (the NUL byte), which never needs to be distinct: padding is masked.
  """

  vocab_size = 257
  eos_id = 256
  pad_id = 0

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: list[int]) -> str:
    # Special ids (EOS) are dropped; a sequence cut mid-character decodes with U+FFFD.
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def _check_file(path: str, kind: str) -> None:
  if not os.path.isfile(path):
    raise UserFileNotFoundError(f"tokenizer: {kind} file not found: {path!r}")
  if not os.access(path, os.R_OK):
    raise UserPermissionError(f"tokenizer: {kind} file is not readable: {path!r}")


class HFTokenizer(_Base):
  """A Hugging Face `tokenizers` JSON file (e.g. `tokenizer.json`).

  EOS is the first of <|endoftext|>, </s>, <eos>, ... found in the vocabulary; if none is,
  EOS gets the extra id `base_vocab_size` (vocab_size = base + 1). Encoding adds no special
  tokens (the pipeline adds EOS itself).
  """

  def __init__(self, path: str):
    _check_file(path, "Hugging Face tokenizers JSON")
    try:
      import tokenizers
    except ImportError as e:
      raise ImportError(f"tokenizer {path!r} needs `pip install tokenizers`") from e
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exception
      raise UserError(f"tokenizer: cannot load {path!r} as a tokenizers JSON: {e}") from e
    self.path = path
    self.base_vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = [self._tok.token_to_id(t) for t in _HF_EOS_CANDIDATES]
    eos = [i for i in eos if i is not None]
    self.eos_id = eos[0] if eos else self.base_vocab_size
    self.vocab_size = self.base_vocab_size + (0 if eos else 1)
    pad = [self._tok.token_to_id(t) for t in _HF_PAD_CANDIDATES]
    self.pad_id = next((i for i in pad if i is not None), 0)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: list[int]) -> str:
    ids = [int(i) for i in ids if int(i) < self.base_vocab_size]
    return self._tok.decode(ids, skip_special_tokens=False)

  def __getstate__(self):  # reload from the path in grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r})"


class SentencePieceTokenizer(_Base):
  """A SentencePiece `.model` file. EOS is the model's `eos_id()` (an extra id if it has
  none); pad_id is the model's `pad_id()`, else 0."""

  def __init__(self, path: str):
    _check_file(path, "SentencePiece model")
    try:
      import sentencepiece as spm
    except ImportError as e:
      raise ImportError(f"tokenizer {path!r} needs `pip install sentencepiece`") from e
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:
      raise UserError(f"tokenizer: cannot load {path!r} as a SentencePiece model: {e}") from e
    self.path = path
    self.base_vocab_size = self._sp.get_piece_size()
    has_eos = self._sp.eos_id() >= 0
    self.eos_id = self._sp.eos_id() if has_eos else self.base_vocab_size
    self.vocab_size = self.base_vocab_size + (0 if has_eos else 1)
    self.pad_id = max(self._sp.pad_id(), 0)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) < self.base_vocab_size])

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r})"


def make_tokenizer(spec: str) -> Tokenizer:
  """Tokenizer from a spec: "byte" -> `ByteTokenizer`, "*.json" -> `HFTokenizer`,
  "*.model" -> `SentencePieceTokenizer`. A missing file raises `FileNotFoundError` naming it."""
  if spec == "byte":
    return ByteTokenizer()
  if spec.endswith(".json"):
    return HFTokenizer(spec)
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  raise UserError(
    f"tokenizer={spec!r}: expected 'byte', a Hugging Face tokenizers '.json' file or a "
    "SentencePiece '.model' file"
  )
