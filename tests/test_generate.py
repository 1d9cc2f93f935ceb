"""Generation: sampling properties, cached generation against a no-cache recompute, batching,
EOS, chunking and seeds, loading a run read-only, and ``parallax-jax generate``.

References are independent of the code under test: sampling frequencies against NumPy
probabilities, the KV-cache loop against ``generate_without_cache`` (the full model on the whole
sequence every step, one prompt at a time, no padding, no cache).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runner import one_line_error, run_cli
from flax import nnx
from train_configs import ROOT, SMALL_MODEL

from parallax_jax.data.tokenizers import ByteTokenizer
from parallax_jax.errors import UserError
from parallax_jax.inference import SamplingConfig, generate, sample
from parallax_jax.inference.loading import load_run
from parallax_jax.inference.text import TextStream, read_prompts
from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.train.config import load_config
from parallax_jax.train.loop import train

# --- sampling ---------------------------------------------------------------------------------


def _draws(logits_V, cfg, n, *, vocab_size=None, seed=0):
  """``n`` independent samples from one row of logits (a batch of n copies, one key)."""
  logits = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n, len(logits_V)))
  return np.asarray(sample(logits, jax.random.key(seed), cfg, vocab_size=vocab_size))


def _nucleus_probs(logits_V, temperature, top_k=None, top_p=None):
  """NumPy float64: the distribution the filters should leave (written from the definition)."""
  z = np.asarray(logits_V, np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros(len(z), bool)
  keep[order[: top_k or len(z)]] = True
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  if top_p is not None:
    mass = 0.0
    for i in order:
      if not keep[i]:
        continue
      if mass >= top_p:  # the tokens above already hold top_p: drop this one
        keep[i] = False
      mass += p[i]
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  return p


RNG_LOGITS = np.random.default_rng(0).normal(size=64) * 2.0


@pytest.mark.parametrize(
  "cfg",
  [
    SamplingConfig(temperature=1.0, top_k=1),
    SamplingConfig(temperature=1.0, top_p=1e-6),
    SamplingConfig(temperature=1e-3),
    SamplingConfig(temperature=5.0, top_k=1, top_p=0.5),
    # logits / temperature overflow float32: the largest must still win, not the first inf
    SamplingConfig(temperature=1e-38),
    SamplingConfig(temperature=1e-40, top_k=10, top_p=0.9),
  ],
  ids=["top_k=1", "top_p=tiny", "temperature->0", "top_k=1+top_p", "tiny-t", "tiny-t+filters"],
)
def test_degenerate_settings_are_greedy(cfg):
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(8, 64)) * 2, jnp.float32)
  greedy = np.argmax(np.asarray(logits), axis=-1)
  for seed in range(5):
    got = np.asarray(sample(logits, jax.random.key(seed), cfg))
    np.testing.assert_array_equal(got, greedy)
  np.testing.assert_array_equal(np.asarray(sample(logits, None, SamplingConfig())), greedy)


def test_temperature_to_zero_approaches_greedy():
  """The share of argmax draws follows its softmax probability up to 1 as the temperature
  falls."""
  top, n = int(np.argmax(RNG_LOGITS)), 4000
  for t in (2.0, 0.5, 0.05, 0.002):
    p = _nucleus_probs(RNG_LOGITS, t)[top]
    share = np.mean(_draws(RNG_LOGITS, SamplingConfig(t), n) == top)
    assert abs(share - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12, (t, share, p)
  assert p > 1 - 1e-9 and share == 1.0


def test_samples_stay_in_the_top_k_and_the_nucleus():
  k, n = 5, 20000
  top5 = set(np.argsort(-RNG_LOGITS)[:k].tolist())
  got = _draws(RNG_LOGITS, SamplingConfig(temperature=3.0, top_k=k), n)
  assert set(got.tolist()) == top5  # every top-k token appears, nothing else
  p = _nucleus_probs(RNG_LOGITS, 3.0, top_p=0.3)
  got = _draws(RNG_LOGITS, SamplingConfig(temperature=3.0, top_p=0.3), n)
  assert set(got.tolist()) == set(np.flatnonzero(p).tolist())
  assert 1 < np.count_nonzero(p) < 64  # the case filters something and keeps several


def test_the_nucleus_is_the_smallest_set_that_reaches_top_p_exactly():
  """Four equal tokens (0.25 each, exact in float32): top_p 0.5 is reached by two of them, so
  exactly two are kept (a third would be one more than the smallest set)."""
  got = _draws(np.zeros(4), SamplingConfig(temperature=1.0, top_p=0.5), 4096)
  assert len(set(got.tolist())) == 2
  got = _draws(np.zeros(4), SamplingConfig(temperature=1.0, top_p=0.5 + 1e-6), 4096)
  assert len(set(got.tolist())) == 3


@pytest.mark.parametrize(
  "temperature, top_k, top_p",
  [(1.0, None, None), (0.7, None, None), (1.0, 3, None), (1.0, None, 0.6), (2.0, 3, 0.8)],
)
def test_frequencies_match_the_filtered_softmax(temperature, top_k, top_p):
  """A 4-token vocabulary: each token's frequency within 5 standard errors of its
  probability; filtered-out tokens never drawn."""
  logits = np.array([1.0, 0.2, -0.5, 0.6])
  n = 40000
  got = _draws(logits, SamplingConfig(temperature, top_k, top_p), n, seed=3)
  freq = np.bincount(got, minlength=4) / n
  p = _nucleus_probs(logits, temperature, top_k, top_p)
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) <= 5 * se + 1e-12), (freq, p)


def test_a_seed_fixes_the_sample():
  cfg = SamplingConfig(temperature=1.0, top_p=0.9)
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(64, 64)), jnp.float32)
  a, b = (np.asarray(sample(logits, jax.random.key(7), cfg)) for _ in range(2))
  c = np.asarray(sample(logits, jax.random.key(8), cfg))
  np.testing.assert_array_equal(a, b)
  assert np.mean(a != c) > 0.5


@pytest.mark.parametrize(
  "cfg",
  [
    SamplingConfig(),
    SamplingConfig(1.0),
    SamplingConfig(1.0, top_k=200, top_p=0.99),
    SamplingConfig(1e38),  # 1 / temperature is subnormal: the padding's -inf times 0 was NaN
  ],
)
def test_padded_ids_are_never_sampled(cfg):
  """Ids >= vocab_size (the table's padding) are never chosen, even with the largest logits."""
  logits = np.zeros(384)
  logits[257:] = 50.0
  logits[:257] = np.random.default_rng(0).normal(size=257)
  got = _draws(logits, cfg, 5000, vocab_size=257)
  assert got.max() < 257


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"temperature": -1.0}, r"temperature=-1.0 \(--temperature\)"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"top_k": 0}, r"top_k=0 \(--top-k\)"),
    ({"top_p": 0.0}, r"top_p=0.0 \(--top-p\)"),
    ({"top_p": 1.5}, "top_p=1.5"),
  ],
)
def test_sampling_config_errors_name_the_field(kwargs, match):
  with pytest.raises(UserError, match=match):
    SamplingConfig(**kwargs)


# --- generation against the no-cache reference ------------------------------------------------

SMALL_LM = ModelConfig(
  vocab_size=128,
  d_model=32,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  mlp_dim=64,
  compute_dtype="float32",
  tie_embeddings=False,
  init_std=0.3,  # peaked logits: greedy paths are far from ties and vary along the sequence
)


@pytest.fixture(scope="module")
def models():
  """(graphdef, params) per variant, built once."""
  out = {}
  for name, kw in {
    "parallax": {},
    "softmax": {"attention": "softmax"},
    "parallax_w5": {"window_size": 5},
    "softmax_w5": {"attention": "softmax", "window_size": 5},
  }.items():
    cfg = dataclasses.replace(SMALL_LM, **kw)
    out[name] = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  return out


@functools.cache
def _forward(graphdef):
  return jax.jit(lambda params, x_BT: nnx.merge(graphdef, params)(x_BT))


def generate_without_cache(model, prompt, max_new_tokens, eos_id=None, width=128):
  """Greedy, one prompt, recomputing the whole sequence each step (no cache): the sequence
  is zero-padded on the right to ``width`` (causal: padding after a position changes nothing
  there) so one compiled forward serves every step."""
  graphdef, params = model
  seq, out = list(prompt), []
  while len(out) < max_new_tokens:
    x = np.zeros((1, width), np.int32)
    x[0, : len(seq)] = seq
    token = int(np.argmax(np.asarray(_forward(graphdef)(params, x))[0, len(seq) - 1]))
    if token == eos_id:
      break
    out.append(token)
    seq.append(token)
  return out


# Most tests share one shape (3 prompts, 20 new tokens, chunks of 8): one compile per model.
PROMPTS = [[5, 17, 3, 99, 42], [7], [64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
N, CHUNK = 20, 8


@pytest.mark.parametrize("name", ["parallax", "softmax", "parallax_w5", "softmax_w5"])
def test_cached_greedy_matches_recompute(models, name):
  """Each prompt of a batch (different lengths, right-padded) continues exactly as the no-cache
  recompute of that prompt alone."""
  res = generate(models[name], PROMPTS, max_new_tokens=N, chunk_tokens=CHUNK)
  for prompt, got in zip(PROMPTS, res.tokens, strict=True):
    assert got == generate_without_cache(models[name], prompt, N)
  assert len(set(res.tokens[0])) > 3  # a varied path: a wrong cache would show
  assert res.stopped_at_eos == [False] * 3


def test_batch_equals_each_prompt_alone(models):
  together = generate(models["parallax"], PROMPTS, max_new_tokens=N, chunk_tokens=CHUNK)
  for prompt, got in zip(PROMPTS, together.tokens, strict=True):
    alone = generate(models["parallax"], [prompt], max_new_tokens=N, chunk_tokens=CHUNK)
    assert alone.tokens == [got]


def test_chunked_prefill_matches_recompute(models):
  """Prefill in chunks of 32 positions: the 50-token prompt spans two."""
  prompts = [list(range(3, 53)), [7]]
  res = generate(
    models["parallax_w5"], prompts, max_new_tokens=N, chunk_tokens=CHUNK, prefill_chunk=32
  )
  for prompt, got in zip(prompts, res.tokens, strict=True):
    assert got == generate_without_cache(models["parallax_w5"], prompt, N)


def test_eos_stops_its_row_only(models):
  kw = dict(max_new_tokens=N, chunk_tokens=CHUNK)
  row0 = generate(models["parallax"], PROMPTS, **kw).tokens[0]
  eos = row0[3]  # row 0's 4th token (its first occurrence: the greedy path varies)
  cut = row0.index(eos)
  res = generate(models["parallax"], PROMPTS, eos_id=eos, **kw)
  assert res.tokens[0] == row0[:cut] and res.stopped_at_eos[0]
  for b in (1, 2):
    want = generate_without_cache(models["parallax"], PROMPTS[b], N, eos_id=eos)
    assert res.tokens[b] == want
    assert res.stopped_at_eos[b] == (len(want) < N)


def test_generation_stops_when_every_row_has_ended(models):
  """All rows at EOS: no further chunk is run (EOS forced as the row's first token)."""
  model = models["softmax"]
  first = generate_without_cache(model, PROMPTS[0], 1)[0]
  blocks = []
  res = generate(
    model, [PROMPTS[0]], max_new_tokens=N, chunk_tokens=CHUNK, eos_id=first, on_tokens=blocks.append
  )
  assert res.tokens == [[]] and res.stopped_at_eos == [True]
  assert [b.shape for b in blocks] == [(1, 1)] and res.decode_tokens == 0


@pytest.mark.parametrize("max_new_tokens", [1, 9, 13, N])
def test_max_new_tokens_is_respected(models, max_new_tokens):
  """Exactly ``max_new_tokens`` per row, the last chunk's extra steps dropped (9 and 13 end
  inside a chunk of 8)."""
  blocks = []
  res = generate(
    models["parallax"],
    PROMPTS,
    max_new_tokens=max_new_tokens,
    chunk_tokens=CHUNK,
    on_tokens=blocks.append,
  )
  assert [len(t) for t in res.tokens] == [max_new_tokens] * 3
  assert sum(b.shape[1] for b in blocks) == max_new_tokens
  np.testing.assert_array_equal(np.concatenate(blocks, axis=1), np.asarray(res.tokens))
  assert res.prompt_tokens == 18 and res.decode_tokens == 3 * (max_new_tokens - 1)
  full = generate(models["parallax"], PROMPTS, max_new_tokens=N, chunk_tokens=CHUNK).tokens
  assert res.tokens == [t[:max_new_tokens] for t in full]


def test_seeded_sampling_does_not_depend_on_chunking(models):
  cfg = SamplingConfig(temperature=1.5, top_k=40, top_p=0.95)
  run = lambda chunk, seed=3: (
    generate(
      models["parallax"], PROMPTS, max_new_tokens=N, sampling=cfg, seed=seed, chunk_tokens=chunk
    ).tokens
  )
  one, eight = run(1), run(CHUNK)
  assert one == eight
  assert run(CHUNK, seed=4) != eight  # the seed matters
  assert eight != generate(models["parallax"], PROMPTS, max_new_tokens=N, chunk_tokens=CHUNK).tokens


def test_a_rows_sample_depends_on_its_prompt_and_stream_alone(models):
  """Row b drew a slice of one batch-wide draw. Now each row has its own stream: under one int
  seed, stream b (not the other prompts or the batch size; a repeated prompt draws anew, as
  pass@k sampling needs); under a list, each prompt's own seed (its text alone, in any place)."""
  kw = dict(max_new_tokens=12, sampling=SamplingConfig(temperature=1.5), chunk_tokens=4)
  run = lambda prompts, seed=3: generate(models["parallax"], prompts, seed=seed, **kw).tokens
  p = PROMPTS[0]
  alone = run([p])[0]
  four = run([[7], [8, 9], p, [1]])
  assert run([[5, 5, 5], [2], p])[2] == four[2]  # other prompts, another batch size
  assert run([p, [8, 9]])[0] == alone  # row 0's stream whatever follows it
  repeated = run([p, p, p])
  assert repeated[0] == alone and len({tuple(t) for t in repeated}) == 3  # new samples
  # One seed per prompt: a row's text is that prompt's alone with its seed, in any place.
  own = run([[7], [8, 9], p, p], seed=[0, 1, 3, 5])
  assert own[2] == alone and own[3] == run([p], seed=5)[0] != alone
  assert own[0] == run([[7]], seed=0)[0] and run([p], seed=[3])[0] == alone
  with pytest.raises(UserError, match=r"seed has 2 values for 3 prompt\(s\)"):
    run(PROMPTS, seed=[1, 2])
  with pytest.raises(UserError, match=r"seed=-1 \(--seed\)"):
    run(PROMPTS, seed=[1, -1, 2])


def test_compiled_once_per_shape(models):
  kw = dict(max_new_tokens=N, chunk_tokens=CHUNK)
  generate(models["softmax"], PROMPTS, **kw)
  other = [[9, 8], [7, 6, 5, 4], [1] * 30]  # other lengths, the same padded shapes
  again = generate(models["softmax"], other, **kw)
  assert again.compile_s == 0.0
  assert again.prefill_s > 0 and again.decode_s > 0
  line = again.timing_line()
  assert re.fullmatch(
    r"prefill: 36 tokens in \S+ s \(\d+ tokens/s\); decode: 57 tokens in \S+ s \(\d+ tokens/s\)",
    line,
  ), line


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"prompts": []}, "prompts must be a non-empty list"),
    ({"prompts": [[1], []]}, r"prompts\[1\] must be a non-empty list"),
    ({"prompts": [[1, 128]]}, r"prompts\[0\] has ids outside 0 .. 127 \(model.vocab_size\)"),
    # an id of the table's padding, never trained: the tokenizer has no such id
    ({"prompts": [[1, 100]], "vocab_size": 100}, r"outside 0 .. 99 \(vocab_size\)"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1"),
    ({"chunk_tokens": 0}, "chunk_tokens must be an int >= 1"),
    ({"prefill_chunk": 0}, "prefill_chunk must be an int >= 1, got 0"),
    ({"prefill_chunk": 2.5}, "prefill_chunk must be an int >= 1, got 2.5"),
    ({"eos_id": 128}, "eos_id=128"),
    # an id of the table's padding is never sampled: no row would ever stop
    ({"eos_id": 100, "vocab_size": 100}, r"eos_id=100 lies outside .* 0 .. 99 \(vocab_size\)"),
    ({"vocab_size": 129}, "vocab_size=129"),
    # a float vocab_size masked at 100.5 (ids 0 .. 100), a float eos_id failed inside the scan
    ({"vocab_size": 100.5}, r"vocab_size=100.5 must be an int in 1 .. 128"),
    ({"eos_id": 2.5}, r"eos_id=2.5 must be an int token id"),
    ({"eos_id": True}, r"eos_id=True must be an int token id"),
    # jax.random.key keeps 32 bits: 2**32 would draw seed 0's samples, -1 seed 2**32 - 1's
    ({"seed": 2**32}, r"seed=4294967296 \(--seed\) must be an int in 0 .. 4294967295"),
    ({"seed": -1}, r"seed=-1 \(--seed\)"),
  ],
)
def test_generate_argument_errors(models, kwargs, match):
  args = {"prompts": [[1, 2]], "max_new_tokens": 4, **kwargs}
  with pytest.raises(UserError, match=match):
    generate(models["parallax"], **args)


def test_numpy_numbers_are_accepted(models):
  """Settings computed with NumPy (np.int64, np.float32) were refused as "must be an int >= 1,
  got np.int64(4)": they give what the Python numbers give."""
  cfg = SamplingConfig(np.float32(1.5), np.int64(40), np.float32(0.5))
  assert cfg == SamplingConfig(float(np.float32(1.5)), 40, float(np.float32(0.5)))
  kw = dict(max_new_tokens=np.int64(9), chunk_tokens=np.int32(4), prefill_chunk=np.int64(2))
  got = generate(models["parallax"], PROMPTS, sampling=cfg, seed=np.int64(3), **kw).tokens
  want = dict(max_new_tokens=9, chunk_tokens=4, prefill_chunk=2)
  assert got == generate(models["parallax"], PROMPTS, sampling=cfg, seed=3, **want).tokens
  seeds = generate(models["parallax"], PROMPTS, sampling=cfg, seed=np.array([3, 4, 5]), **want)
  assert (
    seeds.tokens
    == generate(models["parallax"], PROMPTS, sampling=cfg, seed=[3, 4, 5], **want).tokens
  )


def test_a_cache_larger_than_the_device_is_refused_before_compiling(models, monkeypatch):
  """The cache holds every decode slot from the start: 10**12 new tokens asked of SMALL_LM
  (k and v, 2 layers, 2 KV heads of 8 float32 numbers: 256 bytes a position) was an
  out-of-memory traceback; now one line with the size, before anything compiles."""
  generate_module = importlib.import_module("parallax_jax.inference.generate")
  n = 10**12
  decode_slots = -(-(n - 1) // 16) * 16  # chunks of 16 steps, the last one's extra included
  max_len = -(-(2 + decode_slots) // 128) * 128  # cache slots come in multiples of 128
  gib = 2 * 2 * 2 * 8 * 4 * max_len / 2**30
  misses = generate_module._compiled.cache_info().misses
  with pytest.raises(UserError) as e:
    generate(models["parallax"], [[1, 2]], max_new_tokens=n)
  assert str(e.value).startswith(
    f"max_new_tokens={n}: the KV cache for 1 prompt(s) of up to {max_len} positions needs "
    f"{gib:.1f} GiB, more than this device's "
  ) and str(e.value).endswith("ask for fewer new tokens or fewer prompts at once")
  assert generate_module._compiled.cache_info().misses == misses
  # The bound is the device's: a 256-slot cache (64 KiB) refused on a 60 KiB device only.
  monkeypatch.setattr(generate_module, "device_memory_bytes", lambda: 60 * 2**10)
  with pytest.raises(UserError, match="needs 0.0 GiB, more than this device's 0.0 GiB"):
    generate(models["parallax"], [[1, 2]], max_new_tokens=200)
  monkeypatch.setattr(generate_module, "device_memory_bytes", lambda: 64 * 2**10)
  assert generate(models["parallax"], [[1, 2]], max_new_tokens=4).tokens


def test_lla_has_no_decode(models):
  lla = nnx.split(Transformer(dataclasses.replace(SMALL_LM, attention="lla"), rngs=nnx.Rngs(0)))
  with pytest.raises(NotImplementedError, match="lla"):
    generate(lla, [[1, 2]], max_new_tokens=3)


# --- text streaming ---------------------------------------------------------------------------


def test_text_stream_holds_back_split_characters():
  """Bytes of multi-byte characters arrive one token at a time: the stream never prints a
  replacement character and prints the text exactly, stopping at EOS."""
  tok = ByteTokenizer()
  text = "héllo ✓ wörld"
  out = io.StringIO()
  stream = TextStream(tok, out)
  for b in text.encode():
    stream.add([b])
    assert "\ufffd" not in out.getvalue()
  stream.add([tok.eos_id, ord("x")])
  stream.close()
  assert out.getvalue() == text + "\n"


# --- a trained run: loading and the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
  """A tiny trained run with checkpoints at steps 1 and 2."""
  workdir = tmp_path_factory.mktemp("gen") / "run"
  overrides = [
    *SMALL_MODEL,
    "--config.train.steps=2",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=3",
    "--config.checkpoint.async_save=false",
  ]
  train(load_config(ROOT / "configs" / "tiny.py", overrides), workdir)
  return workdir


def _tree(directory: Path) -> dict[str, tuple]:
  """Every path under ``directory`` with its size and mtime (directories too)."""
  return {
    str(p.relative_to(directory)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
    for p in sorted(directory.rglob("*"))
  }


TIMING = re.compile(
  r"prefill: (\d+) tokens in \S+ s \(\d+ tokens/s\); decode: (\d+) tokens in \S+ s "
  r"\(\d+ tokens/s\)"
)


def test_cli_generate_streams_text_and_leaves_the_run_unchanged(run2, capsys):
  before = _tree(run2)
  code, out, err = run_cli(
    capsys, "generate", "--workdir", str(run2), "--prompt", "Once", "--max-new-tokens", "8"
  )
  assert code == 0, err
  assert _tree(run2) == before
  timing = [line for line in err.splitlines() if TIMING.fullmatch(line)]
  assert len(timing) == 1, err
  prefill, decode = map(int, TIMING.fullmatch(timing[0]).groups())
  assert prefill == 5  # EOS (the run trained with data.add_eos) + 4 bytes
  assert decode <= 7
  # The printed text is the decoded greedy continuation of the loaded params.
  run = load_run(run2)
  tok = run.tokenizer
  want = generate(
    (run.graphdef, run.params),
    [[tok.eos_id, *b"Once"]],
    max_new_tokens=8,
    eos_id=tok.eos_id,
    vocab_size=tok.vocab_size,
  )
  assert out == tok.decode(want.tokens[0]) + "\n" and len(out) > 1  # some text was printed
  assert _tree(run2) == before


def test_a_prompts_file_saved_with_a_byte_order_mark(tmp_path):
  """A file saved by a Windows editor (BOM, CRLF): the BOM was the first prompt's start."""
  f = tmp_path / "prompts.txt"
  f.write_bytes("\ufeffimport os\r\n\r\nclass A:\r\n".encode())
  assert read_prompts(["def"], str(f)) == ["def", "import os", "class A:"]


def test_cli_several_prompts_and_a_file(run2, capsys, tmp_path):
  f = tmp_path / "prompts.txt"
  f.write_text("import os\n\nclass A:\n")
  code, out, err = run_cli(
    capsys,
    "generate",
    "--workdir",
    str(run2),
    "--prompt",
    "def",
    "--prompts-file",
    str(f),
    "--max-new-tokens",
    "5",
    "--temperature",
    "0.8",
    "--top-k",
    "20",
    "--step",
    "1",
  )
  assert code == 0, err
  labels = [line for line in out.splitlines() if line.startswith("--- prompt ")]
  assert labels == ["--- prompt 1: 'def'", "--- prompt 2: 'import os'", "--- prompt 3: 'class A:'"]
  prefill, _ = map(int, TIMING.search(err).groups())
  assert prefill == 3 * 1 + len("def") + len("import os") + len("class A:")


def test_load_run_picks_steps_and_falls_back_read_only(run2, tmp_path, caplog):
  p1, p2 = load_run(run2, 1), load_run(run2)
  assert (p1.step, p2.step) == (1, 2)
  assert not np.allclose(p1.params["embed"], p2.params["embed"])  # two different checkpoints
  # An unreadable newest step: step 1 is used, and nothing is moved.
  workdir = tmp_path / "run"
  shutil.copytree(run2, workdir)
  (workdir / "checkpoints" / "2" / "state" / "_METADATA").unlink()
  before = _tree(workdir)
  loaded = load_run(workdir)
  assert loaded.step == 1
  np.testing.assert_array_equal(loaded.params["embed"], p1.params["embed"])
  assert "checkpoint step 2" in caplog.text and "is unreadable" in caplog.text
  assert "reading the params of step 1, the newest readable checkpoint" in caplog.text
  assert _tree(workdir) == before


def _copy_with_config(run2, tmp_path, **changes):
  """A copy of the run whose recorded config has ``section.key`` values changed."""
  workdir = tmp_path / "changed"
  shutil.copytree(run2, workdir)
  record = json.loads((workdir / "config.json").read_text())
  for key, value in changes.items():
    section, name = key.split("__")
    record["config"][section][name] = value
  (workdir / "config.json").write_text(json.dumps(record))
  return workdir


@pytest.mark.parametrize(
  "make_workdir, extra, match",
  [
    (lambda run, tmp: tmp, [], "holds no run"),
    (lambda run, tmp: tmp / "missing", [], "does not exist"),
    (
      lambda run, tmp: (
        shutil.copy(run / "config.json", tmp / "config.json") and tmp  # no checkpoints
      ),
      [],
      "holds no checkpoints",
    ),
    (lambda run, tmp: run, ["--step", "4"], r"--step 4: .* holds steps \[1, 2\]"),
    (lambda run, tmp: run, ["--step", "-1"], "--step must be an int >= 0"),
    (
      lambda run, tmp: _copy_with_config(run, tmp, model__attention="lla"),
      [],
      "'lla' model; generate decodes parallax and softmax models only",
    ),
    (
      lambda run, tmp: _copy_with_config(
        run,
        tmp,
        data__source="linreg",
        model__input_dim=9,
        model__output_dim=1,
        model__tie_embeddings=False,
      ),
      [],
      "holds a regression model",
    ),
    (lambda run, tmp: run, ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (lambda run, tmp: run, ["--temperature", "-0.5"], r"temperature=-0.5 \(--temperature\)"),
    (lambda run, tmp: run, ["--top-p", "1.5"], r"top_p=1.5 \(--top-p\)"),
    (lambda run, tmp: run, ["--top-k", "5"], r"--top-k/--top-p .* --temperature 0 .* greedy"),
    (lambda run, tmp: run, ["--seed", "3"], r"--seed picks .* --temperature 0 .* greedy"),
    (
      lambda run, tmp: run,
      ["--temperature", "1", "--seed", str(2**64)],  # past int64: jax.random.key raised
      r"seed=18446744073709551616 \(--seed\) must be an int in 0 .. 4294967295",
    ),
    (
      lambda run, tmp: run,
      ["--config.model.d_model=96"],
      r"cannot take these config changes .*model.d_model .* drop these overrides",
    ),
  ],
  ids=[
    "not-a-run",
    "missing",
    "no-checkpoint",
    "no-such-step",
    "negative-step",
    "lla",
    "regression",
    "max-new-tokens",
    "temperature",
    "top-p",
    "top-k-greedy",
    "seed-greedy",
    "seed-range",
    "fixed-override",
  ],
)
def test_cli_user_errors(run2, tmp_path, capsys, make_workdir, extra, match):
  workdir = make_workdir(run2, tmp_path)
  before = _tree(run2)
  argv = ["generate", "--workdir", str(workdir), "--prompt", "x", *extra]
  code, _, err = run_cli(capsys, *argv)
  assert code == 2
  assert re.search(match, one_line_error(err)), err
  assert _tree(run2) == before


def test_cli_prompt_errors(run2, capsys, tmp_path):
  code, _, err = run_cli(capsys, "generate", "--workdir", str(run2))
  assert code == 2 and "no prompt: give --prompt" in one_line_error(err)
  code, _, err = run_cli(capsys, "generate", "--workdir", str(run2), "--prompt", "")
  assert code == 2 and "prompt 1 ('') encodes to no tokens" in one_line_error(err)
  missing = str(tmp_path / "none.txt")
  code, _, err = run_cli(capsys, "generate", "--workdir", str(run2), "--prompts-file", missing)
  assert code == 2 and "--prompts-file" in one_line_error(err)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="names the CPU backend")
def test_an_explicit_path_this_backend_cannot_run_is_refused_then_overridden(
  run2, tmp_path, capsys
):
  """A run recorded with a GPU kernel (as one trained on the H200 is) is refused on CPU in one
  line naming the override, before anything is read; with the override it generates."""
  workdir = _copy_with_config(run2, tmp_path, model__attention_impl="pallas_mosaic_gpu")
  before = _tree(workdir)
  argv = ["generate", "--workdir", str(workdir), "--prompt", "x", "--max-new-tokens", "2"]
  code, _, err = run_cli(capsys, *argv)
  assert code == 2 and re.search(
    r"model.attention_impl='pallas_mosaic_gpu' runs on gpu, not on this machine's 'cpu' "
    r"backend; pass --config.model.attention_impl=None",
    one_line_error(err),
  )
  code, out, err = run_cli(capsys, *argv, "--config.model.attention_impl=None")
  assert code == 0 and out.strip(), err
  assert _tree(workdir) == before
