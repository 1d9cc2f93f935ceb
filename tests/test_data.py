"""Tests for parallax_jax.data: config, tokenizers, sources, packing pipeline, checkpointing."""

import importlib.util
import json
import os
import pickle
import re

import grain
import numpy as np
import pytest

from parallax_jax.data import (
  ArrayRecordSource,
  BuiltinCorpus,
  ByteTokenizer,
  DataConfig,
  JsonlSource,
  NpyTokenSource,
  TextSource,
  make_dataset,
  make_source,
  make_tokenizer,
  split_documents,
)
from parallax_jax.errors import UserError

BYTE = ByteTokenizer()


def _batches(ds, n=None):
  it = iter(ds)
  return [b for _, b in zip(range(n), it, strict=False)] if n else list(it)


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --------------------------------------------------------------------------------- config


def test_config_defaults_and_from_dict():
  cfg = DataConfig()
  assert (cfg.source, cfg.format, cfg.tokenizer, cfg.add_eos) == ("builtin", "auto", "byte", True)
  assert DataConfig.from_dict({"source": "x.jsonl", "eval_fraction": 0.1}).eval_fraction == 0.1
  assert DataConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(UserError, match="unknown data config keys.*'sauce'"):  # one line
    DataConfig.from_dict({"sauce": "x"})


@pytest.mark.parametrize(
  "field, value",
  [
    ("format", "csv"),
    ("eval_fraction", 1.0),
    ("eval_fraction", -0.1),
    ("source", ""),
    ("text_split", "sentence"),
    ("shuffle_seed", -1),
    ("add_eos", 1),
    ("read_threads", 0),
  ],
)
def test_config_validate_names_field(field, value):
  with pytest.raises(ValueError, match=f"DataConfig.{field}="):
    DataConfig(**{field: value})


# ----------------------------------------------------------------------------- tokenizers

TEXT = "Parallax attention: o = Σ p (1 + t̄ - t) v. déjà vu, 東京 🙂\n\tdone."


def test_byte_tokenizer_round_trip():
  ids = BYTE.encode(TEXT)
  assert max(ids) < 256 and BYTE.decode(ids) == TEXT
  assert BYTE.decode(ids + [BYTE.eos_id]) == TEXT  # EOS is not text
  assert (BYTE.vocab_size, BYTE.eos_id, BYTE.padded_vocab_size) == (257, 256, 384)
  assert make_tokenizer("byte").encode("a") == [97]


def test_hf_tokenizer_round_trip(tmp_path):
  tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is not installed")
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator([TEXT, "the quick brown fox jumps over the lazy dog"] * 20, trainer)
  path = str(tmp_path / "tok.json")
  tok.save(path)
  hf = make_tokenizer(path)
  assert hf.eos_id == tok.token_to_id("<|endoftext|>")
  assert hf.decode(hf.encode(TEXT)) == TEXT
  assert hf.eos_id not in hf.encode(TEXT)
  assert hf.padded_vocab_size % 128 == 0 and hf.padded_vocab_size >= hf.vocab_size
  assert pickle.loads(pickle.dumps(hf)).encode(TEXT) == hf.encode(TEXT)  # grain workers
  # The separator's text quoted inside a document is text (only the pipeline marks document
  # boundaries), and still decodes to itself; a prompt may type it to mean the token.
  quoted = 'SEP = "<|endoftext|>"  # a document separator'
  assert hf.eos_id not in hf.encode(quoted) and hf.decode(hf.encode(quoted)) == quoted
  assert hf.encode_prompt("x<|endoftext|>") == hf.encode_prompt("x") + [hf.eos_id]
  assert pickle.loads(pickle.dumps(hf)).encode(quoted) == hf.encode(quoted)


def test_hf_tokenizer_with_gaps_in_its_ids(tmp_path):
  """A vocabulary whose ids leave gaps: every id it encodes is below vocab_size, and the EOS it
  lacks gets an id of its own, not one of its tokens'."""
  tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is not installed")
  from tokenizers import models, pre_tokenizers

  tok = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 4, "c": 10}, "<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "gaps.json"))
  hf = make_tokenizer(str(tmp_path / "gaps.json"))
  assert hf.encode("a b c") == [1, 4, 10]
  assert hf.eos_id not in (0, 1, 4, 10)  # 4: the count of its tokens
  assert hf.vocab_size >= 11 and hf.eos_id < hf.vocab_size


def test_sentencepiece_round_trip(tmp_path):
  spm = pytest.importorskip("sentencepiece", reason="`sentencepiece` is not installed")
  corpus = tmp_path / "corpus.txt"
  words = "the quick brown fox jumps over the lazy dog while parallax attention packs tokens"
  corpus.write_text("\n".join(f"{words} {i}" for i in range(200)))
  spm.SentencePieceTrainer.train(
    input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=60, minloglevel=2
  )
  sp = make_tokenizer(str(tmp_path / "sp.model"))
  text = "the lazy fox packs 42 tokens"
  assert sp.decode(sp.encode(text)) == text
  assert 0 <= sp.eos_id < sp.vocab_size and sp.padded_vocab_size == 128
  assert pickle.loads(pickle.dumps(sp)).encode(text) == sp.encode(text)


def test_tokenizer_errors_name_path(tmp_path):
  missing = str(tmp_path / "nope.json")
  with pytest.raises(FileNotFoundError, match="nope.json"):
    make_tokenizer(missing)
  with pytest.raises(FileNotFoundError, match="nope.model"):
    make_tokenizer(str(tmp_path / "nope.model"))
  garbage = tmp_path / "garbage.json"
  garbage.write_text("not json")
  # Without `tokenizers` installed the file cannot be parsed; the other checks still run.
  if importlib.util.find_spec("tokenizers") is not None:
    with pytest.raises(ValueError, match="garbage.json"):
      make_tokenizer(str(garbage))
  with pytest.raises(ValueError, match="tokenizer='gpt2'"):
    make_tokenizer("gpt2")


# -------------------------------------------------------------------------- builtin corpus


def test_builtin_corpus_is_ordered_and_fingerprinted():
  corpus = BuiltinCorpus()
  assert len(corpus) > 100
  assert corpus.rel_paths == sorted(corpus.rel_paths)
  assert not any(
    part in ("site-packages", "test", "tests") for p in corpus.rel_paths for part in p.split("/")
  )
  assert "os.py" in corpus.rel_paths and "def " in corpus[corpus.rel_paths.index("os.py")]
  fp = corpus.fingerprint()
  assert fp == BuiltinCorpus().fingerprint()  # stable across instances
  assert fp["num_files"] == len(corpus) and fp["num_bytes"] > 1_000_000
  assert len(fp["sha256"]) == 64 and json.loads(json.dumps(corpus.describe()))


def test_builtin_fingerprint_tracks_contents(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "b.py").write_text("b = 1\n")
  (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "t.py").write_text("skipped\n")
  corpus = BuiltinCorpus(root=str(tmp_path))
  assert corpus.rel_paths == ["b.py", "pkg/a.py"]
  before = corpus.fingerprint()["sha256"]
  (tmp_path / "b.py").write_text("b = 2\n")
  assert BuiltinCorpus(root=str(tmp_path)).fingerprint()["sha256"] != before


# --------------------------------------------------------------------------------- sources


def _write_arrayrecord(path, records):
  from array_record.python.array_record_module import ArrayRecordWriter

  w = ArrayRecordWriter(str(path), "group_size:1")
  for r in records:
    w.write(r)
  w.close()


def test_text_source_splits(tmp_path):
  (tmp_path / "a.txt").write_text("para one\nline two\n\n  \npara two\n")
  (tmp_path / "b.txt").write_text("only doc")
  (tmp_path / "empty.txt").write_text("  \n")
  paths = sorted(str(p) for p in tmp_path.glob("*.txt"))
  assert list(TextSource(paths, "file")) == ["para one\nline two\n\n  \npara two\n", "only doc"]
  assert list(TextSource(paths, "paragraph")) == ["para one\nline two", "para two\n", "only doc"]
  assert list(TextSource(paths, "line")) == ["para one", "line two", "para two", "only doc"]


REFUSED_KEYS = [  # (key, value, what the error says, sources it does not shape)
  ("text_split", "paragraph", "text_split='paragraph'", ("builtin", "python_corpus", "d.jsonl")),
  (
    "jsonl_field",
    "body",
    "jsonl_field='body' names the field",
    ("builtin", "python_corpus", "d.txt"),
  ),
]


@pytest.mark.parametrize(
  "key, value, said, source",
  [
    pytest.param(k, v, said, s, id=f"{k}-{s}")
    for k, v, said, sources in REFUSED_KEYS
    for s in (*sources, "ids.npy")
  ],
)
def test_a_data_key_is_refused_where_it_shapes_nothing(tmp_path, key, value, said, source):
  """data.text_split cuts text files only, data.jsonl_field names the field of JSONL and JSON
  ArrayRecord records: set for another source, each is refused, not ignored (jsonl_field was)."""
  (tmp_path / "d.jsonl").write_text('{"text": "one\\n\\ntwo"}\n')
  (tmp_path / "d.txt").write_text("one document")
  np.save(tmp_path / "ids.npy", np.array([1, 2, BYTE.eos_id, 3], np.int32))
  if "." in source:
    source = str(tmp_path / source)
  with pytest.raises(UserError, match=said):
    make_source(DataConfig(source=source, **{key: value}), BYTE)
  if source != "python_corpus":  # (indexing the installation takes a while)
    assert len(make_source(DataConfig(source=source), BYTE)) >= 1  # the default reads it


def test_a_file_whose_name_looks_like_a_glob_is_that_file(tmp_path):
  (tmp_path / "data[1].txt").write_text("the file named")
  (tmp_path / "data1.txt").write_text("what the name matches as a glob")
  src = make_source(DataConfig(source=str(tmp_path / "data[1].txt")), BYTE)
  assert list(src) == ["the file named"]


def test_every_format_loads(tmp_path):
  docs = ["first doc", "second doc ü", "third"]
  (tmp_path / "t").mkdir()
  for i, d in enumerate(docs):
    (tmp_path / "t" / f"{i}.txt").write_text(d)
  (tmp_path / "d.jsonl").write_text(
    "\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n\n"
  )
  _write_arrayrecord(
    tmp_path / "d.array_record",
    [docs[0].encode(), json.dumps({"body": docs[1]}).encode(), b"{not json, plain text}"],
  )
  np.save(tmp_path / "d.npy", np.array([5, 6, 256, 7, 256, 256, 8, 9, 10], np.int32))

  def load(source, **kw):
    # (the other formats have no fields)
    records = str(source).endswith(("jsonl", "array_record")) or kw.get("format") == "jsonl"
    cfg = DataConfig(source=str(source), **({"jsonl_field": "body"} if records else {}), **kw)
    return make_source(cfg, BYTE)

  assert list(load(tmp_path / "t")) == docs
  assert isinstance(load(tmp_path / "t" / "*.txt"), TextSource)
  assert list(load(tmp_path / "d.jsonl")) == docs
  assert isinstance(load(tmp_path / "d.jsonl"), JsonlSource)
  ar = load(tmp_path / "d.array_record")
  assert isinstance(ar, ArrayRecordSource)
  assert list(ar) == [docs[0], docs[1], "{not json, plain text}"]
  npy = load(tmp_path / "d.npy")
  assert isinstance(npy, NpyTokenSource)
  assert [d.tolist() for d in npy] == [[5, 6], [7], [8, 9, 10]]
  assert npy[0].dtype == np.int32
  assert pickle.loads(pickle.dumps(npy))[2].tolist() == [8, 9, 10]  # memmaps not pickled
  for src in (ar, npy, load(tmp_path / "d.jsonl")):
    assert json.loads(json.dumps(src.describe()))["num_documents"] == 3
  # A directory with explicit format keeps only that format's files.
  assert len(load(tmp_path, format="jsonl")) == 3


def test_a_lone_surrogate_in_json_text_becomes_a_replacement_character(tmp_path):
  """JSON may escape half a surrogate pair (an emoji cut by UTF-16 truncation); it must not stop
  the tokenizer mid-run (UnicodeEncodeError) but read as U+FFFD."""
  (tmp_path / "d.jsonl").write_text('{"text": "cut \\ud83d here"}\n{"text": "ok \\ud83d\\ude00"}\n')
  cfg = DataConfig(source=str(tmp_path / "d.jsonl"), eval_fraction=0.0)
  assert list(make_source(cfg, BYTE)) == ["cut \ufffd here", "ok \U0001f600"]
  ds = make_dataset(cfg, tokenizer=BYTE, seq_len=4, batch_size=1, split="train", seed=0)
  assert len(_batches(ds, 12)) == 12


def test_source_errors_name_path(tmp_path):
  """Each raised by ``make_source`` itself (no document read by the caller): before a run's
  workdir is written."""

  def err(source, exc=ValueError, match=None, **kw):
    with pytest.raises(exc, match=match or re.escape(os.path.basename(str(source)))):
      make_source(DataConfig(source=str(source), **kw), BYTE)

  err(tmp_path / "missing.jsonl", FileNotFoundError)
  err(tmp_path / "*.nothing", FileNotFoundError)
  (tmp_path / "empty").mkdir()
  err(tmp_path / "empty", FileNotFoundError, match="empty")
  (tmp_path / "blank.txt").write_text("\n \n")
  err(tmp_path / "blank.txt")
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
  err(tmp_path / "bad.jsonl")
  (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
  err(tmp_path / "nofield.jsonl", match="nofield.jsonl.*'text'")
  (tmp_path / "null.jsonl").write_text('{"text": null}\n')  # the field is there, not a string
  err(tmp_path / "null.jsonl", match="null.jsonl.* 'text' = NoneType, not a string")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  err(tmp_path / "latin1.txt", match="latin1.txt.*UTF-8")
  (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
  err(tmp_path / "latin1.jsonl", UserError, match="latin1.jsonl.*UTF-8")
  (tmp_path / "mixed").mkdir()  # found when the source is built, not when training reaches it
  for name in ("a.txt", "c.txt"):
    (tmp_path / "mixed" / name).write_text("fine")
  (tmp_path / "mixed" / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
  err(tmp_path / "mixed", match="b.txt.*UTF-8")
  (tmp_path / "junk.array_record").write_bytes(b"junk" * 10)
  err(tmp_path / "junk.array_record")
  (tmp_path / "junk.npy").write_bytes(b"junk")
  err(tmp_path / "junk.npy")
  np.save(tmp_path / "big.npy", np.array([1, 300], np.int64))
  err(tmp_path / "big.npy", match="big.npy.*outside")
  (tmp_path / "data.csv").write_text("a,b\n")
  err(tmp_path / "data.csv", match="data.csv.*DataConfig.format")
  if os.geteuid() != 0:  # root can read anything
    (tmp_path / "secret.txt").write_text("x")
    os.chmod(tmp_path / "secret.txt", 0)
    err(tmp_path / "secret.txt", PermissionError)


# -------------------------------------------------------------------------------- pipeline

NUM_DOCS = 200


@pytest.fixture
def id_docs(tmp_path):
  """200 token documents; document i is (i + 1) repeated 1 + i % 23 times (so the id of the
  document a target came from is the target itself), EOS-separated in two .npy shards."""
  docs = [[i + 1] * (1 + i % 23) for i in range(NUM_DOCS)]
  for shard in range(2):
    stream = [t for d in docs[shard::2] for t in d + [BYTE.eos_id]]
    np.save(tmp_path / f"shard{shard}.npy", np.array(stream, np.uint16))
  # Shards interleave documents: index order is shard0's documents, then shard1's.
  order = docs[0::2] + docs[1::2]
  return DataConfig(source=str(tmp_path / "*.npy"), eval_fraction=0.1, read_threads=2), order


def _doc_ids(batches):
  """Set of document ids (token values) trained on in these batches."""
  ids = set()
  for b in batches:
    t = b["targets"][b["loss_mask"] > 0]
    ids |= set(t[t != BYTE.eos_id].tolist())
  return ids


def _check_batch(b, batch_size, seq_len, eos_id):
  for k, dtype in (
    ("inputs", np.int32),
    ("targets", np.int32),
    ("segment_ids", np.int32),
    ("positions", np.int32),
    ("loss_mask", np.float32),
  ):
    assert b[k].shape == (batch_size, seq_len) and b[k].dtype == dtype, k
  seg, pos, inp, tgt, mask = (
    b[k] for k in ("segment_ids", "positions", "inputs", "targets", "loss_mask")
  )
  np.testing.assert_array_equal(mask, (seg > 0).astype(np.float32))
  assert np.all(inp[seg == 0] == 0) and np.all(tgt[seg == 0] == 0) and np.all(pos[seg == 0] == 0)
  starts = np.ones_like(seg, bool)
  starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
  assert np.all(pos[starts & (seg > 0)] == 0)  # positions restart at each segment
  cont = ~starts[:, 1:] & (seg[:, 1:] > 0)  # positions count up within a segment
  np.testing.assert_array_equal(pos[:, 1:][cont], pos[:, :-1][cont] + 1)
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  np.testing.assert_array_equal(tgt[:, :-1][same], inp[:, 1:][same])  # shift within a doc
  # Padding only at the end of a row (eval pads whole rows); segment ids count 1, 2, ...
  for row in seg:
    real = row[row > 0]
    assert np.all(row[: len(real)] > 0)
    if real.size:
      assert real[0] == 1 and set(np.diff(real).tolist()) <= {0, 1}


def test_batches_format_and_consistency(id_docs):
  cfg, _ = id_docs
  ds = make_dataset(cfg, tokenizer=BYTE, seq_len=32, batch_size=4, split="train", seed=0)
  for b in _batches(ds, 20):
    _check_batch(b, 4, 32, BYTE.eos_id)
    # Every document starts with EOS-as-BOS and ends by predicting EOS.
    seg = b["segment_ids"]
    first = (b["positions"] == 0) & (seg > 0)
    assert np.all(b["targets"][b["inputs"] == BYTE.eos_id] != BYTE.eos_id)
    assert first.any()


def test_builtin_batches_decode():
  cfg = DataConfig(read_threads=2)
  ds = make_dataset(cfg, tokenizer=BYTE, seq_len=64, batch_size=2, split="eval", seed=0)
  b = next(iter(ds))
  _check_batch(b, 2, 64, BYTE.eos_id)
  assert b["inputs"][0, 0] == BYTE.eos_id  # document start
  # Each packed segment decodes to a stretch of one held-out stdlib file, beginning at its
  # start when the segment begins with EOS-as-BOS.
  corpus = BuiltinCorpus()
  _, eval_idx = split_documents(len(corpus), cfg.eval_fraction)
  docs = [corpus[i] for i in eval_idx]
  for row in range(2):
    seg, inputs = b["segment_ids"][row], b["inputs"][row]
    for sid in np.unique(seg[seg > 0]):
      ids = inputs[seg == sid].tolist()
      text = BYTE.decode(ids)
      assert text, (row, sid)
      if ids[0] == BYTE.eos_id:
        assert any(doc.startswith(text) for doc in docs), (row, sid, text[:80])
      else:
        assert any(text in doc for doc in docs), (row, sid, text[:80])


@pytest.mark.parametrize("add_eos", [True, False])
def test_empty_documents_are_dropped(tmp_path, add_eos):
  """A JSONL line whose text is "" is no document (as an empty text file or .npy document):
  with add_eos it must not become a one-token segment training EOS after EOS."""
  docs = ["abc", "", "de", "", "", "fg", ""]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  cfg = DataConfig(source=str(tmp_path / "d.jsonl"), eval_fraction=0.0, add_eos=add_eos)
  ds = make_dataset(
    cfg, tokenizer=BYTE, seq_len=1, batch_size=1, split="train", seed=0, num_epochs=1
  )
  rows = [(int(b["inputs"][0, 0]), int(b["targets"][0, 0])) for b in _batches(ds)]
  # One epoch: each non-empty document's targets once (its EOS too with add_eos), no more.
  assert len(rows) == sum(len(d) + (1 if add_eos else -1) for d in docs if d)
  assert (BYTE.eos_id, BYTE.eos_id) not in rows


def test_eval_pass_covers_eval_documents_exactly(id_docs):
  cfg, docs = id_docs
  train_idx, eval_idx = split_documents(NUM_DOCS, cfg.eval_fraction)
  batches = _batches(
    make_dataset(cfg, tokenizer=BYTE, seq_len=16, batch_size=3, split="eval", seed=0)
  )
  for b in batches:
    _check_batch(b, 3, 16, BYTE.eos_id)
  # Every eval token and its EOS is trained exactly once; nothing else.
  targets = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in batches])
  expected = np.concatenate([docs[i] + [BYTE.eos_id] for i in eval_idx])
  np.testing.assert_array_equal(np.sort(targets), np.sort(expected))
  train_ids = _doc_ids(
    _batches(
      make_dataset(
        cfg, tokenizer=BYTE, seq_len=16, batch_size=3, split="train", seed=0, num_epochs=1
      )
    )
  )
  assert train_ids and not train_ids & _doc_ids(batches)  # disjoint splits
  assert train_ids <= {docs[i][0] for i in train_idx}


def test_split_documents():
  train, evl = split_documents(10_000, 0.05)
  assert len(np.intersect1d(train, evl)) == 0 and len(train) + len(evl) == 10_000
  assert 400 < len(evl) < 600
  np.testing.assert_array_equal(split_documents(10_000, 0.05)[1], evl)  # stable
  assert np.isin(split_documents(10_100, 0.05)[1], evl).sum() == len(evl)  # appending keeps
  tr, ev = split_documents(2, 0.01)
  assert len(tr) == 1 and len(ev) == 1
  assert len(split_documents(50, 0.0)[1]) == 0


def test_process_sharding_partitions_documents(id_docs):
  cfg, docs = id_docs
  train_idx, _ = split_documents(NUM_DOCS, cfg.eval_fraction)
  per_process = [
    _doc_ids(
      _batches(
        make_dataset(
          cfg,
          tokenizer=BYTE,
          seq_len=8,
          batch_size=1,
          split="train",
          seed=3,
          process_index=p,
          process_count=3,
          num_epochs=1,
        )
      )
    )
    for p in range(3)
  ]
  for p in range(3):
    for q in range(p):
      assert not per_process[p] & per_process[q]
  # batch_size=1 and seq_len=8 drop at most a partial final row per process.
  covered = set().union(*per_process)
  assert covered <= {docs[i][0] for i in train_idx}
  assert len(covered) >= len(train_idx) - 3


def test_determinism_and_epochs(id_docs):
  cfg, docs = id_docs
  make = lambda seed, c=cfg: make_dataset(
    c, tokenizer=BYTE, seq_len=32, batch_size=2, split="train", seed=seed
  )
  a = _batches(make(0), 30)
  _assert_batches_equal(a, _batches(make(0), 30))
  b = _batches(make(1), 30)
  assert not np.array_equal(a[0]["inputs"], b[0]["inputs"])
  c = _batches(make(0, DataConfig(**{**cfg.to_dict(), "shuffle_seed": 1})), 30)
  assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])
  # Two epochs: each covers the train documents once, in a different order.
  train_idx, _ = split_documents(NUM_DOCS, cfg.eval_fraction)
  ds = make_dataset(
    cfg, tokenizer=BYTE, seq_len=32, batch_size=1, split="train", seed=0, num_epochs=2
  )
  order = []  # document ids in the order they are trained on
  for b in _batches(ds):
    for t in b["targets"][(b["loss_mask"] > 0) & (b["targets"] != BYTE.eos_id)].tolist():
      if not order or order[-1] != t:
        order.append(t)
  n = len(train_idx)
  assert sorted(order[:n]) == sorted(order[n : 2 * n]) == sorted(docs[i][0] for i in train_idx)
  assert order[:n] != order[n : 2 * n]


def test_checkpoint_resume_gives_same_batches(id_docs):
  cfg, _ = id_docs
  ds = make_dataset(cfg, tokenizer=BYTE, seq_len=24, batch_size=2, split="train", seed=7)
  it = iter(ds)
  for _ in range(13):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip
  expected = [next(it) for _ in range(40)]  # crosses an epoch boundary
  fresh = iter(make_dataset(cfg, tokenizer=BYTE, seq_len=24, batch_size=2, split="train", seed=7))
  fresh.set_state(state)
  _assert_batches_equal([next(fresh) for _ in range(40)], expected)


def test_resume_from_a_saved_state_where_a_row_ended_a_document(tmp_path):
  """The trainer's data state goes through JSON (Orbax's `JsonSave`), which turns grain's
  "no remainder" slice (-1, -1) into a list; restored through `TrainData.restore`, the stream
  continues exactly, also after a row that ended exactly at a document's end."""
  from parallax_jax.train.config import load_config, resolve
  from parallax_jax.train.data_io import TrainData

  rng = np.random.default_rng(0)  # short lines: many rows end exactly at a document's end
  (tmp_path / "lines.txt").write_text("".join("w" * rng.integers(1, 12) + "\n" for _ in range(300)))
  root = os.path.join(os.path.dirname(__file__), "..")
  overrides = [f"--config.data.{k}" for k in (f"source={tmp_path}", "text_split=line")]
  overrides += ["--config.data.read_threads=1", "--config.data.eval_fraction=0.0"]
  overrides += ["--config.train.eval_every=0", "--config.train.batch_size=2"]
  overrides += ["--config.train.seq_len=32"]
  exp = resolve(load_config(os.path.join(root, "configs", "tiny.py"), overrides), 1)
  data = TrainData(exp)
  states, batches = [], []
  for _ in range(40):
    states.append(json.loads(json.dumps(data.state())))
    batches.append(data.next_train())
  ended = [k for k, s in enumerate(states) if "[-1, -1]" in json.dumps(s)]
  assert len(ended) >= 3, ended
  for k in ended[:3]:
    resumed = TrainData(exp)
    resumed.restore(states[k])
    _assert_batches_equal([resumed.next_train() for _ in range(4)], batches[k : k + 4])


def test_checkpoint_with_grain_helper(id_docs):
  cfg, _ = id_docs  # small: the helper restores at every step, O(steps^2)
  ds = make_dataset(cfg, tokenizer=BYTE, seq_len=16, batch_size=2, split="eval", seed=0)
  grain.experimental.assert_equal_output_after_checkpoint(ds)


def test_pipeline_errors(id_docs):
  cfg, _ = id_docs
  kw = dict(tokenizer=BYTE, seq_len=8, batch_size=2, seed=0)
  with pytest.raises(ValueError, match="split='test'"):
    make_dataset(cfg, split="test", **kw)
  with pytest.raises(ValueError, match="process_index=3"):
    make_dataset(cfg, split="train", process_index=3, process_count=3, **kw)
  with pytest.raises(ValueError, match="seq_len=0"):
    make_dataset(cfg, split="train", **{**kw, "seq_len": 0})
  no_eval = DataConfig(**{**cfg.to_dict(), "eval_fraction": 0.0})
  with pytest.raises(ValueError, match="split='eval' has no documents"):
    make_dataset(no_eval, split="eval", **kw)
