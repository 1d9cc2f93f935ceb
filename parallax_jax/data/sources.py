"""Document sources: random access (`len(src)`, `src[i]`) to documents, grain-source style.

A document is a `str` (text formats) or a 1-D int32 `np.ndarray` of token ids (`.npy` shards).
Sources index their files once at construction and read documents lazily; they keep no open
file handles, so they pickle cheaply into grain worker processes. Every source has
`describe() -> dict` (JSON-able) for the run record; `BuiltinCorpus.fingerprint()` hashes its
contents. `PythonCorpus` (source="python_corpus", `parallax_jax.data.python_corpus`) also
chooses its own train/eval split (`split_indices`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from parallax_jax.data.config import TASKS, DataConfig
from parallax_jax.data.python_corpus import PythonCorpus
from parallax_jax.data.tokenizers import TRAIN_PREFIX
from parallax_jax.errors import UserError, UserFileNotFoundError, UserPermissionError

Document = str | np.ndarray


class DocumentSource(Protocol):
  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Document: ...

  def describe(self) -> dict: ...


# ----------------------------------------------------------------------------- built-in corpus

# Test directories are left out: they hold deliberately malformed or huge data-like files.
_BUILTIN_EXCLUDED_DIRS = frozenset(
  {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


class BuiltinCorpus:
  """The running interpreter's standard-library `.py` files, one document per file.

  Files come in sorted order of their '/'-separated path relative to the stdlib root;
  `site-packages` and test directories are excluded. Contents depend on the Python version,
  so runs should record `fingerprint()`.
  """

  def __init__(self, root: str | None = None):
    self.root = root or sysconfig.get_paths()["stdlib"]
    rel_paths = []
    for dirpath, dirnames, filenames in os.walk(self.root):
      dirnames[:] = [d for d in dirnames if d not in _BUILTIN_EXCLUDED_DIRS]
      rel_dir = os.path.relpath(dirpath, self.root)
      rel_paths += [
        os.path.normpath(os.path.join(rel_dir, n)).replace(os.sep, "/")
        for n in filenames
        if n.endswith(".py")
      ]
    self.rel_paths = sorted(rel_paths)
    if not self.rel_paths:
      raise UserError(f"builtin corpus: no .py files under the stdlib root {self.root!r}")
    self._fingerprint = None

  def __len__(self) -> int:
    return len(self.rel_paths)

  def _read_bytes(self, index: int) -> bytes:
    with open(os.path.join(self.root, self.rel_paths[index]), "rb") as f:
      return f.read()

  def __getitem__(self, index: int) -> str:
    return self._read_bytes(index).decode("utf-8", errors="replace")

  def fingerprint(self) -> dict:
    """sha256 over (relative path, size, contents) of every file, with counts. Cached."""
    if self._fingerprint is None:
      h, num_bytes = hashlib.sha256(), 0
      for i, rel in enumerate(self.rel_paths):
        data = self._read_bytes(i)
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        num_bytes += len(data)
      self._fingerprint = {
        "sha256": h.hexdigest(),
        "num_files": len(self.rel_paths),
        "num_bytes": num_bytes,
        "python": sys.version.split()[0],
        "root": self.root,
      }
    return self._fingerprint

  def describe(self) -> dict:
    return {"kind": "builtin", **self.fingerprint()}


# ------------------------------------------------------------------------------ file sources


class _Spans:
  """Documents stored as byte (or token) spans [start, end) of files: compact numpy index."""

  def _set_spans(self, file_ids: list[int], starts: list[int], ends: list[int]) -> None:
    self._file = np.asarray(file_ids, np.int32)
    self._start = np.asarray(starts, np.int64)
    self._end = np.asarray(ends, np.int64)

  def __len__(self) -> int:
    return len(self._file)

  def _read_span(self, index: int) -> tuple[str, bytes]:
    path = self.paths[self._file[index]]
    with open(path, "rb") as f:
      f.seek(int(self._start[index]))
      return path, f.read(int(self._end[index] - self._start[index]))


def _read_all(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise OSError(f"data: cannot read {path!r}: {e.strerror or e}") from e


def _decode(data: bytes, where: str) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(
      f"data: {where} is not valid UTF-8 ({e.reason} at byte {e.start}); "
      "re-encode the file as UTF-8"
    ) from e


_TEXT_SEPARATORS = {
  "paragraph": re.compile(rb"\r?\n[ \t\r\f\v]*\r?\n(?:[ \t\r\f\v]*\r?\n)*"),
  "line": re.compile(rb"\r?\n"),
}


class TextSource(_Spans):
  """UTF-8 text files. `text_split`: "file" (one document per file), "paragraph" (split on
  blank lines) or "line" (one document per line). Whitespace-only documents are skipped."""

  def __init__(self, paths: Sequence[str], text_split: str = "file"):
    self.paths, self.text_split = list(paths), text_split
    file_ids, starts, ends = [], [], []
    for fid, path in enumerate(self.paths):
      data = _read_all(path)
      _decode(data, repr(path))  # read whole anyway: a bad file fails now, not mid-run
      if text_split == "file":
        spans = [(0, len(data))]
      else:
        cuts = [m.span() for m in _TEXT_SEPARATORS[text_split].finditer(data)]
        bounds = [0] + [x for span in cuts for x in span] + [len(data)]
        spans = list(zip(bounds[::2], bounds[1::2], strict=True))
      for s, e in spans:
        if data[s:e].strip():
          file_ids.append(fid), starts.append(s), ends.append(e)
    self._set_spans(file_ids, starts, ends)

  def __getitem__(self, index: int) -> str:
    path, data = self._read_span(index)
    return _decode(data, f"{path!r} (bytes {self._start[index]}..{self._end[index]})")

  def describe(self) -> dict:
    return {
      "kind": "text",
      "text_split": self.text_split,
      "paths": self.paths,
      "num_documents": len(self),
    }


class JsonlSource(_Spans):
  """JSON Lines: one JSON object per non-blank line; the document is its `field` string."""

  def __init__(self, paths: Sequence[str], field: str = "text"):
    self.paths, self.field = list(paths), field
    file_ids, starts, ends = [], [], []
    for fid, path in enumerate(self.paths):
      offset = 0
      for line in _read_all(path).splitlines(keepends=True):
        if line.strip():
          file_ids.append(fid), starts.append(offset), ends.append(offset + len(line))
        offset += len(line)
    self._set_spans(file_ids, starts, ends)

  def __getitem__(self, index: int) -> str:
    path, line = self._read_span(index)
    where = f"{path!r} (byte offset {self._start[index]})"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"data: {where} is not a JSON line: {e}") from e
    except UnicodeDecodeError as e:  # json.loads decodes the bytes first
      raise UserError(
        f"data: {where} is not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
        "re-encode the file as UTF-8"
      ) from e
    return _field(record, self.field, where)

  def describe(self) -> dict:
    return {"kind": "jsonl", "field": self.field, "paths": self.paths, "num_documents": len(self)}


# JSON's "\ud83d" escapes decode to lone surrogates (an emoji cut in half by UTF-16 truncation,
# common in scraped text), which no tokenizer encodes: they become U+FFFD, as invalid bytes do in
# the built-in corpora.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _field(record, field: str, where: str) -> str:
  if isinstance(record, dict) and field in record and not isinstance(record[field], str):
    raise UserError(
      f"data: {where} has {field!r} = {type(record[field]).__name__}, not a string; every "
      f"record's DataConfig.jsonl_field={field!r} must hold the document's text"
    )
  if not isinstance(record, dict) or not isinstance(record.get(field), str):
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise UserError(
      f"data: {where} has no string field {field!r} (found {keys}); set DataConfig.jsonl_field"
    )
  return _LONE_SURROGATE.sub("\ufffd", record[field])


class ArrayRecordSource:
  """ArrayRecord files (via `grain.sources.ArrayRecordDataSource`). A record is a JSON object
  (if it starts with '{' and parses; its `field` string is the document) or UTF-8 text."""

  def __init__(self, paths: Sequence[str], field: str = "text"):
    import grain

    self.paths, self.field = list(paths), field
    for path in self.paths:  # open one by one so an error names the bad file
      try:
        grain.sources.ArrayRecordDataSource([path])
      except Exception as e:
        raise UserError(f"data: cannot open {path!r} as ArrayRecord: {e}") from e
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self._source):  # IndexError lets `list(src)` stop
      raise IndexError(f"document {index} out of range [0, {len(self._source)})")
    data = self._source[index]
    where = f"ArrayRecord record {index} of {self.paths}"
    if data[:1] == b"{":
      try:
        record = json.loads(data)
      except ValueError:
        record = None  # text that merely starts with '{'
      if isinstance(record, dict):
        return _field(record, self.field, where)
    return _decode(data, where)

  def describe(self) -> dict:
    return {
      "kind": "arrayrecord",
      "field": self.field,
      "paths": self.paths,
      "num_documents": len(self),
    }


class NpyTokenSource(_Spans):
  """Pre-tokenized `.npy` shards: each a 1-D integer array, a stream of token ids in which
  `eos_id` separates documents. A document is the tokens between separators (separator
  excluded; the pipeline adds EOS back when `add_eos`); empty documents are skipped. Shards
  are memory-mapped; ids must lie in [0, vocab_size)."""

  def __init__(self, paths: Sequence[str], eos_id: int, vocab_size: int):
    self.paths, self.eos_id = list(paths), eos_id
    file_ids, starts, ends = [], [], []
    for fid, path in enumerate(self.paths):
      arr = self._load(path)
      if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        raise UserError(
          f"data: {path!r} must hold a non-empty 1-D integer array of "
          f"token ids, got shape {arr.shape} dtype {arr.dtype}"
        )
      lo, hi = int(arr.min()), int(arr.max())
      if lo < 0 or hi >= vocab_size:
        raise UserError(
          f"data: {path!r} has token ids in [{lo}, {hi}], outside the "
          f"tokenizer's [0, {vocab_size}); check DataConfig.tokenizer"
        )
      cuts = np.flatnonzero(np.asarray(arr) == eos_id)
      s = np.concatenate([[0], cuts + 1])
      e = np.concatenate([cuts, [arr.size]])
      keep = e > s
      file_ids += [fid] * int(keep.sum())
      starts += s[keep].tolist()
      ends += e[keep].tolist()
    self._set_spans(file_ids, starts, ends)
    self._arrays = {}

  @staticmethod
  def _load(path: str) -> np.ndarray:
    try:
      return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise UserError(f"data: cannot load {path!r} as a .npy token array: {e}") from e

  def __getitem__(self, index: int) -> np.ndarray:
    fid = int(self._file[index])
    if fid not in self._arrays:
      self._arrays[fid] = self._load(self.paths[fid])
    return np.asarray(self._arrays[fid][self._start[index] : self._end[index]], np.int32)

  def __getstate__(self):  # don't pickle memory maps
    return {**self.__dict__, "_arrays": {}}

  def describe(self) -> dict:
    return {"kind": "npy", "eos_id": self.eos_id, "paths": self.paths, "num_documents": len(self)}


# ----------------------------------------------------------------------- paths and dispatch

_EXTENSIONS = {
  "text": (".txt", ".text", ".md", ".rst", ".py"),
  "jsonl": (".jsonl", ".ndjson"),
  "arrayrecord": (".array_record", ".arrayrecord"),
  "npy": (".npy",),
}


def _format_of(path: str) -> str | None:
  name = os.path.basename(path).lower()
  for fmt, exts in _EXTENSIONS.items():
    # ArrayRecord shards are often named like 'train.array_record-00000-of-00010'.
    if name.endswith(exts) or (fmt == "arrayrecord" and any(x + "-" in name for x in exts)):
      return fmt
  return None


def resolve_paths(source: str, fmt: str = "auto") -> tuple[list[str], str]:
  """Expands a file, directory (recursive) or glob into sorted file paths and their format.

  A directory keeps only files whose extension matches `fmt` (any known one for "auto");
  an explicit file or glob keeps every match. Raises `FileNotFoundError` naming `source`.
  """
  if os.path.isdir(source):
    paths = [os.path.join(d, n) for d, _, names in os.walk(source) for n in names]
    paths = [p for p in paths if _format_of(p) is not None and fmt in ("auto", _format_of(p))]
  elif os.path.isfile(source):  # before the glob: a file named 'data[1].txt' is that file
    paths = [source]
  elif glob.has_magic(source):
    paths = [p for p in glob.glob(source, recursive=True) if os.path.isfile(p)]
  else:
    named = ", ".join(("builtin", "python_corpus", *TASKS))
    raise UserFileNotFoundError(
      f"DataConfig.source={source!r}: no such file or directory (data.source is a path, a "
      f"glob, or a named source: {named})"
    )
  paths = sorted(paths)
  if not paths:
    raise UserFileNotFoundError(
      f"DataConfig.source={source!r}: matched no data files"
      + (f" with format {fmt!r}" if fmt != "auto" else "")
    )
  if fmt == "auto":
    formats = {p: _format_of(p) for p in paths}
    unknown = [p for p, f in formats.items() if f is None]
    if unknown:
      raise UserError(
        f"DataConfig.source={source!r}: cannot infer the format of "
        f"{unknown[:3]} from the extension; set DataConfig.format"
      )
    if len(set(formats.values())) > 1:
      raise UserError(
        f"DataConfig.source={source!r}: mixed formats "
        f"{sorted(set(formats.values()))}; point it at one format"
      )
    fmt = next(iter(formats.values()))
  for p in paths:
    if not os.access(p, os.R_OK):
      raise UserPermissionError(f"data: cannot read {p!r} (permission denied)")
  return paths, fmt


def pin_mismatch(pin: str, described: dict) -> str | None:
  """Why a corpus described by ``described`` (a source's ``describe()``, as a run's
  ``config.json`` records it under ``data.source``) is not the one ``pin``
  (``DataConfig.source_sha256``, a prefix of its sha256) names, or None; "" pins nothing."""
  if not pin:
    return None
  sha = described.get("sha256")
  if isinstance(sha, str) and sha.startswith(pin):
    return None
  found = "no fingerprint" if not isinstance(sha, str) else f"fingerprint {sha[:16]}..."
  sizes = ", ".join(
    f"{described[k]:,} {k.removeprefix('num_')}"
    for k in ("num_files", "num_bytes")
    if k in described
  )
  return (
    f"data.source_sha256={pin!r} pins the corpus, but this {described.get('kind', 'source')} "
    f"has {found}{f' ({sizes})' if sizes else ''}"
  )


def _pinned(source, pin: str):
  """``source`` if its fingerprint matches ``pin``; else a one-line UserError."""
  why = pin_mismatch(pin, source.describe()) if pin else None  # (describe() hashes the files)
  if why is not None:
    raise UserError(
      f"{why}: the Python installation differs from the pinned one (a package installed "
      "into site-packages, another image). Run where the pinned corpus is (install extra "
      "packages outside the interpreter's roots, e.g. pip install --target DIR), or set "
      "data.source_sha256='' to read this corpus"
    )
  return source


def _check_text_split(cfg: DataConfig, what: str) -> None:
  """Only text files are split by `text_split`: another value elsewhere would be ignored."""
  if cfg.text_split != "file":
    raise UserError(
      f"DataConfig.text_split={cfg.text_split!r} splits text files only; {what} is not split "
      "that way: set data.text_split='file'"
    )


def _check_no_fields(cfg: DataConfig, what: str) -> None:
  """Only JSONL and JSON ArrayRecord records have `jsonl_field`: elsewhere it would be ignored."""
  default_field = DataConfig.__dataclass_fields__["jsonl_field"].default
  if cfg.jsonl_field != default_field:
    raise UserError(
      f"DataConfig.jsonl_field={cfg.jsonl_field!r} names the field of JSONL and JSON "
      f"ArrayRecord records; {what} has none: drop it (default {default_field!r})"
    )


def make_source(cfg: DataConfig, tokenizer) -> DocumentSource:
  """Builds the document source `cfg` describes. Raises if it holds no documents.

  `tokenizer` supplies `eos_id`/`vocab_size` for `.npy` shards (None for the other formats).
  """
  if cfg.source == "builtin":
    if cfg.format not in ("auto", "text"):
      raise UserError(
        f"DataConfig.format={cfg.format!r}: the builtin corpus is text; use format='auto'"
      )
    _check_text_split(cfg, "the builtin corpus")
    _check_no_fields(cfg, "the builtin corpus")
    return _pinned(BuiltinCorpus(), cfg.source_sha256)
  if cfg.source == "python_corpus":
    if cfg.format not in ("auto", "text"):
      raise UserError(f"DataConfig.format={cfg.format!r}: python_corpus is text; use format='auto'")
    _check_text_split(cfg, "python_corpus")
    _check_no_fields(cfg, "python_corpus")
    return _pinned(PythonCorpus(eval_fraction=cfg.eval_fraction), cfg.source_sha256)
  paths, fmt = resolve_paths(cfg.source, cfg.format)
  if fmt != "text":
    _check_text_split(cfg, f"a {fmt!r} source (a document per record)")
  if fmt in ("text", "npy"):
    _check_no_fields(cfg, f"a {fmt!r} source")
  if fmt == "npy" and cfg.tokenizer.startswith(TRAIN_PREFIX):  # format="auto" found .npy
    raise UserError(
      f"DataConfig.tokenizer={cfg.tokenizer!r}: needs text documents to train on; "
      f"DataConfig.source={cfg.source!r} holds .npy token ids (use their tokenizer's file)"
    )
  if fmt == "text":
    src = TextSource(paths, cfg.text_split)
  elif fmt == "jsonl":
    src = JsonlSource(paths, cfg.jsonl_field)
  elif fmt == "arrayrecord":
    src = ArrayRecordSource(paths, cfg.jsonl_field)
  else:
    src = NpyTokenSource(paths, tokenizer.eos_id, tokenizer.vocab_size)
  if len(src) == 0:
    shown = paths if len(paths) <= 3 else paths[:3] + ["..."]
    raise UserError(
      f"DataConfig.source={cfg.source!r}: no documents in {shown} "
      f"(format {fmt!r}: files are empty or whitespace-only)"
    )
  # The first and last documents are read now, so a wrong field or a file that is not what its
  # format says fails here, before a run's workdir is written, not at the first batch.
  for index in sorted({0, len(src) - 1}):
    src[index]
  return src
