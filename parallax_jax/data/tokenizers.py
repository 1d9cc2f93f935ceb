"""Tokenizers: UTF-8 bytes, Hugging Face `tokenizers` JSON files, SentencePiece models, and a
byte-level BPE trained at the run's start ("train:bpe:VOCAB[:MIB]", saved in the workdir).

A run keeps its tokenizer in its workdir: the trained one, or a copy of a file tokenizer taken
at the run's first start (`keep_run_copy`), which resume, eval, generate and export read from
then on (`make_tokenizer(spec, workdir)`): moving the run, or moving or editing the original
file, changes nothing the run reads.

All share the `Tokenizer` protocol. `pad_id` is only the value written into padded positions;
padding is marked by `segment_ids == 0` and `loss_mask == 0`, so it needs no reserved id.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from parallax_jax.errors import UserError, UserFileNotFoundError, UserPermissionError
from parallax_jax.files import write_bytes_atomic, write_text_atomic

log = logging.getLogger("parallax_jax")

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

  def encode_prompt(self, text: str) -> list[int]:
    """A prompt's ids: as ``encode``, except that a tokenizer with special tokens reads them
    in the text (a chat template's markers, an EOS typed into a prompt)."""
    return self.encode(text)

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
  tokens (the pipeline adds EOS itself), and a special token's text inside a document (e.g.
  the string "<|endoftext|>" quoted in source code) is encoded as text, not as its id: only
  the pipeline marks document boundaries. ``encode_prompt`` reads special tokens in the text.
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
    self._tok.encode_special_tokens = True  # data: "<|endoftext|>" in a document is text
    self._prompt_tok = None  # the same file reading special tokens, loaded by encode_prompt
    self.path = path
    # Ids may leave gaps (a vocabulary edited by hand, added tokens at high ids): the largest
    # id bounds them, not the count of tokens.
    ids = self._tok.get_vocab(with_added_tokens=True).values()
    self.base_vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True), max(ids) + 1)
    eos = [self._tok.token_to_id(t) for t in _HF_EOS_CANDIDATES]
    eos = [i for i in eos if i is not None]
    self.eos_id = eos[0] if eos else self.base_vocab_size
    self.vocab_size = self.base_vocab_size + (0 if eos else 1)
    pad = [self._tok.token_to_id(t) for t in _HF_PAD_CANDIDATES]
    self.pad_id = next((i for i in pad if i is not None), 0)

  def encode(self, text: str) -> list[int]:
    # encode_batch releases the GIL (encode does not), so the pipeline's reader threads
    # tokenize in parallel: ~1.8x on 2 cores; the ids are the same.
    return self._tok.encode_batch([text], add_special_tokens=False)[0].ids

  def encode_prompt(self, text: str) -> list[int]:
    if self._prompt_tok is None:
      import tokenizers

      self._prompt_tok = tokenizers.Tokenizer.from_file(self.path)
    return self._prompt_tok.encode(text, add_special_tokens=False).ids

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


# ------------------------------------------------------------------ trained at the run's start

TRAIN_PREFIX = "train:"
TRAINED_FILE = "tokenizer.json"  # in the run's workdir
TRAINED_INFO = "tokenizer_train.json"  # what it was trained on (spec, sample), beside it
DEFAULT_SAMPLE_MIB = 64
_MAX_SAMPLE_MIB = 4096
_MIN_BPE_VOCAB = 258  # 256 byte symbols and EOS: a smaller vocabulary has no merge to learn
_EOS = _HF_EOS_CANDIDATES[0]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """A parsed "train:bpe:VOCAB[:MIB]" spec: a byte-level BPE of at most `vocab_size` ids
  (EOS included) trained on at most `sample_mib` MiB of the training split."""

  vocab_size: int
  sample_mib: int = DEFAULT_SAMPLE_MIB

  @property
  def sample_bytes(self) -> int:
    return self.sample_mib * 2**20


def parse_train_spec(spec: str) -> TrainSpec | None:
  """None for a spec that is not "train:..."; a `UserError` naming the form for a bad one."""
  if not spec.startswith(TRAIN_PREFIX):
    return None
  form = (
    f"tokenizer={spec!r}: expected 'train:bpe:VOCAB' or 'train:bpe:VOCAB:MIB' (a byte-level "
    f"BPE with VOCAB ids in [{_MIN_BPE_VOCAB}, 1000000], trained on at most MIB MiB of the "
    f"training split, default {DEFAULT_SAMPLE_MIB}), e.g. 'train:bpe:32000'"
  )
  parts = spec.split(":")
  if len(parts) not in (3, 4) or parts[1] != "bpe" or not all(p.isdigit() for p in parts[2:]):
    raise UserError(form)
  vocab = int(parts[2])
  mib = int(parts[3]) if len(parts) == 4 else DEFAULT_SAMPLE_MIB
  if not _MIN_BPE_VOCAB <= vocab <= 1_000_000:
    raise UserError(f"{form}; VOCAB={vocab} is out of range")
  if not 1 <= mib <= _MAX_SAMPLE_MIB:
    raise UserError(f"{form}; MIB={mib} must be in [1, {_MAX_SAMPLE_MIB}]")
  return TrainSpec(vocab, mib)


def train_bpe(texts: Iterable[str], vocab_size: int):
  """A byte-level BPE (`tokenizers` ByteLevel pre-tokenizer and decoder, so every text
  round-trips) with `vocab_size` ids at most: EOS "<|endoftext|>" is id 0, then the 256 byte
  symbols, then merges. Fewer ids when the texts offer fewer merges. Deterministic given the
  texts in order. Returns the `tokenizers.Tokenizer`."""
  try:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
  except ImportError as e:
    raise ImportError("tokenizer 'train:bpe:...' needs `pip install tokenizers`") from e
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[_EOS],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(texts, trainer)
  return tok


def trained_tokenizer_path(workdir: str | Path) -> Path:
  return Path(workdir) / TRAINED_FILE


def save_trained(tok, workdir: str | Path, info: dict) -> Path:
  """Writes `tokenizer.json` and `tokenizer_train.json` into `workdir` (atomically each)."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = trained_tokenizer_path(workdir)
  write_text_atomic(workdir / TRAINED_INFO, json.dumps(info, indent=2) + "\n")
  # tokenizer.json last: its presence means both are whole (``Tokenizer.save``'s text).
  write_text_atomic(path, tok.to_str(pretty=True))
  return path


def trained_info(workdir: str | Path) -> dict | None:
  """What the run's tokenizer was trained on (`tokenizer_train.json`), None if not recorded."""
  path = Path(workdir) / TRAINED_INFO
  if not path.is_file():
    return None
  fix = "it records what the run's tokenizer was trained on; restore it, or remove it to leave "
  fix += "that unchecked"
  try:
    info = json.loads(path.read_text())
  except ValueError as e:  # (a hand edit)
    raise UserError(f"{str(path)!r} is not JSON ({e}): {fix}") from e
  if not isinstance(info, dict):
    raise UserError(f"{str(path)!r} is not a JSON object: {fix}")
  return info


def load_trained(spec: str, workdir: str | Path | None) -> HFTokenizer:
  """The run's trained tokenizer `workdir/tokenizer.json` for a "train:..." spec. A
  `UserError` without a workdir, without the file, or when the file was trained for another
  spec."""
  parse_train_spec(spec)
  if workdir is None:
    raise UserError(
      f"tokenizer={spec!r} is trained at the start of a run and saved in its workdir; "
      "pass the run's workdir (e.g. --workdir) to read it"
    )
  path = trained_tokenizer_path(workdir)
  if not path.is_file():
    raise UserFileNotFoundError(
      f"tokenizer={spec!r}: {str(path)!r} does not exist; the run trains and saves it when "
      "it starts (`parallax-jax train`), so start the run first"
    )
  info = trained_info(workdir) or {}
  if info.get("spec", spec) != spec:
    raise UserError(
      f"tokenizer={spec!r}: {str(path)!r} was trained for {info['spec']!r}; use a new workdir "
      "or delete the two tokenizer files to retrain"
    )
  return HFTokenizer(str(path))


# A file tokenizer's copy in the run's workdir, by the file's kind (`keep_run_copy`).
_RUN_COPIES = {".json": TRAINED_FILE, ".model": "tokenizer.model"}


def run_copy_path(spec: str, workdir: str | Path) -> Path | None:
  """Where the run in `workdir` keeps its copy of the file tokenizer `spec` (a ".json" or
  ".model" path); None for "byte" and "train:..." specs (nothing to copy)."""
  if spec.startswith(TRAIN_PREFIX):
    return None
  name = _RUN_COPIES.get(Path(spec).suffix)
  return None if name is None else Path(workdir) / name


def keep_run_copy(spec: str, workdir: str | Path) -> None:
  """At a run's first start: copies the file tokenizer `spec` into `workdir` (atomically), so
  that the run reads its own copy from then on. A copy already there is kept (a resume, or
  `import-hf`, whose `data.tokenizer` is that copy)."""
  dest = run_copy_path(spec, workdir)
  if dest is None or dest.exists():
    return
  _check_file(spec, "tokenizer")
  dest.parent.mkdir(parents=True, exist_ok=True)
  write_bytes_atomic(dest, Path(spec).read_bytes())  # byte for byte: compared with filecmp


def _run_file(spec: str, workdir: str | Path | None) -> str:
  """The file to read for the file tokenizer `spec`: the run's copy where it has one (a run
  from before copies were kept has none: `spec` itself)."""
  copy = None if workdir is None else run_copy_path(spec, workdir)
  if copy is None or not copy.is_file():
    return spec
  if os.path.isfile(spec) and not filecmp.cmp(spec, copy, shallow=False):
    log.warning(
      "data.tokenizer=%r differs from the run's copy %s (it changed after the run started); "
      "the run reads its copy",
      spec,
      copy,
    )
  return str(copy)


def make_tokenizer(spec: str, workdir: str | Path | None = None) -> Tokenizer:
  """Tokenizer from a spec: "byte" -> `ByteTokenizer`, "*.json" -> `HFTokenizer`,
  "*.model" -> `SentencePieceTokenizer`, "train:bpe:..." -> the `HFTokenizer` the run trained
  into `workdir/tokenizer.json` (see `load_trained`). With a `workdir`, a file tokenizer is
  read from the run's copy there if it has one (`keep_run_copy`). A missing file raises
  `FileNotFoundError` naming it."""
  if spec == "byte":
    return ByteTokenizer()
  if spec.startswith(TRAIN_PREFIX):
    return load_trained(spec, workdir)
  if spec.endswith(".json"):
    return HFTokenizer(_run_file(spec, workdir))
  if spec.endswith(".model"):
    return SentencePieceTokenizer(_run_file(spec, workdir))
  raise UserError(
    f"tokenizer={spec!r}: expected 'byte', 'train:bpe:VOCAB', a Hugging Face tokenizers "
    "'.json' file or a SentencePiece '.model' file"
  )
