"""Batched generation with the KV cache: jitted prefill, then jitted chunks of decode steps
(docs/design.md §13.5).

The prompts are right-padded into one batch. Prefill fills the cache and samples each row's
first token; then a ``lax.scan`` of ``chunk_tokens`` decode steps runs per call, with the cache
donated (updated in place). The host reads each chunk's tokens, hands them to ``on_tokens`` and
stops once every row has produced EOS or ``max_new_tokens`` tokens; the extra tokens of the
last chunk are discarded. Each row draws apart from the others with its own stream: prompt
``b`` under one int ``seed`` has ``fold_in(key(seed), b)``, under a list of seeds
``fold_in(key(seeds[b]), 0)``; step ``s`` (0: the token sampled from the prefill logits) folds
in ``s``. So a row's text depends on its prompt, its stream and nothing else: not on the other
prompts, the batch size or ``chunk_tokens``; a prompt repeated under one seed draws new samples
(``b`` differs), and a prompt given its own seed in a list reproduces ``generate([p], seed=s)``
in any batch.

Compilation is kept apart from the timings: the two functions are compiled ahead of time
(``jit(...).lower(...).compile()``) once per model graph, parameter shapes, batch, prompt
width, cache length, chunk and setting, and cached (``_compiled``); a fresh pair gets one
warm-up run. Both count as ``compile_s``; ``prefill_s`` and ``decode_s`` time only later calls.
The prompt width and the cache length are rounded up (``PROMPT_MULTIPLE``,
``CACHE_MULTIPLE``), so nearby lengths share a compile.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from parallax_jax.config_utils import SEED_MAX
from parallax_jax.errors import UserError
from parallax_jax.inference.sampling import SamplingConfig, is_number, sample

CACHE_MULTIPLE = 128  # cache slots are rounded up to this: nearby lengths share one compile
PROMPT_MULTIPLE = 64  # the padded prompt width likewise (at most the cache length)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
  """What ``generate`` produced and how fast.

  Attributes:
    tokens: per prompt, the generated ids without the prompt, cut before the first EOS (EOS
      itself is not included).
    stopped_at_eos: per prompt, whether EOS ended it (else it reached ``max_new_tokens``).
    prompt_tokens: prompt tokens prefilled (the sum of the prompt lengths, padding excluded).
    decode_tokens: tokens produced by decode steps for rows still running (EOS included; the
      first token of each row comes from prefill, and finished rows' filler is excluded).
    prefill_s, decode_s: seconds in the compiled prefill call (waited for) and in the decode
      chunk calls (dispatch to host read; ``on_tokens`` excluded).
    compile_s: seconds compiling in this call (0 when an earlier call had the same shapes).
  """

  tokens: list[list[int]]
  stopped_at_eos: list[bool]
  prompt_tokens: int
  decode_tokens: int
  prefill_s: float
  decode_s: float
  compile_s: float

  @property
  def prefill_tokens_per_s(self) -> float:
    return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

  @property
  def decode_tokens_per_s(self) -> float:
    return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

  def timing_line(self) -> str:
    """``prefill: N tokens in X s (Y tokens/s); decode: M tokens in Z s (W tokens/s)``."""
    return (
      f"prefill: {self.prompt_tokens} tokens in {self.prefill_s:.3f} s "
      f"({self.prefill_tokens_per_s:.0f} tokens/s); decode: {self.decode_tokens} tokens in "
      f"{self.decode_s:.3f} s ({self.decode_tokens_per_s:.0f} tokens/s)"
    )


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _prefill(
  graphdef, max_len, prefill_chunk, sampling, vocab_size, params, tokens_BT, lengths_B, keys_B
):
  """Fills an empty cache with the right-padded prompts ``[B, T]``; samples step 0's token
  (row ``b`` with its own key ``keys_B[b]``)."""
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(tokens_BT.shape[0], max_len)
  logits_BV, cache = model.prefill(tokens_BT, lengths_B, cache, chunk_size=prefill_chunk)
  first_B = sample(logits_BV, _step_keys(keys_B, 0), sampling, vocab_size=vocab_size)
  return first_B, cache


def _step_keys(keys_B, step):
  """Each row's key for one step: ``fold_in(keys_B[b], step)``."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)


def _decode_chunk(
  graphdef, steps, sampling, vocab_size, eos_id, params, cache, last_B, done_B, keys_B, step
):
  """``steps`` decode steps: ``(cache, last token [B], done [B], next step, tokens [B, steps])``.
  A row that has produced EOS keeps emitting EOS (its cache writes are never read)."""

  def body(carry, _):
    cache, last_B, done_B, step = carry
    logits_BV, cache = nnx.merge(graphdef, params).decode_step(last_B, cache)
    new_B = sample(logits_BV, _step_keys(keys_B, step), sampling, vocab_size=vocab_size)
    if eos_id is not None:
      new_B = jnp.where(done_B, eos_id, new_B)
      done_B = done_B | (new_B == eos_id)
    return (cache, new_B, done_B, step + 1), new_B

  (cache, last_B, done_B, step), tokens_CB = jax.lax.scan(
    body, (cache, last_B, done_B, step), length=steps
  )
  return cache, last_B, done_B, step, tokens_CB.T


def _signature(tree):
  """Hashable shapes, dtypes and shardings of a pytree of arrays."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((x.shape, str(x.dtype), x.sharding) for x in leaves)


@functools.lru_cache(maxsize=16)
def _compiled(
  graphdef, params_sig, batch, width, max_len, steps, prefill_chunk, sampling, vocab_size, eos_id
):
  """The compiled prefill and decode chunk for one shape and setting (cached)."""
  treedef, leaves = params_sig
  params = jax.tree.unflatten(
    treedef, [jax.ShapeDtypeStruct(s, d, sharding=sh) for s, d, sh in leaves]
  )
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))  # one per row
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  prefill = jax.jit(
    functools.partial(_prefill, graphdef, max_len, prefill_chunk, sampling, vocab_size)
  ).lower(params, i32(batch, width), i32(batch), keys)
  cache = prefill.out_info[1]
  cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), cache)
  chunk = jax.jit(
    functools.partial(_decode_chunk, graphdef, steps, sampling, vocab_size, eos_id),
    donate_argnums=(1,),  # the cache: updated in place
  ).lower(params, cache, i32(batch), jax.ShapeDtypeStruct((batch,), jnp.bool_), keys, i32())
  return prefill.compile(), chunk.compile()


def _split_model(model):
  if isinstance(model, nnx.Module):
    return nnx.split(model)
  if isinstance(model, tuple) and len(model) == 2:
    return model
  raise TypeError(
    f"model must be an nnx Transformer or a (graphdef, params) pair, got {type(model).__name__}"
  )


def _check_prompts(prompts, vocab: int, source: str) -> list[list[int]]:
  """The prompts as int lists; ``UserError`` for an empty one or an id outside
  ``0 .. vocab - 1`` (``source`` names where ``vocab`` came from)."""
  if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
    raise UserError("prompts must be a non-empty list of token-id lists (one per prompt)")
  out = []
  for i, p in enumerate(prompts):
    ids = np.asarray(p)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
      raise UserError(f"prompts[{i}] must be a non-empty list of int token ids, got {p!r}")
    if ids.min() < 0 or ids.max() >= vocab:
      raise UserError(f"prompts[{i}] has ids outside 0 .. {vocab - 1} ({source})")
    out.append([int(t) for t in ids])
  return out


def check_seed(seed) -> int:
  """``seed`` as an int; a ``UserError`` unless it is an int in ``0 .. SEED_MAX``: a larger or
  negative one would draw another seed's samples (past int64, ``jax.random.key`` raises)."""
  if not is_number(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
    raise UserError(
      f"seed={seed!r} (--seed) must be an int in 0 .. {SEED_MAX}: the PRNG key keeps 32 bits, "
      "so another seed would repeat one of those"
    )
  return int(seed)


def _row_streams(seed, batch: int) -> list[tuple[int, int]]:
  """Each prompt's ``(seed, stream index)``: ``(seed, b)`` for one int ``seed`` (repeats of a
  prompt draw anew), ``(seed[b], 0)`` for a list of ``batch`` seeds (prompt ``b`` as alone)."""
  if isinstance(seed, np.ndarray):
    seed = seed.tolist()
  if isinstance(seed, str | bytes) or not isinstance(seed, Sequence):
    one = check_seed(seed)
    return [(one, b) for b in range(batch)]
  if len(seed) != batch:
    raise UserError(
      f"seed has {len(seed)} values for {batch} prompt(s); give one int for all or one per prompt"
    )
  return [(check_seed(s), 0) for s in seed]


def _positive_int(name: str, value) -> int:
  if not is_number(value, numbers.Integral) or value < 1:
    raise UserError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def device_memory_bytes() -> int | None:
  """What one device holds: its allocator's limit (GPU, TPU), else the host's RAM (CPU);
  None if neither is known."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def _check_cache_fits(model, batch: int, max_len: int, max_new_tokens: int) -> None:
  """The KV cache holds ``max_len`` positions per row from the start (the decode's shapes are
  fixed), whenever EOS comes: refuses, in one line, one larger than the device (it was an
  out-of-memory traceback after the compile)."""
  shapes = jax.eval_shape(lambda: model.init_cache(batch, max_len))
  need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  have = device_memory_bytes()
  if have is not None and need > have:
    raise UserError(
      f"max_new_tokens={max_new_tokens}: the KV cache for {batch} prompt(s) of up to "
      f"{max_len} positions needs {need / 2**30:.1f} GiB, more than this device's "
      f"{have / 2**30:.1f} GiB; ask for fewer new tokens or fewer prompts at once"
    )


def generate(
  model,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  sampling: SamplingConfig | None = None,
  eos_id: int | None = None,
  seed: int | Sequence[int] = 0,
  vocab_size: int | None = None,
  chunk_tokens: int = 16,
  prefill_chunk: int | None = None,
  on_tokens: Callable[[np.ndarray], None] | None = None,
) -> GenerationResult:
  """Continues each prompt by up to ``max_new_tokens`` tokens.

  Args:
    model: a ``Transformer`` (nnx) or its ``(graphdef, params)``.
    prompts: token ids per prompt (each non-empty); any lengths.
    max_new_tokens: tokens to generate per prompt at most (>= 1).
    sampling: ``SamplingConfig``; None: greedy.
    eos_id: a row stops after producing it; None: every row runs to ``max_new_tokens``.
    seed: the PRNG seed (with ``sampling.temperature > 0``), in ``0 .. SEED_MAX``: one int
      (prompt ``b`` samples from stream ``b`` of it: a repeated prompt draws new samples, and
      no row depends on the other prompts or the batch size), or a list with one per prompt
      (each prompt as ``generate([p], seed=s)`` alone, in any batch or place).
    vocab_size: the tokenizer's vocabulary; larger ids (table padding) are never sampled.
    chunk_tokens: decode steps per jitted call (between host reads); the output does not
      depend on it.
    prefill_chunk: prompt positions per prefill chunk (``Transformer.prefill``); None: one.
    on_tokens: called with each new block of tokens, int32 ``[B, n]`` (the first call holds
      the token from prefill); rows that have produced EOS hold EOS afterwards.

  Returns:
    ``GenerationResult``.
  """
  graphdef, params = _split_model(model)
  merged = nnx.merge(graphdef, params)
  table = merged.cfg.vocab_size  # rows of the (padded) embedding table
  max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
  chunk_tokens = _positive_int("chunk_tokens", chunk_tokens)
  if prefill_chunk is not None:  # (Transformer.prefill's ValueError came after the checks)
    prefill_chunk = _positive_int("prefill_chunk", prefill_chunk)
  sampling = SamplingConfig() if sampling is None else sampling
  if not isinstance(sampling, SamplingConfig):
    raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
  if vocab_size is not None:  # (a float one masked the logits at vocab_size=100.5: 101 ids)
    if not is_number(vocab_size, numbers.Integral) or not 1 <= vocab_size <= table:
      raise UserError(
        f"vocab_size={vocab_size!r} must be an int in 1 .. {table} (model.vocab_size)"
      )
    vocab_size = int(vocab_size)
  # A tokenizer's (vocab_size) prompt never holds an id of the table's padding: those rows of
  # the embedding were never trained.
  sampled = table if vocab_size is None else vocab_size  # ids a step can produce
  source = "vocab_size" if vocab_size is not None else "model.vocab_size"
  prompts = _check_prompts(prompts, sampled, source)
  streams = _row_streams(seed, len(prompts))
  if eos_id is not None:
    if not is_number(eos_id, numbers.Integral):  # (a float one failed inside the scan trace)
      raise UserError(f"eos_id={eos_id!r} must be an int token id, or None for no EOS")
    if not 0 <= eos_id < sampled:  # (else no row would ever stop)
      raise UserError(
        f"eos_id={eos_id} lies outside the ids that can be sampled, 0 .. {sampled - 1} ({source})"
      )
    eos_id = int(eos_id)

  lengths = [len(p) for p in prompts]
  batch, longest = len(prompts), max(lengths)
  steps = min(chunk_tokens, max_new_tokens - 1) or 1  # no longer chunk than the decode needs
  # Slots for every decode step that runs, the last chunk's discarded ones included (a row
  # that fills its cache would have its writes dropped: the kept tokens must never see that).
  decode_steps = round_up(max_new_tokens - 1, steps)
  max_len = round_up(longest + decode_steps, CACHE_MULTIPLE)
  width = min(round_up(longest, PROMPT_MULTIPLE), max_len)
  _check_cache_fits(merged, batch, max_len, max_new_tokens)
  tokens_BT = np.zeros((batch, width), np.int32)
  for b, p in enumerate(prompts):
    tokens_BT[b, : len(p)] = p

  tokens_BT, lengths_B = jnp.asarray(tokens_BT), jnp.asarray(lengths, jnp.int32)
  key = jnp.stack([jax.random.fold_in(jax.random.key(s), i) for s, i in streams])  # [B]
  first_step = jnp.int32(1)
  t0 = time.perf_counter()
  misses = _compiled.cache_info().misses
  prefill, chunk = _compiled(
    graphdef,
    _signature(params),
    batch,
    width,
    max_len,
    steps,
    prefill_chunk,
    sampling,
    vocab_size,
    eos_id,
  )
  compile_s = 0.0
  if _compiled.cache_info().misses > misses:
    # A fresh executable's first run is slower (runtime set-up): one warm-up run of each
    # (prefill, then one chunk on its cache) is counted as compile time, not generation.
    first_B, cache = prefill(params, tokens_BT, lengths_B, key)
    jax.block_until_ready(chunk(params, cache, first_B, first_B < 0, key, first_step))
    compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  last_B, cache = jax.block_until_ready(prefill(params, tokens_BT, lengths_B, key))
  prefill_s = time.perf_counter() - t0
  blocks = [np.asarray(last_B)[:, None]]
  if on_tokens is not None:
    on_tokens(blocks[0])
  done_B = last_B == (-1 if eos_id is None else eos_id)
  made, step, decode_s = 1, first_step, 0.0
  while made < max_new_tokens and not np.all(np.asarray(done_B)):
    t0 = time.perf_counter()
    cache, last_B, done_B, step, new_BC = chunk(params, cache, last_B, done_B, key, step)
    new_BC = np.asarray(new_BC)[:, : max_new_tokens - made]  # the last chunk's extra: dropped
    decode_s += time.perf_counter() - t0
    blocks.append(new_BC)
    made += new_BC.shape[1]
    if on_tokens is not None:
      on_tokens(new_BC)
  del cache

  out_BN = np.concatenate(blocks, axis=1)
  tokens, stopped = [], []
  for row in out_BN:
    hits = np.flatnonzero(row == eos_id) if eos_id is not None else []
    stopped.append(len(hits) > 0)
    tokens.append(row[: hits[0] if len(hits) else len(row)].tolist())
  produced = sum(len(t) + s for t, s in zip(tokens, stopped, strict=True))
  return GenerationResult(
    tokens=tokens,
    stopped_at_eos=stopped,
    prompt_tokens=sum(lengths),
    decode_tokens=produced - batch,
    prefill_s=prefill_s,
    decode_s=decode_s,
    compile_s=compile_s,
  )
