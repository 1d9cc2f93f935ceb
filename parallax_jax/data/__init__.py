"""Language-model data: document sources, tokenizers and the grain packing pipeline.

    cfg = DataConfig(source="builtin", tokenizer="byte")
    tok = make_tokenizer(cfg.tokenizer)
    ds = make_dataset(cfg, tokenizer=tok, seq_len=1024, batch_size=8, split="train", seed=0)
    it = iter(ds); batch = next(it)         # dict of numpy arrays, see `make_dataset`
    state = it.get_state(); it.set_state(state)
"""

from parallax_jax.data.config import DataConfig
from parallax_jax.data.pipeline import make_dataset, split_documents
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
