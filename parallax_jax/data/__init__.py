"""Language-model data: document sources, tokenizers and the grain packing pipeline.

cfg = DataConfig(source="builtin", tokenizer="byte")
tok = make_tokenizer(cfg.tokenizer)
ds = make_dataset(cfg, tokenizer=tok, seq_len=1024, batch_size=8, split="train", seed=0)
it = iter(ds); batch = next(it)         # dict of numpy arrays, see `make_dataset`
state = it.get_state(); it.set_state(state)
"""

from parallax_jax.data.config import DataConfig
from parallax_jax.data.sources import (
  ArrayRecordSource,
  BuiltinCorpus,
  DocumentSource,
  JsonlSource,
  NpyTokenSource,
  TextSource,
  make_source,
  resolve_paths,
)
from parallax_jax.data.tokenizers import (
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  make_tokenizer,
)


def __getattr__(name):
  # The grain pipeline is imported on first use, so configs and sources work where grain is
  # not installed (e.g. a GPU image used only for benchmarks).
  if name in ("make_dataset", "split_documents"):
    from parallax_jax.data import pipeline

    return getattr(pipeline, name)
  raise AttributeError(f"module 'parallax_jax.data' has no attribute {name!r}")


__all__ = [
  "ArrayRecordSource",
  "BuiltinCorpus",
  "ByteTokenizer",
  "DataConfig",
  "DocumentSource",
  "HFTokenizer",
  "JsonlSource",
  "NpyTokenSource",
  "SentencePieceTokenizer",
  "TextSource",
  "Tokenizer",
  "make_dataset",
  "make_source",
  "make_tokenizer",
  "resolve_paths",
  "split_documents",
]
