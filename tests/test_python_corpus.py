"""source="python_corpus" (the installation's text files) and tokenizer="train:bpe:VOCAB".

The corpus runs on a fake install tree (explicit roots); the tokenizer trains on tiny texts.
References are properties: which files a tree must give, splits that agree across trees,
text that must round-trip, a tokenizer file that must not be rewritten.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from parallax_jax.data import DataConfig, make_source, tokenizers
from parallax_jax.data import python_corpus as pc
from parallax_jax.data.pipeline import document_split, make_dataset
from parallax_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

ROUND_TRIP = [
  "def f(x):\n\treturn x  # tab, two spaces\n",
  "  leading and trailing spaces  \n\n\n",
  "unicode: héllo wörld, 日本語, emoji 🐍🚀, RTL שלום, combining é",
  "\x00\x01 control \r\n CRLF \x7f and a lone surrogate-free \ufeff BOM",
  "",
]


def _write(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _fake_install(root: Path, extra: int = 40) -> dict[str, str]:
  """A stdlib with a nested site-packages (the pyenv layout): {label: directory}."""
  lib, site = root / "lib", root / "lib" / "site-packages"
  _write(lib / "json" / "decoder.py", "import re\n# the decoder\n")
  _write(lib / "README.md", "# readme\n")
  _write(lib / "notes.rst", "notes\n=====\n")
  _write(lib / "data.txt", "some text\n")
  _write(lib / "binary.so", "not text")  # wrong extension
  _write(lib / "lib.pyc", "bytecode")
  _write(lib / "test" / "test_json.py", "bad = (\n")  # test directories are skipped
  _write(lib / "idlelib" / "idle_test" / "t.py", "x\n")
  _write(lib / "__pycache__" / "cached.py", "x\n")
  _write(site / "numpy" / "core.py", "import numpy\n")
  _write(site / "numpy" / "tests" / "test_core.py", "x\n")
  _write(site / "dup.py", "import re\n# the decoder\n")  # same content as json/decoder.py
  for i in range(extra):
    _write(site / f"pkg{i % 7}" / f"mod{i}.py", f"value_{i} = {i} * 2\nprint(value_{i})\n")
  return {"stdlib": str(lib), "purelib": str(site)}


@pytest.fixture
def tree(tmp_path):
  return _fake_install(tmp_path / "install")


def test_keeps_text_files_skips_tests_and_duplicates(tree):
  corpus = pc.PythonCorpus(tree, eval_fraction=0.1)
  names = set(corpus.names)
  expected = {"stdlib/README.md", "stdlib/notes.rst", "stdlib/data.txt", "purelib/numpy/core.py"}
  assert expected <= names
  assert corpus.names == sorted(corpus.names)
  # The nested root is walked once, as itself; test dirs, caches, other extensions never.
  assert not any(n.startswith("stdlib/site-packages") for n in names)
  assert not any("test" in n or "cache" in n or n.endswith((".so", ".pyc")) for n in names)
  # One copy of a duplicated content: the first name in sorted order ("purelib" < "stdlib").
  assert "purelib/dup.py" in names and "stdlib/json/decoder.py" not in names
  assert corpus.num_duplicates == 1 and len(corpus) == 3 + 2 + 40  # stdlib, purelib, pkg*
  i = corpus.names.index("stdlib/README.md")
  assert corpus[i] == "# readme\n"
  info = corpus.describe()
  assert info["kind"] == "python_corpus" and info["num_files"] == len(corpus)
  assert info["train_files"] + info["eval_files"] == len(corpus)
  assert info["num_bytes"] == sum(len(corpus[j].encode()) for j in range(len(corpus)))


def test_split_is_disjoint_and_a_function_of_the_name(tmp_path, tree):
  corpus = pc.PythonCorpus(tree, eval_fraction=0.25)
  train, ev = document_split(corpus, 0.25)
  assert len(np.intersect1d(train, ev)) == 0
  assert sorted(np.concatenate([train, ev]).tolist()) == list(range(len(corpus)))
  assert 0 < len(ev) < len(train)
  held_out = {corpus.names[i] for i in ev}
  # Another machine: the tree elsewhere, some files gone, others added. Names that exist in
  # both trees are held out in both or in neither.
  other = tmp_path / "elsewhere"
  shutil.copytree(Path(tree["stdlib"]).parent, other)
  for name in sorted(held_out)[:1] + sorted(set(corpus.names) - held_out)[:5]:
    label, rel = name.split("/", 1)
    (other / ("lib" if label == "stdlib" else "lib/site-packages") / rel).unlink()
  for i in range(40, 200):
    _write(other / "lib" / "site-packages" / "more" / f"m{i}.py", f"more_{i} = {i}\n")
  roots = {"stdlib": str(other / "lib"), "purelib": str(other / "lib" / "site-packages")}
  moved = pc.PythonCorpus(roots, eval_fraction=0.25)
  _, ev2 = moved.split_indices()
  held_out2 = {moved.names[i] for i in ev2}
  common = set(corpus.names) & set(moved.names)
  assert len(common) >= len(corpus) - 6
  assert held_out & common == held_out2 & common
  assert 0.15 < len(ev2) / len(moved) < 0.35  # a hash split holds out about eval_fraction
  with pytest.raises(UserError, match="eval_fraction"):
    moved.split_indices(0.5)


def test_fingerprint_tracks_contents_not_location(tmp_path, tree):
  sha = pc.PythonCorpus(tree).fingerprint()["sha256"]
  assert pc.PythonCorpus(tree).fingerprint()["sha256"] == sha
  other = tmp_path / "copy"
  shutil.copytree(Path(tree["stdlib"]).parent, other)
  roots = {"stdlib": str(other / "lib"), "purelib": str(other / "lib" / "site-packages")}
  assert pc.PythonCorpus(roots).fingerprint()["sha256"] == sha
  (other / "lib" / "data.txt").write_text("Some text\n")  # same size, one byte changed
  assert pc.PythonCorpus(roots).fingerprint()["sha256"] != sha


def test_make_source_and_the_pipeline_use_the_name_split(monkeypatch, tree):
  monkeypatch.setattr(pc, "default_roots", lambda: tree)
  cfg = DataConfig(source="python_corpus", eval_fraction=0.2, read_threads=1)
  corpus = make_source(cfg, None)
  assert isinstance(corpus, pc.PythonCorpus) and corpus.eval_fraction == 0.2
  _, ev = corpus.split_indices()
  held_out = "".join(corpus[int(i)] for i in ev)
  tok = tokenizers.ByteTokenizer()
  batches = make_dataset(
    cfg, tokenizer=tok, seq_len=64, batch_size=2, split="eval", seed=0, source=corpus
  )
  for batch in batches:
    for row, mask in zip(batch["targets"], batch["loss_mask"], strict=True):
      text = bytes(int(t) for t, m in zip(row, mask, strict=True) if m and t < 256).decode()
      for line in filter(None, text.split("\n")):
        assert line in held_out  # eval rows come from held-out files only
  with pytest.raises(UserError, match="python_corpus is text"):
    make_source(DataConfig(source="python_corpus", format="jsonl"), None)


def test_empty_tree_and_bad_roots_raise(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no .py/.md/.rst/.txt files"):
    pc.PythonCorpus({"stdlib": str(tmp_path / "empty")})
  with pytest.raises(UserError, match="not a directory"):
    pc.PythonCorpus({"stdlib": str(tmp_path / "missing")})


def test_default_roots_are_the_running_interpreter():
  import sysconfig

  roots = pc.default_roots()
  assert roots["stdlib"] == sysconfig.get_paths()["stdlib"]
  assert len({str(Path(r).resolve()) for r in roots.values()}) == len(roots)


# ---------------------------------------------------------------------------- the tokenizer


@pytest.mark.parametrize(
  "spec, error",
  [
    ("train:bpe", "expected 'train:bpe:VOCAB'"),
    ("train:wordpiece:300", "expected 'train:bpe:VOCAB'"),
    ("train:bpe:100", "VOCAB=100 is out of range"),
    ("train:bpe:300:0", "MIB=0 must be in"),
    ("train:bpe:3e4", "expected"),
  ],
)
def test_bad_train_specs_name_the_form(spec, error):
  with pytest.raises(UserError, match=f"DataConfig.tokenizer={spec!r}.*{error}"):
    DataConfig(source="python_corpus", tokenizer=spec)
  assert tokenizers.parse_train_spec("train:bpe:32000") == tokenizers.TrainSpec(32000, 64)
  assert tokenizers.parse_train_spec("train:bpe:300:2").sample_bytes == 2 * 2**20


def test_a_trained_tokenizer_on_npy_token_ids_is_refused_in_one_line(tmp_path):
  """format="auto" finds the .npy files only when the source is read: refused there, as
  format="npy" is by the config (not an AttributeError on the tokenizer not trained yet)."""
  np.save(tmp_path / "ids.npy", np.array([1, 2, 0, 3], np.int32))
  cfg = DataConfig(source=str(tmp_path / "ids.npy"), tokenizer="train:bpe:300")
  with pytest.raises(UserError, match=r"tokenizer='train:bpe:300': needs text .*ids\.npy"):
    make_source(cfg, None)
  with pytest.raises(UserError, match="needs text documents"):
    DataConfig(source=str(tmp_path / "ids.npy"), tokenizer="train:bpe:300", format="npy")


def test_trained_bpe_round_trips_any_text(tmp_path):
  texts = ["def add(a, b):\n    return a + b\n" * 20, "# héllo\nprint('hello world')\n" * 20]
  tok = tokenizers.train_bpe(texts, 300)
  assert 257 < tok.get_vocab_size() <= 300
  tok.save(str(tmp_path / "t.json"))
  hf = tokenizers.HFTokenizer(str(tmp_path / "t.json"))
  assert hf.eos_id == 0 and hf.vocab_size == tok.get_vocab_size()
  for text in [*ROUND_TRIP, texts[0]]:
    ids = hf.encode(text)
    assert hf.decode(ids) == text
    assert ids == tok.encode(text, add_special_tokens=False).ids
  assert len(hf.encode(texts[0])) < len(texts[0]) / 2  # merges were learned
  assert tokenizers.train_bpe(texts, 300).to_str() == tok.to_str()  # deterministic


@pytest.mark.parametrize(
  "text, why", [("{not json", "is not JSON"), ("[1, 2]", "is not a JSON object")]
)
def test_a_damaged_training_record_is_one_line_naming_it(tmp_path, text, why):
  """A hand-damaged ``tokenizer_train.json`` was a JSONDecodeError traceback from inside json
  (or an AttributeError for a list); now a UserError naming the file; intact, it reads back."""
  tok = tokenizers.train_bpe(["def f(x):\n    return x\n" * 20], 280)
  tokenizers.save_trained(tok, tmp_path, {"spec": "train:bpe:280"})
  assert tokenizers.trained_info(tmp_path) == {"spec": "train:bpe:280"}
  (tmp_path / tokenizers.TRAINED_INFO).write_text(text)
  for read in (
    lambda: tokenizers.trained_info(tmp_path),
    lambda: tokenizers.load_trained("train:bpe:280", tmp_path),
  ):
    with pytest.raises(UserError, match=f"tokenizer_train.json' {why}.*: it records what"):
      read()


def _experiment(tree_roots, monkeypatch, *, tokenizer="train:bpe:300:1", steps=2):
  from parallax_jax.train.config import load_config, resolve

  monkeypatch.setattr(pc, "default_roots", lambda: tree_roots)
  cfg = load_config(
    str(ROOT / "configs" / "tiny.py"),
    [
      "--config.data.source=python_corpus",
      f"--config.data.tokenizer={tokenizer}",
      "--config.data.eval_fraction=0.2",
      "--config.data.read_threads=1",
      "--config.model.num_layers=1",
      "--config.model.d_model=32",
      "--config.model.head_dim=8",
      "--config.model.mlp_dim=64",
      f"--config.train.steps={steps}",
      "--config.train.batch_size=8",
      "--config.train.seq_len=32",
      "--config.train.log_every=1",
      "--config.train.eval_every=2",
      "--config.train.eval_batches=1",
      "--config.optimizer.warmup_steps=1",
      "--config.checkpoint.every_steps=2",
    ],
  )
  return cfg, resolve(cfg, 1)


def test_train_data_trains_once_and_reuses_the_saved_tokenizer(tmp_path, tree, monkeypatch):
  from parallax_jax.train.data_io import TrainData, _sample_texts

  _, exp = _experiment(tree, monkeypatch)
  workdir = tmp_path / "run"
  data = TrainData(exp, workdir)
  saved = workdir / "tokenizer.json"
  info = json.loads((workdir / "tokenizer_train.json").read_text())
  assert info["spec"] == "train:bpe:300:1" and data.describe()["tokenizer_training"] == info
  assert info["sample_bytes"] <= 2**20 and data.tokenizer.vocab_size <= 300
  batch = data.next_train()
  assert batch["inputs"].shape == (8, 32) and batch["inputs"].max() < data.tokenizer.vocab_size
  # The sample comes from training files only, in a fixed order, within its bound.
  train, ev = document_split(data.source, 0.2)
  texts, sample = _sample_texts(data.source, train, 300)
  assert sample["sample_bytes"] == 300 and sum(len(t.encode()) for t in texts) <= 300
  assert _sample_texts(data.source, train, 300)[0] == texts
  held_out = {data.source[int(i)] for i in ev}
  assert not held_out & set(_sample_texts(data.source, train, 10**6)[0])

  # Resume, eval, generate: the file is read, never retrained nor rewritten.
  def no_training(*a, **k):
    raise AssertionError("retrained")

  monkeypatch.setattr(tokenizers, "train_bpe", no_training)
  before = saved.stat().st_mtime_ns
  for read_only in (False, True):
    again = TrainData(exp, workdir, read_only=read_only)
    assert again.describe() == data.describe()
  assert saved.stat().st_mtime_ns == before
  assert tokenizers.make_tokenizer(exp.data.tokenizer, workdir).encode("x = 1") == (
    data.tokenizer.encode("x = 1")
  )
  with pytest.raises(UserError, match="pass the run's workdir"):
    tokenizers.make_tokenizer(exp.data.tokenizer)
  with pytest.raises(FileNotFoundError, match="start the run first"):
    TrainData(exp, tmp_path / "never_trained", read_only=True)
  with pytest.raises(UserError, match="was trained for 'train:bpe:300:1'"):
    tokenizers.load_trained("train:bpe:400", workdir)


def test_vocab_larger_than_the_model_is_refused_before_training(tree, monkeypatch, tmp_path):
  from parallax_jax.train.data_io import TrainData

  _, exp = _experiment(tree, monkeypatch, tokenizer="train:bpe:1000")
  monkeypatch.setattr(tokenizers, "train_bpe", lambda *a: pytest.fail("trained"))
  with pytest.raises(UserError, match="model.vocab_size=384 .* set model.vocab_size >= 1024"):
    TrainData(exp, tmp_path / "run")


def test_tiny_training_run_end_to_end(tmp_path, tree, monkeypatch):
  """2 steps on source="python_corpus" with a trained BPE, saved in the workdir and recorded.
  Needs the Trainer to pass its workdir to TrainData."""
  from parallax_jax.train.loop import train

  cfg, _ = _experiment(tree, monkeypatch)
  workdir = tmp_path / "run"
  out = train(cfg, workdir)
  assert out["final_step"] == 2 and np.isfinite(out["eval_loss"])
  record = json.loads((workdir / "config.json").read_text())
  assert record["data"]["source"]["kind"] == "python_corpus"
  assert record["data"]["source"]["sha256"] == pc.PythonCorpus(tree, 0.2).fingerprint()["sha256"]
  assert record["data"]["tokenizer_training"]["spec"] == "train:bpe:300:1"
  assert record["data"]["tokenizer"] == f"HFTokenizer({str(workdir / 'tokenizer.json')!r})"


@pytest.mark.slow
def test_resume_and_eval_read_the_run_tokenizer(tmp_path, tree, monkeypatch):
  """Resumed to 3 steps and evaluated, the run reads its tokenizer back, never retrains."""
  from parallax_jax.train.loop import evaluate, train

  cfg, _ = _experiment(tree, monkeypatch)
  workdir = tmp_path / "run"
  train(cfg, workdir)
  saved = (workdir / "tokenizer.json").read_bytes()
  monkeypatch.setattr(tokenizers, "train_bpe", lambda *a: pytest.fail("retrained"))
  cfg.train.steps = 3
  assert train(cfg, workdir)["final_step"] == 3
  assert np.isfinite(evaluate(workdir)["eval_loss"])
  assert (workdir / "tokenizer.json").read_bytes() == saved
  history = (workdir / "config_history.jsonl").read_text().splitlines()
  assert history and not any("data" in json.loads(line) for line in history)  # same data


def test_a_run_keeps_its_file_tokenizer_when_it_moves_or_the_file_changes(
  tmp_path, tree, monkeypatch, caplog
):
  """A file tokenizer is copied into the workdir at the run's first start and read from there:
  the run moved to another folder and its original file replaced by another tokenizer, resume,
  eval and the inference loader still read the bytes the run started with (checked against
  the original bytes through `tokenizers` itself), and the change is logged."""
  from tokenizers import Tokenizer

  from parallax_jax.train.loop import evaluate, train

  texts = [f"def f{i}(x):\n  return x * {i}  # number {i}\n" for i in range(60)]
  original, other = tmp_path / "tok" / "a.json", tmp_path / "b.json"
  original.parent.mkdir()
  tokenizers.train_bpe(texts, 300).save(str(original))
  tokenizers.train_bpe(["something else entirely " * 3] * 30, 280).save(str(other))
  started_with = original.read_bytes()
  cfg, _ = _experiment(tree, monkeypatch, tokenizer=str(original))
  train(cfg, tmp_path / "run")
  assert (tmp_path / "run" / "tokenizer.json").read_bytes() == started_with

  moved = tmp_path / "moved"
  shutil.move(tmp_path / "run", moved)
  shutil.copyfile(other, original)  # the path the config names now holds another tokenizer
  cfg.train.steps = 3
  with caplog.at_level("WARNING", logger="parallax_jax"):
    assert train(cfg, moved)["final_step"] == 3
  assert "differs from the run's copy" in caplog.text
  assert "the data source differs" not in caplog.text  # a moved run reads the same data
  original.unlink()  # and then is gone
  assert np.isfinite(evaluate(moved)["eval_loss"])
  text = "def f7(x):\n  return x * 7\n"
  expected = Tokenizer.from_str(started_with.decode()).encode(text, add_special_tokens=False).ids
  assert tokenizers.make_tokenizer(str(original), moved).encode(text) == expected
  assert Tokenizer.from_file(str(other)).encode(text, add_special_tokens=False).ids != expected
  assert (moved / "tokenizer.json").read_bytes() == started_with


def test_a_refused_start_leaves_no_tokenizer_copy(tmp_path, tree, monkeypatch):
  """A start refused by its data (a missing data.source, no held-out document) writes no copy
  of its file tokenizer into the workdir: the next start, with data.tokenizer='train:bpe:...',
  trains its own BPE rather than taking that file as the tokenizer it trained."""
  from parallax_jax.train.config import resolve
  from parallax_jax.train.data_io import TrainData

  other = tmp_path / "a.json"
  tokenizers.train_bpe(["something else entirely " * 3] * 30, 280).save(str(other))
  workdir = tmp_path / "run"
  for key, value, refusal in (
    ("source", str(tmp_path / "missing"), "no such file"),
    ("eval_fraction", 0.0, "split='eval' has no documents"),
  ):
    cfg, _ = _experiment(tree, monkeypatch, tokenizer=str(other))
    cfg.data[key] = value
    with pytest.raises(UserError, match=refusal):
      TrainData(resolve(cfg, 1), workdir)
    assert not (workdir / "tokenizer.json").exists()
  _, exp = _experiment(tree, monkeypatch)  # the fix: another data.tokenizer, in the same workdir
  data = TrainData(exp, workdir)
  assert data.tokenizer_training["spec"] == "train:bpe:300:1"
  assert (workdir / "tokenizer.json").read_bytes() != other.read_bytes()


def test_a_run_recorded_before_the_tokenizer_sha256_resumes_without_a_data_change(
  tmp_path, tree, monkeypatch
):
  """Runs recorded before the tokenizer's sha256 was kept (its ``data`` record lacks the key)
  resume on the same data: no 'data source differs' entry in the history."""
  from parallax_jax.train.loop import train

  cfg, _ = _experiment(tree, monkeypatch)
  workdir = tmp_path / "run"
  train(cfg, workdir)
  record = json.loads((workdir / "config.json").read_text())
  assert len(record["data"].pop("tokenizer_sha256")) == 64
  (workdir / "config.json").write_text(json.dumps(record))
  cfg.train.steps = 3
  assert train(cfg, workdir)["final_step"] == 3
  history = (workdir / "config_history.jsonl").read_text().splitlines()
  assert history and not any("data" in json.loads(line) for line in history)


# ------------------------------------------------------------------------- the study configs


@pytest.mark.parametrize("name, count", [("gpu_study_lm", 64), ("gpu_study_mqar", 32)])
def test_gpu_study_configs_plan_and_validate(name, count, capsys, monkeypatch):
  import jax

  from parallax_jax import cli
  from parallax_jax.errors import UserError
  from parallax_jax.sweeps.config import load_sweep, select_points
  from parallax_jax.train.config import resolve

  path = str(ROOT / "configs" / "sweeps" / f"{name}.py")
  assert cli.main(["sweep", "--config", path, "--workdir", "unused", "--dry-run"]) == 0
  assert len(capsys.readouterr().out.strip().splitlines()) == count
  sweep = load_sweep(path)
  exps = {
    p.name.removeprefix("variant="): resolve(p.config, jax.device_count()) for p in sweep.points
  }
  spec = importlib.util.spec_from_file_location(name, path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  # The results file's plan (PRIORITY) runs every point, each once.
  assert len(set(config.PRIORITY)) == len(config.PRIORITY)
  assert {n for n in exps if any(fnmatch.fnmatch(n, p) for p in config.PRIORITY)} == set(exps)
  two = select_points(load_sweep(path), f"{sorted(exps)[0]},{sorted(exps)[1]}")
  assert sorted(p.name for p in two.points) == [f"variant={n}" for n in sorted(exps)[:2]]
  with pytest.raises(UserError, match="match no point"):
    select_points(load_sweep(path), "no_such_point")
  first = sorted(exps)[0]
  argv = ["sweep", "--config", path, "--workdir", "unused", "--dry-run", "--points", first]
  assert cli.main(argv) == 0
  (line,) = capsys.readouterr().out.strip().splitlines()  # the one point --points selects
  assert line.startswith(f"variant={first}: ")
  if name == "gpu_study_lm":
    main, params, compute = (
      exps[f"muon+{k}_s0"] for k in ("parallax", "softmax_params", "softmax_compute")
    )
    assert main.data.source == "python_corpus" and main.data.tokenizer == "train:bpe:32000"
    assert 100e6 < main.model.num_params() < 150e6 and main.train.seq_len == 2048
    assert abs(params.model.num_params() / main.model.num_params() - 1) < 1e-3
    flops = compute.train.steps * compute.model.flops_per_token(2048)
    assert abs(flops / (main.train.steps * main.model.flops_per_token(2048)) - 1) < 2e-3
    r0 = exps["adamw+parallax_r0_s0"]
    assert exps["muon+parallax_r0_s0"].model.r_init == "zeros" == r0.model.r_init
    assert r0.optimizer.name == "adamw" and r0.train.seed == 0
    # Session 33 dropped the scaled head's AdamW points not yet run: none is in the sweep.
    dropped = set(config.DROPPED)
    assert len(dropped) == 8 and not dropped & set(exps)
    low, seed1 = exps["muon+softmax_lr0.25_s0"], exps["muon+softmax_lr0.5_s1"]  # the follow-up
    assert low.model.attention == "softmax" == seed1.model.attention
    assert (low.optimizer.learning_rate, low.train.seed) == (0.005, 0)
    assert (seed1.optimizer.learning_rate, seed1.train.seed) == (0.01, 1)
    assert low.optimizer.adam_learning_rate == main.optimizer.adam_learning_rate
    # AdamW's base moved from 2e-3 to 1e-3 (session 15): the 2e-3 runs are the x2 points.
    adamw, x2, r0_x2 = (exps[f"adamw+parallax{k}_s0"] for k in ("", "_lr2", "_r0_lr2"))
    assert adamw.optimizer.learning_rate == 1e-3
    assert x2.optimizer.learning_rate == 2e-3 == r0_x2.optimizer.learning_rate
    assert (r0_x2.model.r_init, r0_x2.optimizer.name, r0_x2.train.seed) == ("zeros", "adamw", 0)
    # AdamW's scan goes up from 2e-3 (session 16): x4 for each kind, x8 for softmax.
    up = {n: exps[n] for n in exps if n.startswith("adamw+") and ("_lr4_" in n or "_lr8_" in n)}
    kinds = {
      n: (e.model.attention, e.model.r_init, e.optimizer.learning_rate) for n, e in up.items()
    }
    assert kinds == {
      "adamw+softmax_lr4_s0": ("softmax", "like_q", 4e-3),
      "adamw+parallax_r0_lr4_s0": ("parallax", "zeros", 4e-3),
      "adamw+parallax_lr4_s0": ("parallax", "like_q", 4e-3),
    }
    assert all(e.optimizer.name == "adamw" and e.train.seed == 0 for e in up.values())
    # The unscaled tied head (sessions 16-19): each `<arm>_head1_s<seed>` point is the
    # `<arm>_s<seed>` point with the head alone changed, or (`HEAD_ONE_SEEDS`) another seed of
    # such a point; every other point keeps the scaled head it ran with.
    head1 = {n for n, e in exps.items() if e.model.tied_head_scale == "one"}
    assert head1 == {n for n in exps if "_head1_" in n} and len(head1) == 38
    for name, source in config.HEAD_ONE_SEEDS.items():
      seed = int(name.rsplit("_s", 1)[1])
      assert seed != exps[source].train.seed and exps[name].train.seed == seed
      assert (
        dataclasses.replace(exps[name].train, seed=exps[source].train.seed) == exps[source].train
      )
      assert exps[name].model == exps[source].model
      assert exps[name].optimizer == exps[source].optimizer
    # `HEAD_ONE_EDGES` (session 29): a head1 point at another rate, nothing else changed.
    for name, (source, factor) in config.HEAD_ONE_EDGES.items():
      lr = exps[source].optimizer.learning_rate * factor
      assert exps[name].optimizer == dataclasses.replace(exps[source].optimizer, learning_rate=lr)
      assert exps[name].model == exps[source].model and exps[name].train == exps[source].train
    assert {
      n: e.optimizer.learning_rate for n, e in exps.items() if n in config.HEAD_ONE_EDGES
    } == {
      "muon+parallax_lr4_head1_s0": 0.08,
      "adamw+softmax_lr0.5_head1_s0": 5e-4,
      "adamw+parallax_lr0.25_head1_s0": 2.5e-4,
      "adamw+parallax_r0_lr0.5_head1_s0": 5e-4,
      "adamw+parallax_r0_lr0.25_head1_s0": 2.5e-4,
      "adamw+softmax_lr0.25_head1_s0": 2.5e-4,
      "muon+parallax_r0_lr2_head1_s0": 0.04,
    }
    # W_R = 0's AdamW lead (session 31): its seed 1 at 5e-4, and softmax at equal FLOPs
    r0_s1 = exps["adamw+parallax_r0_lr0.5_head1_s1"]
    assert (r0_s1.model.r_init, r0_s1.optimizer.learning_rate, r0_s1.train.seed) == (
      "zeros",
      5e-4,
      1,
    )
    for seed in (0, 1, 2):  # (seed 1: session 32; seed 2: session 33)
      matched = exps[f"adamw+softmax_compute_head1_s{seed}"]
      assert (matched.model.attention, matched.optimizer.name) == ("softmax", "adamw")
      assert matched.train.steps == compute.train.steps and matched.model.tied_head_scale == "one"
      assert (matched.optimizer.learning_rate, matched.train.seed) == (1e-3, seed)
    # AdamW's pair at seed 1 (session 30): both kinds at 5e-4, the unscaled head
    for kind, attention in (("softmax", "softmax"), ("parallax", "parallax")):
      e = exps[f"adamw+{kind}_lr0.5_head1_s1"]
      assert (e.model.attention, e.model.r_init, e.model.tied_head_scale) == (
        attention,
        "like_q",
        "one",
      )
      assert (e.optimizer.name, e.optimizer.learning_rate, e.train.seed) == ("adamw", 5e-4, 1)
    # The AdamW parameter-matched softmax (session 33): Muon's width, AdamW's base rate.
    wide = exps["adamw+softmax_params_head1_s0"]
    assert (wide.model.attention, wide.model.tied_head_scale) == ("softmax", "one")
    assert wide.model.mlp_dim == params.model.mlp_dim and wide.train.steps == main.train.steps
    assert (wide.optimizer.name, wide.optimizer.learning_rate, wide.train.seed) == (
      "adamw",
      1e-3,
      0,
    )
    for name in head1 - set(config.HEAD_ONE_SEEDS) - set(config.HEAD_ONE_EDGES):
      if name.replace("_head1", "") in dropped:  # its scaled twin never ran: checked above
        continue
      base = exps[name.replace("_head1", "")]
      assert base.model.tied_head_scale == "rsqrt_d"
      assert dataclasses.replace(exps[name].model, tied_head_scale="rsqrt_d") == base.model
      assert exps[name].optimizer == base.optimizer and exps[name].train == base.train
  else:
    assert {e.data.mqar_num_pairs for e in exps.values()} == {4, 16, 32, 64}
    assert all(e.model.d_model == 256 and e.train.steps >= 10_000 for e in exps.values())
    seed_one = [n for n in exps if n.endswith("_s1")]
    assert len(seed_one) == 4 * len(config.SEED_ONE)
    for name in seed_one:  # the seed-0 point's run at seed 1, nothing else changed
      base = exps[name.removesuffix("_s1")]
      assert base.train.seed == 0 and exps[name].train.seed == 1
      assert dataclasses.replace(exps[name].train, seed=0) == base.train
      assert (exps[name].model, exps[name].data) == (base.model, base.data)
      assert exps[name].optimizer == base.optimizer
    low = [n for n in exps if n.endswith(f"_lr{config.LOW_RATE:g}")]
    assert len(low) == 2 * len(config.LOW_RATE_GROUPS)
    for name in low:  # the 1e-3 point a step lower, nothing else changed
      base = exps[name.replace(f"_lr{config.LOW_RATE:g}", "_lr0.001")]
      assert exps[name].optimizer.learning_rate == 3e-4 and base.optimizer.learning_rate == 1e-3
      assert dataclasses.replace(exps[name].optimizer, learning_rate=1e-3) == base.optimizer
      assert (exps[name].model, exps[name].data, exps[name].train) == (
        base.model,
        base.data,
        base.train,
      )


@pytest.mark.parametrize("study, at_least", [("gpu_study_lm", 64), ("gpu_study_mqar", 32)])
def test_committed_study_points_are_the_sweeps_points(study, at_least):
  """Every committed GPU-study point is a point of the sweep config as it stands, trained with
  exactly its config (the fingerprint the sweep runner compares): an edit of the config that
  changes a finished point's config, or a renamed point, fails here instead of orphaning a
  result or making the next device session retrain it."""
  from parallax_jax.sweeps.config import load_sweep

  sweep = load_sweep(str(ROOT / "configs" / "sweeps" / f"{study}.py"))
  fingerprints = {p.name: p.fingerprint() for p in sweep.points}
  points = ROOT / "experiments" / "results" / "studies_gpu" / study / "points"
  statuses = {d.name: json.loads((d / "status.json").read_text()) for d in points.iterdir()}
  assert len(statuses) >= at_least
  pins = {p.name: p.config.data.source_sha256 for p in sweep.points}
  for name, status in statuses.items():
    assert status["name"] == name and status["status"] == "finished", name
    assert status["fingerprint"] == fingerprints.get(name), name
    # ... and read the corpus the sweep pins (session 30's runs on another one are kept apart)
    record = json.loads((points / name / "config.json").read_text())
    assert not pins[name] or record["data"]["source"]["sha256"].startswith(pins[name]), name


def test_a_pinned_corpus_is_refused_when_it_changed_before_a_tokenizer_trains(
  tmp_path, tree, monkeypatch
):
  """``data.source_sha256`` pins the corpus by a prefix of the sha256 a run records: the same
  install passes; a package installed into site-packages afterwards (a new file) is refused
  in one line naming the key, before the BPE is trained or anything is written."""
  from parallax_jax.train.data_io import TrainData

  sha = pc.PythonCorpus(tree, 0.2).fingerprint()["sha256"]
  _, exp = _experiment(tree, monkeypatch)
  for pin in (sha, sha[:8]):
    pinned = dataclasses.replace(exp, data=dataclasses.replace(exp.data, source_sha256=pin))
    TrainData(pinned, tmp_path / f"run_{len(pin)}")
    assert (tmp_path / f"run_{len(pin)}" / "tokenizer.json").is_file()
  _write(Path(tree["purelib"]) / "grain" / "__init__.py", "# a wheel installed here\n")
  monkeypatch.setattr(tokenizers, "train_bpe", lambda *a: pytest.fail("trained"))
  with pytest.raises(UserError) as e:
    TrainData(pinned, tmp_path / "changed")
  assert str(e.value).startswith(f"data.source_sha256='{sha[:8]}' pins the corpus, but this ")
  assert "python_corpus has fingerprint" in str(e.value) and "pip install --target" in str(e.value)
  assert "\n" not in str(e.value) and not (tmp_path / "changed").exists()
  assert len(make_source(dataclasses.replace(exp.data, source_sha256=""), None)) == 46


@pytest.mark.parametrize(
  "changes, error",
  [
    ({"source_sha256": "A55C363D"}, "8-64 lowercase hex digits"),
    ({"source_sha256": "a55c36"}, "8-64 lowercase hex digits"),
    ({"source_sha256": "a" * 65}, "8-64 lowercase hex digits"),
    ({"source_sha256": 0xA55C363D}, "8-64 lowercase hex digits"),
    ({"source": "mqar", "source_sha256": "a55c363d"}, "source='mqar' records none"),
    ({"source": "data/*.jsonl", "source_sha256": "a55c363d"}, "records none"),
  ],
)
def test_a_corpus_pin_must_be_a_sha256_prefix_of_a_fingerprinted_source(changes, error):
  with pytest.raises(UserError, match=f"DataConfig.source_sha256=.*{error}"):
    DataConfig(**{"source": "python_corpus", **changes})
  assert DataConfig(source="builtin", source_sha256="a55c363d").source_sha256 == "a55c363d"
