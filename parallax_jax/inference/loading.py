"""A trained run's model, params and tokenizer, read from its workdir (writes nothing there).

``load_run(workdir, step=None)`` reads the run's current config (``run_record``), builds the
tokenizer its data config names, and restores only the params of the latest readable (or the
given) checkpoint onto one device, as a partial Orbax restore: the optimizer state and the
data iterator state stay on disk. Like the trainer's ``restore_latest``, an unreadable newest
step is logged with its reason and the next older one is tried; unlike it, nothing is moved.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx

from parallax_jax.data.tokenizers import Tokenizer, make_tokenizer
from parallax_jax.errors import UserError
from parallax_jax.model import ModelConfig
from parallax_jax.train import run_record
from parallax_jax.train.checkpoint import check_step, restore_run_params
from parallax_jax.train.config import apply_overrides, resolve
from parallax_jax.train.step import model_graphdef

log = logging.getLogger("parallax_jax")

DECODING_ATTENTION = ("parallax", "softmax")  # the kinds with a KV-cache decode path


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """What ``generate`` needs from a run: ``(graphdef, params)`` is the model."""

  workdir: Path
  step: int
  model: ModelConfig
  graphdef: nnx.GraphDef
  params: dict  # pure dict (nnx.to_pure_dict layout), param dtype, on one device
  tokenizer: Tokenizer
  add_eos: bool  # data.add_eos: training documents start after EOS (prompts are prefixed)


def load_run(
  workdir: str | Path, step: int | None = None, overrides: Sequence[str] = ()
) -> LoadedRun:
  """Loads ``workdir``'s model, params (checkpoint ``step``, default: the newest readable one)
  and tokenizer; ``overrides`` (``"model.decode_impl=xla"``) change the run's config for this
  read only, and only its safe keys (``config_keys``). Raises a ``UserError`` naming the fix
  for a directory that holds no run or no checkpoint, a missing step, a run that cannot
  generate text (regression heads, synthetic tasks, attention without a decode path), and an
  explicit attention or decode path this backend cannot run."""

  workdir = Path(workdir)
  cfg = apply_overrides(run_record.load_run_config(workdir), overrides)
  run_record.check(workdir, cfg.to_dict(), reading=True)
  exp = resolve(cfg)
  model, data = exp.model, exp.data
  where = f"--workdir {str(workdir)!r}"
  if model.input_dim or model.output_dim:
    raise UserError(
      f"{where} holds a regression model (data.source={data.source!r}, model.input_dim="
      f"{model.input_dim}, model.output_dim={model.output_dim}); generate needs a language model"
    )
  if data.is_task:
    raise UserError(
      f"{where} was trained on the synthetic task data.source={data.source!r}, which has no "
      "tokenizer; generate needs a run trained on text"
    )
  if model.attention not in DECODING_ATTENTION:
    raise UserError(
      f"{where} holds a model.attention={model.attention!r} model; generate decodes "
      f"{' and '.join(DECODING_ATTENTION)} models only (no KV-cache decode for it)"
    )
  model.check_paths(jax.default_backend(), decode=True)
  tokenizer = make_tokenizer(data.tokenizer, workdir)  # a 'train:bpe:...' one is in workdir
  if tokenizer.vocab_size > model.vocab_size:
    raise UserError(
      f"{where}: the tokenizer {data.tokenizer!r} has {tokenizer.vocab_size} ids but "
      f"model.vocab_size={model.vocab_size}; the run's data config does not match its model"
    )
  check_step(step)
  run_record.require_checkpoints(workdir)
  graphdef, _ = model_graphdef(model)
  step, params = restore_run_params(workdir, exp, step)
  return LoadedRun(workdir, step, model, graphdef, params, tokenizer, data.add_eos)
