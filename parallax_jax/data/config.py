"""`DataConfig`: where the training text comes from and how it becomes tokens."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from parallax_jax.config_utils import from_section
from parallax_jax.errors import UserError

FORMATS = ("auto", "text", "jsonl", "arrayrecord", "npy")
TEXT_SPLITS = ("file", "paragraph", "line")
REGRESSION_TASKS = ("linreg", "drift_linreg")
# The synthetic task sources (generated on the fly: no tokenizer, no files, no document split).
# Here, with the config, so loaders and exporters ask `DataConfig.is_task` without grain.
TASKS = ("mqar", *REGRESSION_TASKS)
# The built-in corpora, whose `describe()` records a content fingerprint (`sha256`) that
# `source_sha256` can pin; file sources record their paths only.
FINGERPRINTED_SOURCES = ("builtin", "python_corpus")
_HEX_PREFIX = re.compile("[0-9a-f]{8,64}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data settings; validated on construction (`validate()` raises `ValueError` naming the field).

  Attributes:
    source: "builtin" (the running interpreter's standard-library `.py` sources, see
      `BuiltinCorpus`), "python_corpus" (every `.py`/`.md`/`.rst`/`.txt` file of the
      interpreter's stdlib and site-packages, deduplicated by content, held-out files chosen
      by a hash of their path; 319 MiB on the H200 image; see `PythonCorpus`), or a file, a
      directory (searched recursively) or a glob.
    format: "auto" (from file extensions), "text", "jsonl", "arrayrecord" or "npy".
    jsonl_field: the string field holding the document in JSONL lines and JSON ArrayRecord
      records.
    text_split: how text files become documents: "file" (one document per file),
      "paragraph" (split on blank lines) or "line" (one per non-blank line).
    tokenizer: "byte", a Hugging Face `tokenizers` JSON file, a SentencePiece `.model`, or
      "train:bpe:VOCAB[:MIB]": a byte-level BPE of VOCAB ids (EOS included; e.g.
      "train:bpe:32000") trained with `tokenizers` when the run starts, on a deterministic
      sample of at most MIB MiB (default 64) of the training split, and saved as
      `<workdir>/tokenizer.json`, which resume, eval and generate read (never retrained).
    eval_fraction: fraction of documents held out for the "eval" split, in [0, 1).
    shuffle_seed: mixed with the run seed to order training documents; change it to reorder
      the data without changing the model seed. The eval split does not depend on it.
    add_eos: wrap every document as [EOS] doc [EOS] (EOS doubles as BOS, GPT-2 style), so the
      model learns to start and to end documents.
    read_threads: threads reading and tokenizing documents (grain `ReadOptions.num_threads`).
    source_sha256: the corpus a run must read, pinned by its fingerprint: "" (not checked) or
      8-64 lowercase hex digits, a prefix of the `data.source.sha256` a run's `config.json`
      records. Only the corpora that have a fingerprint ("builtin", "python_corpus") can be
      pinned. A corpus whose fingerprint differs (the Python installation changed: a package
      installed into site-packages, another image) is refused before a tokenizer is trained
      or a step is run. A check only: it changes nothing a run computes (docs/design.md §15).
    mqar_vocab_size, mqar_num_pairs, mqar_num_queries: with source="mqar" (synthetic
      multi-query associative recall, `parallax_jax.data.synthetic`; no files, no tokenizer):
      token ids used (keys and values split the ids 1..vocab_size-1 in halves), key-value
      pairs per row and queries per row (<= pairs). Needs train.seq_len >= 2 * (pairs +
      queries) and model.vocab_size >= mqar_vocab_size.
    regression_dim, regression_noise, regression_drift: with source="linreg" (in-context linear
      regression, `parallax_jax.data.regression`) or "drift_linreg" (its weights drift along
      the row as a random walk): the dimension d of x (the model reads d + 1 features:
      model.input_dim = d + 1, model.output_dim = 1), the std of the noise added to y, and the
      std of each weight increment per point (0 for "linreg", > 0 for "drift_linreg"). A row
      holds train.seq_len / 2 points.
  """

  source: str = "builtin"
  format: str = "auto"
  jsonl_field: str = "text"
  text_split: str = "file"
  tokenizer: str = "byte"
  eval_fraction: float = 0.01
  shuffle_seed: int = 0
  add_eos: bool = True
  read_threads: int = 8
  source_sha256: str = ""
  mqar_vocab_size: int = 64
  mqar_num_pairs: int = 8
  mqar_num_queries: int = 8
  regression_dim: int = 8
  regression_noise: float = 0.0
  regression_drift: float = 0.0

  def __post_init__(self):
    self.validate()

  @property
  def is_task(self) -> bool:
    """A synthetic task (`TASKS`): generated on the fly, no tokenizer, no files to split."""
    return self.source in TASKS

  @property
  def is_regression(self) -> bool:
    """An in-context regression task (`REGRESSION_TASKS`): vectors in, an MSE loss."""
    return self.source in REGRESSION_TASKS

  def validate(self) -> None:
    """Raises `ValueError` naming the first bad field and its allowed values."""

    def bad(field: str, why: str):
      raise UserError(f"DataConfig.{field}={getattr(self, field)!r}: {why}")

    for field in ("source", "jsonl_field", "tokenizer"):
      value = getattr(self, field)
      if not isinstance(value, str) or not value.strip():
        bad(field, "must be a non-empty string")
    if self.tokenizer.startswith("train:"):
      from parallax_jax.data.tokenizers import parse_train_spec

      try:
        parse_train_spec(self.tokenizer)
      except UserError as e:
        bad("tokenizer", str(e).split(": ", 1)[1])
      if self.format == "npy":
        bad("tokenizer", "needs text documents to train on; format='npy' holds token ids")
    if self.format not in FORMATS:
      bad("format", f"must be one of {FORMATS}")
    if self.text_split not in TEXT_SPLITS:
      bad("text_split", f"must be one of {TEXT_SPLITS}")
    if isinstance(self.eval_fraction, bool) or not isinstance(self.eval_fraction, int | float):
      bad("eval_fraction", "must be a number in [0, 1)")
    if not 0.0 <= self.eval_fraction < 1.0:
      bad("eval_fraction", "must be in [0, 1) (0 disables the eval split)")
    if isinstance(self.shuffle_seed, bool) or not isinstance(self.shuffle_seed, int):
      bad("shuffle_seed", "must be an int")
    if self.shuffle_seed < 0:
      bad("shuffle_seed", "must be >= 0")
    if not isinstance(self.add_eos, bool):
      bad("add_eos", "must be a bool")
    if isinstance(self.read_threads, bool) or not isinstance(self.read_threads, int):
      bad("read_threads", "must be an int >= 1")
    if self.read_threads < 1:
      bad("read_threads", "must be >= 1")
    pin = self.source_sha256
    if not isinstance(pin, str) or (pin and not _HEX_PREFIX.fullmatch(pin)):
      bad("source_sha256", "must be '' or 8-64 lowercase hex digits (a corpus's sha256)")
    if pin and self.source not in FINGERPRINTED_SOURCES:
      bad(
        "source_sha256",
        f"only the corpora with a fingerprint {FINGERPRINTED_SOURCES} can be pinned; "
        f"source={self.source!r} records none: set data.source_sha256=''",
      )
    for field in ("mqar_vocab_size", "mqar_num_pairs", "mqar_num_queries"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        bad(field, "must be an int >= 1")
    if self.source == "mqar":
      if self.mqar_num_queries > self.mqar_num_pairs:
        bad("mqar_num_queries", f"must be <= mqar_num_pairs={self.mqar_num_pairs}")
      if (self.mqar_vocab_size - 1) // 2 < max(self.mqar_num_pairs, 2):
        bad(
          "mqar_vocab_size",
          f"must be >= {2 * max(self.mqar_num_pairs, 2) + 1}: half of the ids 1.. are keys "
          f"(mqar_num_pairs={self.mqar_num_pairs} distinct per row), half are values",
        )
    value = self.regression_dim
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      bad("regression_dim", "must be an int >= 1")
    for field in ("regression_noise", "regression_drift"):
      value = getattr(self, field)
      number = isinstance(value, int | float) and not isinstance(value, bool)
      if not number or not 0 <= value < float("inf"):  # NaN fails the comparison too
        bad(field, "must be a finite number >= 0")
    if self.source == "linreg" and self.regression_drift != 0:
      bad("regression_drift", "must be 0 for source='linreg' (use source='drift_linreg')")
    if self.source == "drift_linreg" and self.regression_drift <= 0:
      bad("regression_drift", "must be > 0 for source='drift_linreg' (0 is source='linreg')")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | Any) -> DataConfig:
    """Builds a config from a mapping or an ml_collections `ConfigDict`; unknown keys raise."""
    return from_section(cls, "data", d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
