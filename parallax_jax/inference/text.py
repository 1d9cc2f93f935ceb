"""Text in, text out: prompts from the command line or a file, encoding with the run's tokenizer,
and streaming the decoded continuation (``parallax-jax generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.inference.generate import GenerationResult, generate
from parallax_jax.inference.loading import LoadedRun
from parallax_jax.inference.sampling import SamplingConfig

REPLACEMENT = "\ufffd"  # what a token sequence cut inside a UTF-8 character decodes to


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
  """``--prompt`` values, then the non-empty lines of ``--prompts-file``; at least one."""
  texts = list(prompts or [])
  if prompts_file is not None:
    path = Path(prompts_file)
    if not path.is_file():
      raise UserFileNotFoundError(f"--prompts-file {prompts_file!r} is not a file")
    # utf-8-sig: a byte-order mark (Windows editors) is not the first prompt's first character.
    texts += [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line]
  if not texts:
    raise UserError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
  return texts


def encode_prompts(run: LoadedRun, texts: list[str]) -> list[list[int]]:
  """Token ids per prompt; prefixed with EOS when the run trained with ``data.add_eos`` (its
  documents start after an EOS, so a prompt reads as a document's start)."""
  out = []
  for i, text in enumerate(texts):
    ids = run.tokenizer.encode_prompt(text)  # a chat marker in a prompt is its token
    if not ids:
      raise UserError(
        f"prompt {i + 1} ({text!r}) encodes to no tokens with {run.tokenizer!r}; give a "
        "non-empty prompt"
      )
    out.append(([run.tokenizer.eos_id] if run.add_eos else []) + list(ids))
  return out


class TextStream:
  """Prints one row's continuation as its tokens arrive.

  Decodes the whole continuation each time and prints what was added, holding back a trailing
  U+FFFD (a character whose bytes have not all arrived yet); stops at EOS."""

  def __init__(self, tokenizer, out: TextIO):
    self.tokenizer, self.out = tokenizer, out
    self.ids: list[int] = []
    self.printed = ""
    self.ended = False

  def add(self, ids) -> None:
    for i in np.asarray(ids).tolist():
      if self.ended or i == self.tokenizer.eos_id:
        self.ended = True
        break
      self.ids.append(i)
    self._flush(final=False)

  def close(self) -> None:
    self._flush(final=True)
    self.out.write("\n")
    self.out.flush()

  def _flush(self, final: bool) -> None:
    text = self.tokenizer.decode(self.ids)
    if not final:
      text = text.rstrip(REPLACEMENT)
    if text.startswith(self.printed) and len(text) > len(self.printed):
      self.out.write(text[len(self.printed) :])
      self.out.flush()
      self.printed = text


def generate_text(
  run: LoadedRun,
  texts: list[str],
  *,
  max_new_tokens: int,
  sampling: SamplingConfig,
  seed: int,
  chunk_tokens: int,
  out: TextIO,
) -> GenerationResult:
  """Generates a continuation of each prompt and writes it to ``out``: one prompt's as its
  tokens arrive, several prompts' each when all are done, under a ``--- prompt N: ...`` line."""
  prompts = encode_prompts(run, texts)
  stream = TextStream(run.tokenizer, out) if len(prompts) == 1 else None
  result = generate(
    (run.graphdef, run.params),
    prompts,
    max_new_tokens=max_new_tokens,
    sampling=sampling,
    eos_id=run.tokenizer.eos_id,
    seed=seed,
    vocab_size=run.tokenizer.vocab_size,
    chunk_tokens=chunk_tokens,
    on_tokens=None if stream is None else (lambda block: stream.add(block[0])),
  )
  if stream is not None:
    stream.close()
    return result
  for i, (text, ids) in enumerate(zip(texts, result.tokens, strict=True)):
    out.write(f"--- prompt {i + 1}: {text!r}\n{run.tokenizer.decode(ids)}\n")
  out.flush()
  return result
