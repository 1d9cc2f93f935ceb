"""``import-hf``: a Hugging Face Qwen3 directory -> a run workdir (step-0 checkpoint).

``import_hf(src, workdir)`` checks everything before writing: the config (``hf_config``), every
tensor name and shape against ``hf_names.tensor_table`` (a missing, unknown or misshapen tensor
is a ``UserError`` naming it) and the tokenizer. Then it streams the tensors one at a time
(``safetensors_io``: lazy reads), converts each to its NNX layout and param dtype and puts it
straight onto the mesh with the params' shardings (``train.program.Program``), so the host holds
one tensor at a time, never the model. It writes into the workdir:

- ``tokenizer.json`` (copied; ``data.tokenizer`` points at it, and the run reads it as its
  own copy: a moved workdir still finds it, ``tokenizers.keep_run_copy``),
- ``checkpoints/0``: a full ``TrainState`` (params, fresh optimizer state, step 0), so
  ``train``, ``eval`` and ``generate`` run on the workdir itself,
- ``params``: the params-only checkpoint (``--config.checkpoint.init_from=W/params``),
- ``hf_import_config.py``: ``get_config()`` returning the run's config (``train --config``),
- ``config.json`` last (``run_record``): a workdir with it holds a complete import; a failure
  before that removes what the import wrote.

Attention: "softmax" is Qwen3 itself; "parallax" adds ``r_proj``/``r_norm``: ``r_init="zeros"``
(W_R = 0, r_norm = 1: exactly the softmax function) or ``"like_q"`` (copies of q's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from parallax_jax import environment
from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.interop import hf_config, hf_names
from parallax_jax.interop.safetensors_io import SafetensorsReader
from parallax_jax.model import ModelConfig
from parallax_jax.train import run_record

log = logging.getLogger("parallax_jax")

TOKENIZER = "tokenizer.json"
CONFIG_FILE = "hf_import_config.py"
# ModelConfig fields the checkpoint fixes: an override of one is refused.
FUNCTION_FIELDS = (
  "vocab_size",
  "d_model",
  "num_layers",
  "num_heads",
  "num_kv_heads",
  "head_dim",
  "mlp_dim",
  "attention",
  "r_init",
  "qk_norm",
  "tie_embeddings",
  "tied_head_scale",  # the import converts the final norm for "rsqrt_d" (hf_names)
  "rope_theta",
  "norm_eps",
  "window_size",
  "input_dim",
  "output_dim",
)
_CONFIG_PY = '''"""The config of the run that `parallax-jax import-hf` imported here (config.json).

  parallax-jax train --config {name} --workdir <this directory> [--config.KEY=VALUE ...]
"""

import json
from pathlib import Path

import ml_collections


def get_config():
  record = json.loads((Path(__file__).parent / "config.json").read_text())
  return ml_collections.ConfigDict(record["config"])
'''


@dataclasses.dataclass(frozen=True)
class ImportResult:
  workdir: Path
  model: ModelConfig
  params_path: Path  # W/params
  config_path: Path  # W/hf_import_config.py


def _listed(names, limit: int = 5) -> str:
  names = sorted(names)
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _check_workdir(workdir: Path, src_tokenizer: Path | None) -> None:
  """Refuses a file, a run, or a ``tokenizer.json`` the copy of ``src_tokenizer`` would replace."""
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {str(workdir)!r} is a file, not a directory")
  stray = workdir / TOKENIZER
  if (
    src_tokenizer is not None
    and stray.exists()
    and (not stray.is_file() or stray.read_bytes() != src_tokenizer.read_bytes())
  ):
    raise UserError(
      f"--workdir {str(workdir)!r} holds a {TOKENIZER} other than --from's, which the import "
      "would replace; import into a new or empty directory, or move that file away"
    )
  taken = [n for n in ("config.json", "checkpoints", "params") if (workdir / n).exists()]
  if taken:
    raise UserError(
      f"--workdir {str(workdir)!r} already holds a run ({', '.join(taken)}); import into a new "
      "or empty directory"
    )


def run_config(
  model: ModelConfig, tokenizer: str, base: ml_collections.ConfigDict | None, overrides=()
) -> ml_collections.ConfigDict:
  """The run's config: ``base`` (default: ``base_config()``) with the checkpoint's model fields,
  the tokenizer, then ``overrides``; an override of a field the checkpoint fixes is refused."""
  from parallax_jax.train.config import apply_overrides
  from parallax_jax.train.defaults import base_config

  cfg = base_config() if base is None else base
  fixed = {f: getattr(model, f) for f in FUNCTION_FIELDS}
  with cfg.ignore_type():
    cfg.model.update(fixed)
    cfg.data.tokenizer = tokenizer
  apply_overrides(cfg, overrides)
  changed = [f"model.{f}" for f, v in fixed.items() if cfg.model[f] != v]
  changed += ["data.tokenizer"] if cfg.data.tokenizer != tokenizer else []
  if changed:
    raise UserError(
      f"import-hf: {', '.join(changed)} are fixed by the checkpoint (its config.json, "
      "--attention, --r-init and its tokenizer); drop these overrides"
    )
  return cfg


def _check_tensors(reader: SafetensorsReader, table: list[hf_names.TensorMap], tied: bool):
  """Names and shapes of the source against the table (a tied head left in the file is
  accepted when it equals the embedding: it is not read)."""
  have, want = set(reader.names()), {m.hf_name for m in table}
  head = hf_names.QWEN3_NAMES["head"]
  if tied and head in have:
    embed = hf_names.QWEN3_NAMES["embed"]
    if embed in have and np.array_equal(reader.get(head), reader.get(embed)):
      log.info("%s equals the embedding (tied): not imported separately", head)
      have.discard(head)
    else:
      raise UserError(
        f"{reader.directory}: tie_word_embeddings is true but {head} is present and differs "
        "from the embedding; set tie_word_embeddings false in config.json or drop the tensor"
      )
  missing, unknown = want - have, have - want
  if missing:
    raise UserError(f"{reader.directory}: missing tensor(s) {_listed(missing)}")
  if unknown:
    raise UserError(
      f"{reader.directory}: unknown tensor(s) {_listed(unknown)} (not part of a dense Qwen3 "
      "model of this config.json; nothing is dropped silently)"
    )
  for m in table:
    shape = reader.shape(m.hf_name)
    if shape != m.hf_shape:
      raise UserError(
        f"{reader.directory}: tensor {m.hf_name} has shape {list(shape)}, but config.json "
        f"gives {list(m.hf_shape)}"
      )


def _put(value: np.ndarray, sharding) -> jax.Array:
  """One host array onto ``sharding`` (each device receives only its shard)."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def read_params(
  reader: SafetensorsReader, model: ModelConfig, shardings: dict, *, r_init: str
) -> dict:
  """The params pure dict of ``model`` from ``reader``, tensor by tensor onto ``shardings``."""
  softmax = model.with_attention("softmax")
  dtype = np.dtype(jnp.dtype(model.param_dtype))
  params: dict = {}
  for m in hf_names.tensor_table(softmax):
    value = m.to_nnx(reader.get(m.hf_name)).astype(dtype)
    hf_names.set_path(params, m.path, _put(value, hf_names.get_path(shardings, m.path)))
    if model.uses_r and m.path[-2:] in (("q_proj", "kernel"), ("q_norm", "scale")):
      r_path = (
        *m.path[:-2],
        "r" + m.path[-2][1:],
        m.path[-1],
      )  # q_proj -> r_proj, q_norm -> r_norm
      if r_init == "like_q":
        r_value = value
      elif m.path[-1] == "kernel":
        r_value = np.zeros_like(value)  # W_R = 0: exactly softmax attention
      else:
        r_value = np.ones_like(value)
      hf_names.set_path(params, r_path, _put(r_value, hf_names.get_path(shardings, r_path)))
    del value
  return params


def import_hf(
  src: str | Path,
  workdir: str | Path,
  *,
  attention: str = "parallax",
  r_init: str = "zeros",
  base: ml_collections.ConfigDict | None = None,
  overrides=(),
  byte_tokenizer: bool = False,
) -> ImportResult:
  """Imports the Qwen3 checkpoint in ``src`` into a new run in ``workdir`` (module docstring).

  ``byte_tokenizer``: ``src`` has no tokenizer file and its ids are UTF-8 bytes (the byte
  tokenizer's; ``export-hf`` of a byte-tokenizer run writes none): the run uses ``"byte"``.
  """
  from parallax_jax.data import make_source
  from parallax_jax.data.tokenizers import make_tokenizer
  from parallax_jax.train.config import resolve

  src, workdir = Path(src), Path(workdir).absolute()
  if not src.is_dir():
    raise UserFileNotFoundError(f"--from {str(src)!r} is not a directory")
  if not (src / "config.json").is_file():
    raise UserFileNotFoundError(f"--from {str(src)!r} has no config.json")
  has_tokenizer = (src / TOKENIZER).is_file()
  if not has_tokenizer and not byte_tokenizer:
    raise UserFileNotFoundError(
      f"--from {str(src)!r} has no {TOKENIZER} (an export of a byte-tokenizer run has none: "
      "pass --byte-tokenizer to import it with UTF-8 byte ids)"
    )
  if has_tokenizer and byte_tokenizer:
    raise UserError(f"--byte-tokenizer: --from {str(src)!r} has its own {TOKENIZER}; drop the flag")
  if attention not in ("parallax", "softmax"):
    raise UserError(f"--attention must be 'parallax' or 'softmax', got {attention!r}")
  if r_init not in ("zeros", "like_q"):
    raise UserError(f"--r-init must be 'zeros' or 'like_q', got {r_init!r}")
  _check_workdir(workdir, src / TOKENIZER if has_tokenizer else None)
  try:
    hf = json.loads((src / "config.json").read_text())
  except ValueError as e:
    raise UserError(f"{src / 'config.json'} is not JSON: {e}") from e
  if not isinstance(hf, dict):
    raise UserError(f"{src / 'config.json'} is not a JSON object (a model config's fields)")
  model = hf_config.model_config_from_hf(hf, attention=attention, r_init=r_init)
  tokenizer_path = workdir / TOKENIZER
  cfg = run_config(model, "byte" if byte_tokenizer else str(tokenizer_path), base, overrides)
  exp = resolve(cfg, jax.device_count())
  model = exp.model  # with any allowed overrides (compute_dtype, remat, ...)
  tokenizer = make_tokenizer("byte" if byte_tokenizer else str(src / TOKENIZER))
  if tokenizer.vocab_size > model.vocab_size:
    raise UserError(
      f"{src / TOKENIZER} has {tokenizer.vocab_size} ids but config.json vocab_size="
      f"{model.vocab_size}: the tokenizer does not belong to this model"
    )
  if not exp.data.is_task:  # eval, train and generate read it: checked now
    make_source(exp.data, tokenizer)
  with SafetensorsReader(src) as reader:
    # The source is a softmax Qwen3: checked against the model without r.
    softmax = model.with_attention("softmax")
    _check_tensors(reader, hf_names.tensor_table(softmax), model.tie_embeddings)
    # Everything is valid: write. A failure from here on (a full disk at the checkpoint)
    # removes what this import wrote: a half import's `checkpoints` would make the retry
    # refuse the workdir as holding a run, and `train` would resume from it.
    written = (
      [workdir]
      if not workdir.exists()
      else [
        workdir / n
        for n in (TOKENIZER, "checkpoints", "params", CONFIG_FILE, "config.json")
        if not (workdir / n).exists()
      ]
    )
    try:
      return _write(src, workdir, exp, cfg, hf, reader, model, byte_tokenizer, r_init)
    except BaseException:
      for path in written:
        if path.is_dir():
          shutil.rmtree(path, ignore_errors=True)
        else:
          path.unlink(missing_ok=True)
      raise


def _write(src, workdir, exp, cfg, hf, reader, model, byte_tokenizer, r_init) -> ImportResult:
  """Writes the import into ``workdir`` (all checked by ``import_hf``; config.json last)."""
  from parallax_jax.train.checkpoint import Checkpointer, save_params
  from parallax_jax.train.program import Program
  from parallax_jax.train.step import TrainState

  workdir.mkdir(parents=True, exist_ok=True)
  if not byte_tokenizer:
    shutil.copyfile(src / TOKENIZER, workdir / TOKENIZER)
  program = Program(exp)
  params = read_params(reader, model, program.state_sharding.params, r_init=r_init)
  state = TrainState(
    step=_put(np.zeros((), np.int32), program.state_sharding.step),
    params=params,
    opt_state=program.opt_init(params),
  )
  with Checkpointer(workdir / "checkpoints", exp.checkpoint) as ckpt:
    ckpt.save(0, state, None)
  params_path = workdir / "params"
  save_params(params_path, state.params)
  config_path = workdir / CONFIG_FILE
  config_path.write_text(_CONFIG_PY.format(name=CONFIG_FILE))
  extra = {
    "num_params": model.num_params(),
    "devices": jax.device_count(),
    "environment": environment.describe(),
    "hf_import": {"source": str(src.absolute()), "config": hf, "r_init": r_init},
  }
  run_record.record_start(workdir, cfg.to_dict(), extra)
  return ImportResult(workdir, model, params_path, config_path)
