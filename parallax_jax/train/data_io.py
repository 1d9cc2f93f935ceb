"""The trainer's view of the data: this process's train iterator, eval batches, state."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import jax
import numpy as np

from parallax_jax.data import make_dataset, make_source, make_tokenizer, synthetic, tokenizers
from parallax_jax.data.config import REGRESSION_TASKS
from parallax_jax.data.pipeline import document_split, state_from_json
from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")


_SAMPLE_SEED = 0x70C  # fixed: the tokenizer's sample must not change with the run's seeds


def _sample_texts(source, train_docs, max_bytes: int) -> tuple[list[str], dict]:
  """Training documents in a fixed pseudo-random order until `max_bytes` UTF-8 bytes (the
  last one cut to fit): the tokenizer's deterministic, bounded training sample."""
  order = np.random.default_rng(_SAMPLE_SEED).permutation(np.asarray(train_docs))
  texts, total = [], 0
  for i in order:
    data = source[int(i)].encode("utf-8", errors="replace")
    take = data[: max_bytes - total]
    texts.append(take.decode("utf-8", errors="ignore"))  # a cut character is dropped
    total += len(take)
    if total >= max_bytes:
      break
  info = {"sample_documents": len(texts), "sample_bytes": total, "sample_max_bytes": max_bytes}
  return texts, info


class TrainData:
  """Per-process batches (``global batch / process_count`` rows) of ``parallax_jax.data``.

  ``workdir``: the run's directory, where a ``data.tokenizer="train:bpe:..."`` tokenizer is
  read from (``tokenizer.json``) or, when absent and not ``read_only``, trained and saved once;
  without a workdir (``--dry-run``, ``config``) it is trained in memory and not saved.
  """

  def __init__(self, exp, workdir: str | Path | None = None, *, read_only: bool = False):
    self.exp, self.workdir, self.read_only = exp, workdir, read_only
    self.tokenizer_training = None  # what a tokenizer trained here was trained on
    cfg = exp.data
    self.task = cfg.is_task  # generated on the fly: no tokenizer, no files
    self.tokenizer = self.source = None
    # The cross-process checks still ahead: a process that fails alone (a data file missing on
    # its host) takes part in the next one, failed, so the others stop there too; otherwise
    # they would wait at that collective while it waits for them at exit.
    self._checks_ahead = ["data"] if self.task else ["data", "tokenizer"]
    try:
      self._init(exp)
    except _ProcessesDiffer:  # raised by a check, on every process: all are past it
      raise
    except Exception:
      if self._checks_ahead:
        _same_on_every_process(self._checks_ahead[0], {}, failed=True)
      raise

  def _init(self, exp):
    cfg = exp.data
    if self.task:
      synthetic.check_task(cfg, exp.train.seq_len, exp.model)
    else:
      self._init_text(cfg)
    n = jax.process_count()
    if exp.train.batch_size % n:
      raise UserError(
        f"train.batch_size={exp.train.batch_size} must be divisible by the "
        f"number of processes ({n})"
      )
    self.local_batch = exp.train.batch_size // n
    self._train = self._dataset("train")
    if exp.train.eval_every and exp.train.eval_batches:
      self._dataset("eval")  # no held-out document: fail now rather than at the first eval
    self._it = iter(self._train)
    if self.task:  # generated: its description is the whole of its data
      self._checks_ahead.remove("data")
      _same_on_every_process("data", {"source": self.describe()["source"]})
    else:
      self._check_tokenizer_on_every_process()
      if self._keep_copy():  # from now on the run reads its own copy
        self._train = self._dataset("train")
        self._it = iter(self._train)

  def _keep_copy(self) -> bool:
    """At a run's first start, once every data check passed, copies a file tokenizer into the
    workdir (`tokenizers.keep_run_copy`) and reads it from there; True if it did. A refused
    start leaves no copy, which the next start (with another data.tokenizer) would read as the
    run's tokenizer, a 'train:bpe:...' one included (both are named tokenizer.json)."""
    if self.workdir is None or self.read_only or jax.process_index() != 0:
      return False
    spec = self.exp.data.tokenizer
    copy = tokenizers.run_copy_path(spec, self.workdir)
    if copy is None or copy.exists():  # nothing to copy, or kept: a resume, import-hf
      return False
    tokenizers.keep_run_copy(spec, self.workdir)
    self.tokenizer = make_tokenizer(spec, self.workdir)
    return True

  def _check_source_on_every_process(self) -> None:
    """Each process takes its share of the documents it sees, so a host whose files (or Python
    installation, for the built-in corpora) differ would train on another split without a word.
    Compares a hash of the source's description (with its files' sizes) across processes, as
    soon as the source exists: before a tokenizer is trained and saved on it."""
    self._checks_ahead.remove("data")
    if jax.process_count() == 1:  # nothing to compare: no file statted at start-up
      return
    paths = getattr(self.source, "paths", None) or []  # file sources: their sizes too
    sizes = [os.path.getsize(p) if os.path.isfile(p) else None for p in paths]
    _same_on_every_process("data", {"source": self.source.describe(), "file_bytes": sizes})

  def _check_tokenizer_on_every_process(self) -> None:
    """The tokenizer by its bytes where it has a file: a trained one sits in a private file on
    the processes other than 0, so where it lies differs."""
    self._checks_ahead.remove("tokenizer")
    if jax.process_count() == 1:  # nothing to compare: the file is not read
      return
    _same_on_every_process(
      "tokenizer", {"tokenizer": self._tokenizer_sha256() or repr(self.tokenizer)}
    )

  def _tokenizer_sha256(self) -> str | None:
    """sha256 of the tokenizer's file; None for one without a file (bytes)."""
    path = getattr(self.tokenizer, "path", None)
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()

  def _init_text(self, cfg):
    exp = self.exp
    model = exp.model
    if model.input_dim or model.output_dim:  # would regress on token ids with an MSE, silently
      raise UserError(
        f"data.source={cfg.source!r} is token ids in, logits out: set model.input_dim=0 and "
        f"model.output_dim=0 (got {model.input_dim} and {model.output_dim}); vector inputs and "
        f"a regression head are for data.source in {REGRESSION_TASKS}"
      )
    spec = tokenizers.parse_train_spec(cfg.tokenizer)
    if spec is None:
      self.tokenizer = make_tokenizer(cfg.tokenizer, self.workdir)
      self._check_vocab()
      self.source = make_source(cfg, self.tokenizer)
      self._check_source_on_every_process()
      return  # the run's copy of the file is kept once every check passed (_keep_copy)
    if spec.vocab_size > exp.model.vocab_size:  # checked before minutes of training
      raise UserError(
        f"model.vocab_size={exp.model.vocab_size} is smaller than the tokenizer's vocabulary "
        f"({spec.vocab_size}, {cfg.tokenizer!r}); set model.vocab_size >= "
        f"{tokenizers.round_up(spec.vocab_size)}"
      )
    self.source = make_source(cfg, None)  # text: needs no tokenizer
    self._check_source_on_every_process()  # before a tokenizer is trained on it
    saved = self.workdir is not None and tokenizers.trained_tokenizer_path(self.workdir).is_file()
    if saved or self.read_only:  # never retrained: resume, eval and generate read the file
      self.tokenizer = tokenizers.load_trained(cfg.tokenizer, self.workdir)
      self.tokenizer_training = tokenizers.trained_info(self.workdir)
    else:
      self.tokenizer = self._train_tokenizer(cfg.tokenizer, spec)
    self._check_vocab()

  def _check_vocab(self):
    cfg, model = self.exp.data, self.exp.model
    if self.tokenizer.vocab_size > model.vocab_size:
      raise UserError(
        f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary "
        f"({self.tokenizer.vocab_size}, {cfg.tokenizer!r}); set model.vocab_size >= "
        f"{self.tokenizer.padded_vocab_size}"
      )

  def _train_tokenizer(self, spec_text: str, spec: tokenizers.TrainSpec):
    """Trains the BPE on a sample of the training split; saves it in the workdir (if any)."""
    train_docs, _ = document_split(self.source, self.exp.data.eval_fraction)
    texts, info = _sample_texts(self.source, train_docs, spec.sample_bytes)
    t0 = time.perf_counter()
    tok = tokenizers.train_bpe(texts, spec.vocab_size)
    info = {
      "spec": spec_text,
      **info,
      "vocab_size": tok.get_vocab_size(with_added_tokens=True),
      "train_seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("tokenizer %s trained: %s", spec_text, info)
    self.tokenizer_training = info
    if self.workdir is not None and jax.process_index() == 0:
      tokenizers.save_trained(tok, self.workdir, info)
      return tokenizers.load_trained(spec_text, self.workdir)
    # A dry run (no workdir) or another host (training is deterministic: the same tokenizer):
    # a private file, since `HFTokenizer` reloads from its path in worker processes.
    # It is removed with the tokenizer (or at exit): `config` and a dry run leave nothing.
    directory = tempfile.mkdtemp(prefix="parallax_tokenizer_")
    path = Path(directory) / tokenizers.TRAINED_FILE
    try:
      tok.save(str(path))
      loaded = tokenizers.HFTokenizer(str(path))
    except BaseException:
      shutil.rmtree(directory, ignore_errors=True)
      raise
    weakref.finalize(loaded, _remove_private_dir, directory, os.getpid())
    return loaded

  def _dataset(self, split):
    """The train split: this process's share of the documents, ``local_batch`` rows a batch.
    The eval split: all of it, the global batch, the same on every process (``eval_batches``
    slices this process's rows), so held-out numbers do not depend on the process count."""
    index, count = (jax.process_index(), jax.process_count()) if split == "train" else (0, 1)
    rows = self.local_batch if split == "train" else self.exp.train.batch_size
    if self.task:
      return synthetic.make_task_dataset(
        self.exp.data,
        seq_len=self.exp.train.seq_len,
        batch_size=rows,
        split=split,
        seed=self.exp.train.seed,
        process_index=index,
        process_count=count,
      )
    return make_dataset(
      self.exp.data,
      tokenizer=self.tokenizer,
      seq_len=self.exp.train.seq_len,
      batch_size=rows,
      split=split,
      seed=self.exp.train.seed,
      process_index=index,
      process_count=count,
      source=self.source,
    )

  def describe(self) -> dict:
    if self.task:
      return {"source": synthetic.describe_task(self.exp.data, self.exp.train.seq_len)}
    out = {
      "source": self.source.describe(),
      "tokenizer": repr(self.tokenizer),
      "vocab_size": self.tokenizer.vocab_size,
    }
    digest = self._tokenizer_sha256()
    if digest is not None:  # what it is, beside where this start read it (a moved run moves it)
      out["tokenizer_sha256"] = digest
    if self.tokenizer_training is not None:
      out["tokenizer_training"] = self.tokenizer_training
    return out

  def next_train(self) -> dict:
    return next(self._it)

  def state(self) -> dict:
    """Iterator state after the batches drawn so far (JSON-serialisable)."""
    return self._it.get_state()

  def restore(self, state: dict | None) -> None:
    """Continues from ``state()``, as saved (a JSON round trip: `pipeline.state_from_json`)."""
    if state is not None:
      self._it.set_state(state_from_json(state))

  def eval_batches(self):
    """This process's rows of the first ``train.eval_batches`` held-out global batches, the same
    every time and whatever the process count.

    Always exactly ``train.eval_batches`` batches: once the held-out documents run out, the rest
    are all padding (``loss_mask`` 0), so every eval runs the same number of (collective) steps.
    """
    rows = slice(
      jax.process_index() * self.local_batch, (jax.process_index() + 1) * self.local_batch
    )
    it = iter(self._dataset("eval"))
    last = None
    for _ in range(self.exp.train.eval_batches):
      try:
        last = {k: v[rows] for k, v in next(it).items()}
      except StopIteration:
        if last is None:
          return
        last = {k: np.zeros_like(v) for k, v in last.items()}
      yield last


def _remove_private_dir(directory: str, owner_pid: int) -> None:
  """Removes a trained tokenizer's private directory, in the process that made it only (a
  forked worker inherits the finalizer, and the file is still read by its parent)."""
  if os.getpid() == owner_pid:
    shutil.rmtree(directory, ignore_errors=True)


class _ProcessesDiffer(UserError):
  """A cross-process check's verdict, raised on every process."""


def _same_on_every_process(kind: str, what: dict, *, failed: bool = False) -> None:
  """Raises a ``UserError`` unless ``what`` (JSON-able) hashes alike on every process.

  ``failed``: this process stopped with an error before the check and only takes part (its
  caller raises that error); the others raise, naming it."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).digest()
  mine = np.frombuffer(digest + bytes([failed]), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(mine))
  stopped = [i for i, d in enumerate(digests) if d[-1]]
  if failed:
    return
  if stopped:
    raise _ProcessesDiffer(
      f"processes {stopped} stopped with an error before the {kind} check (see their output: "
      "a data file or tokenizer missing on that host?); nothing was trained"
    )
  others = [i for i, d in enumerate(digests) if bytes(d) != bytes(digests[0])]
  if others:
    raise _ProcessesDiffer(
      f"processes {others} read other {kind} than process 0 (each host's data.* files, or its "
      f"Python installation for a built-in corpus, must be the same); process "
      f"{jax.process_index()} reads {what}"
    )
