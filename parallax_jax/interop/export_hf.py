"""Export a run's params as a Hugging Face directory: Qwen3, or fla's ``parallax`` model type.

``export_hf(workdir, out, fmt=..., step=..., dtype=...)`` reads the run's params (read-only,
latest readable checkpoint or ``step``) and writes ``out/config.json``, the safetensors
(``model.safetensors``; shards plus index past 5 GiB) and the tokenizer (the run's
``tokenizer.json`` / SentencePiece ``.model`` copied; the byte tokenizer has no file, so none is
written). Every tensor goes through ``hf_names.tensor_table``, one at a time. Tensors are written
in the run's ``model.param_dtype`` unless ``dtype`` names another.

Formats:

* ``qwen3`` (``Qwen3ForCausalLM``): softmax attention. A Parallax model exports only when every
  ``r_proj`` is exactly zero (then it computes the softmax function; ``r_norm`` is unused);
  otherwise it is refused: Qwen3 has no tensor for r.
* ``fla-parallax`` (flash-linear-attention's ``ParallaxForCausalLM``, model_type
  ``"parallax"``). What that format holds:

  - config fields: ``hidden_size``, ``num_hidden_layers``, ``num_heads``, ``num_kv_heads``
    (GQA; None = num_heads), ``qkv_bias``, ``qk_norm``, ``window_size`` (None: full causal;
    else key j visible to query i iff ``i - window_size < j <= i``, as ``model.window_size``),
    ``rope_theta``, ``max_position_embeddings``, ``hidden_ratio``/``intermediate_size`` (MLP
    width), ``hidden_act`` ("swish"), ``norm_eps``, ``tie_word_embeddings``, ``vocab_size``,
    ``initializer_range``, token ids, fused-kernel switches, ``attnres_block_size`` (None).
  - there is no head_dim field: fla uses ``head_dim = hidden_size // num_heads`` and an
    ``o_proj`` of ``[hidden, hidden]``, so only models with ``num_heads * head_dim == d_model``
    fit.
  - tensors: ``model.embeddings.weight``; per layer ``model.layers.{i}.attn_norm``,
    ``.attn.{q,r,k,v,o}_proj`` (``nn.Linear [out, in]``), ``.attn.{q,r,k}_norm`` (with
    ``qk_norm``), ``.mlp_norm``, ``.mlp.{gate,up,down}_proj``; ``model.norm``; ``lm_head``
    (absent when tied).
  - function: pre-RMSNorm blocks, SwiGLU, RoPE (NeoX halves, base ``rope_theta``) on q, r and
    k at the query positions, ``p = softmax(q.k / sqrt(head_dim))``, ``t = r.k`` unscaled,
    ``o = sum_j p_j (1 + sum_l p_l t_l - t_j) v_j``: the op here.
  - the q/r/k norms are RMSNorms with fla's fixed eps 1e-5 (``norm_eps`` reaches only the
    block and final norms); a model with ``qk_norm`` and ``norm_eps != 1e-5`` is refused unless
    ``allow_qk_norm_eps_change`` (the exported model then differs by that eps only).

  A softmax model exports as Parallax with ``r_proj = 0`` (``r_norm`` = ones): the same function.

A tied head stays tied: ``hf_names`` moves this package's ``d**-0.5`` head scale into the final
norm's weight (see that module).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from parallax_jax.errors import UserError
from parallax_jax.interop import hf_config, hf_names
from parallax_jax.interop.safetensors_io import INDEX, write_safetensors
from parallax_jax.model.config import ModelConfig

FORMATS = ("qwen3", "fla-parallax")
DTYPES = ("param", "float32", "bfloat16", "float16")  # "param": the run's model.param_dtype
FLA_QK_NORM_EPS = 1e-5  # fla's q/r/k_norm: RMSNorm(head_dim) at its default eps

# fla's ParallaxForCausalLM tensor names, by hf_names role.
FLA_PARALLAX_NAMES: dict[str, str] = {
  "embed": "model.embeddings.weight",
  "q_proj": "model.layers.{i}.attn.q_proj.weight",
  "r_proj": "model.layers.{i}.attn.r_proj.weight",
  "k_proj": "model.layers.{i}.attn.k_proj.weight",
  "v_proj": "model.layers.{i}.attn.v_proj.weight",
  "o_proj": "model.layers.{i}.attn.o_proj.weight",
  "q_norm": "model.layers.{i}.attn.q_norm.weight",
  "r_norm": "model.layers.{i}.attn.r_norm.weight",
  "k_norm": "model.layers.{i}.attn.k_norm.weight",
  "attn_norm": "model.layers.{i}.attn_norm.weight",
  "mlp_norm": "model.layers.{i}.mlp_norm.weight",
  "gate": "model.layers.{i}.mlp.gate_proj.weight",
  "up": "model.layers.{i}.mlp.up_proj.weight",
  "down": "model.layers.{i}.mlp.down_proj.weight",
  "final_norm": "model.norm.weight",
  "head": "lm_head.weight",
}
_NUMPY_DTYPES = {
  "float32": np.dtype(np.float32),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "float16": np.dtype(np.float16),
}


@dataclasses.dataclass(frozen=True)
class ExportResult:
  out: Path
  fmt: str
  step: int
  dtype: str  # the tensors' dtype name
  files: list[Path]
  notes: list[str]  # what the export changed in form (not function) or left out


def export_hf(
  workdir: str | Path,
  out: str | Path,
  *,
  fmt: str = "qwen3",
  step: int | None = None,
  dtype: str = "param",
  allow_qk_norm_eps_change: bool = False,
) -> ExportResult:
  """Writes ``workdir``'s params (checkpoint ``step``, default the newest readable) into the
  new or empty directory ``out`` in format ``fmt`` (``FORMATS``), tensors in ``dtype``
  (``DTYPES``). Raises a ``UserError`` naming the field for a model the format cannot hold.
  The files are written beside ``out`` and moved in once complete: a failure leaves none."""
  from parallax_jax.train import run_record
  from parallax_jax.train.checkpoint import check_step
  from parallax_jax.train.config import resolve

  if fmt not in FORMATS:
    raise UserError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if dtype not in DTYPES:
    raise UserError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
  if allow_qk_norm_eps_change and fmt != "fla-parallax":  # it would change nothing
    raise UserError(
      f"--allow-qk-norm-eps-change applies to --format fla-parallax (fla's fixed q/r/k norm "
      f"eps), not to --format {fmt}, which keeps the run's eps; drop it"
    )
  check_step(step)
  out = Path(out)
  _check_out(out)
  workdir = Path(workdir)
  exp = resolve(run_record.load_run_config(workdir))
  model, notes = exp.model, []
  where = f"--workdir {str(workdir)!r}"
  # Everything decidable from the config is checked before the checkpoint is read.
  if fmt == "qwen3":
    target = _qwen3_target(model, where)
  else:
    target = _fla_target(model, where, allow_qk_norm_eps_change, notes)
  tokenizer_file, eos_id = _tokenizer(exp.data, workdir, notes)
  run_record.require_checkpoints(workdir)
  step, params = _restore(workdir, exp, step)
  if model.attention == "parallax" and target.attention == "softmax":
    _require_zero_r(params, model, where)
    notes.append("every r_proj is exactly zero: exported as the softmax model it computes")
  if model.attention == "softmax" and target.attention == "parallax":
    from parallax_jax.train.convert import add_zero_r

    params = add_zero_r(params, target)
    notes.append("softmax model: r_proj = 0 and r_norm = 1 added (the same function)")
  dtype_name = model.param_dtype if dtype == "param" else dtype
  np_dtype = _NUMPY_DTYPES[dtype_name]
  table = hf_names.tensor_table(
    target, hf_names.QWEN3_NAMES if fmt == "qwen3" else FLA_PARALLAX_NAMES
  )
  _check_covered(
    table, params, dropped=("r_proj", "r_norm") if target.attention == "softmax" else ()
  )

  config = _hf_config(fmt, target, dtype_name, eos_id, _imported_hf_config(workdir))
  # Written into a sibling staging directory and moved into place whole: an error or an
  # interrupt midway (a full disk) leaves no half-written --out, which a retry would refuse.
  out.parent.mkdir(parents=True, exist_ok=True)
  # A plain mkdir (mode 0o777 less the umask, as --out's own would be; mkdtemp's 0o700 would
  # hide the export from other readers), named uniquely so that concurrent exports never meet.
  stage = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
  stage.mkdir()
  try:
    names = [p.name for p in write_safetensors(stage, _hf_tensors(table, params, np_dtype))]
    names += [INDEX] if (stage / INDEX).is_file() else []
    (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    names.append("config.json")
    if tokenizer_file is not None:
      names.append(_tokenizer_name(tokenizer_file))
      shutil.copyfile(tokenizer_file, stage / names[-1])
    _check_out(out)  # still new or empty
    if out.is_dir():  # empty: keep the directory (its mode, its owner), fill it
      for name in names:
        os.replace(stage / name, out / name)
      stage.rmdir()
    else:
      os.rename(stage, out)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  return ExportResult(out, fmt, step, dtype_name, [out / n for n in names], notes)


def _check_out(out: Path) -> None:
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {str(out)!r} is a file; give a new or empty directory")
  if out.is_dir() and any(out.iterdir()):
    raise UserError(
      f"--out {str(out)!r} is not empty; export-hf writes only into a new or empty directory"
    )


def _token_model(model: ModelConfig, where: str) -> None:
  try:
    hf_names.check_mappable(model)
  except (ValueError, NotImplementedError) as e:  # a run the layouts cannot hold: one line
    raise UserError(f"{where}: {e}") from e


def _qwen3_target(model: ModelConfig, where: str) -> ModelConfig:
  """The softmax ``ModelConfig`` whose Qwen3 layout is written (W_R = 0 checked later)."""
  _token_model(model, where)
  if model.window_size is not None:
    raise UserError(
      f"{where}: model.window_size={model.window_size} has no Qwen3 equivalent (Qwen3's "
      "sliding window covers a layer range only); export it with --format fla-parallax"
    )
  return model.with_attention("softmax")


def _fla_target(model: ModelConfig, where: str, allow_eps: bool, notes: list) -> ModelConfig:
  """The Parallax ``ModelConfig`` whose fla layout is written."""
  _token_model(model, where)
  d, h, dh = model.d_model, model.num_heads, model.head_dim
  if h * dh != d:
    raise UserError(
      f"{where}: model.head_dim={dh} with model.num_heads={h} gives {h * dh} attention "
      f"channels, but fla's parallax format ties head_dim = hidden_size / num_heads = "
      f"{d}/{h} (model.d_model={d}) and has no head_dim field; the model cannot be expressed "
      "in it"
    )
  if model.norm_eps != FLA_QK_NORM_EPS:
    if not allow_eps:
      raise UserError(
        f"{where}: model.norm_eps={model.norm_eps:g} with qk_norm, but fla's q/r/k norms use "
        f"a fixed eps {FLA_QK_NORM_EPS:g} (its norm_eps reaches only the block and final "
        "norms): the exported model would compute a slightly different function. Pass "
        "--allow-qk-norm-eps-change to export anyway"
      )
    notes.append(
      f"q/r/k norms: fla uses eps {FLA_QK_NORM_EPS:g}, the run model.norm_eps="
      f"{model.norm_eps:g} (--allow-qk-norm-eps-change)"
    )
  return model.with_attention("parallax")


def _tokenizer(data, workdir: Path, notes: list) -> tuple[Path | None, int | None]:
  """``(file to copy or None, eos id or None)`` of the run's data config."""
  from parallax_jax.data.tokenizers import make_tokenizer

  if data.is_task:
    notes.append(f"data.source={data.source!r} is a synthetic task: no tokenizer written")
    return None, None
  tok = make_tokenizer(data.tokenizer, workdir)
  if data.tokenizer == "byte":
    notes.append(
      f"byte tokenizer (UTF-8 bytes = ids 0..255, EOS {tok.eos_id}): no tokenizer file written"
    )
    return None, tok.eos_id
  return Path(tok.path), tok.eos_id  # a 'train:bpe:...' tokenizer is the run's tokenizer.json


def _tokenizer_name(path: Path) -> str:
  return "tokenizer.json" if path.suffix == ".json" else "tokenizer.model"


def _restore(workdir: Path, exp, step: int | None) -> tuple[int, dict]:
  """``(step, params)``: the run's params pure dict on one device (nothing moved on disk)."""
  from parallax_jax.train.checkpoint import restore_run_params

  return restore_run_params(workdir, exp, step)


def _require_zero_r(params: dict, model: ModelConfig, where: str) -> None:
  for i in range(model.num_layers):
    kernel = params["blocks"][i]["attn"]["r_proj"]["kernel"]
    if bool(jnp.any(kernel != 0)):
      raise UserError(
        f"{where} holds a Parallax model with W_R != 0 (blocks/{i}/attn/r_proj/kernel has "
        f"{int(jnp.count_nonzero(kernel))} nonzero entries); Qwen3 has no tensor for r. "
        "Export it with --format fla-parallax"
      )


def _check_covered(table, params: dict, dropped: tuple[str, ...]) -> None:
  """Every param is written (except the zero ``r`` of a softmax export): nothing is dropped
  silently."""
  written = {entry.path for entry in table}
  left = [
    "/".join(map(str, p))
    for p in hf_names.iter_paths(params)
    if p not in written and not set(p) & set(dropped)
  ]
  if left:
    raise AssertionError(f"export-hf: the tensor table does not map the params {left}")


def _hf_tensors(table, params: dict, dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
  """``(hf name, array)`` one at a time: converted in the param dtype, then cast once."""
  for entry in table:
    w = np.asarray(jax.device_get(hf_names.get_path(params, entry.path)))
    assert w.shape == entry.nnx_shape, (entry.path_str, w.shape, entry.nnx_shape)
    yield entry.hf_name, np.ascontiguousarray(entry.to_hf(w).astype(dtype))


def _imported_hf_config(workdir: Path) -> dict[str, Any]:
  """The source config.json of a run that ``import-hf`` created (its record keeps it), or {}."""
  from parallax_jax.train import run_record

  return run_record.read_record(workdir).get("hf_import", {}).get("config", {})


def _hf_config(
  fmt: str, model: ModelConfig, dtype: str, eos_id: int | None, source: dict[str, Any]
) -> dict[str, Any]:
  """config.json: the model's fields; token ids (and Qwen3's advertised length) from the
  imported checkpoint's config when the run came from one, else EOS (which also starts
  documents here) from the tokenizer."""
  ids = {} if eos_id is None else {"bos_token_id": eos_id, "eos_token_id": eos_id}
  ids |= {k: source[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in source}
  if fmt == "qwen3":
    length = source.get("max_position_embeddings", 40960)
    config = hf_config.hf_config_from_model(
      model, torch_dtype=dtype, max_position_embeddings=length
    )
    return config | ids
  return fla_parallax_config(model, torch_dtype=dtype) | ids


def fla_parallax_config(model: ModelConfig, *, torch_dtype: str) -> dict[str, Any]:
  """fla's ``ParallaxConfig`` fields (config.json) for a Parallax ``model`` that fits it."""
  return {
    "architectures": ["ParallaxForCausalLM"],
    "model_type": "parallax",
    "vocab_size": model.vocab_size,
    "hidden_size": model.d_model,
    "num_hidden_layers": model.num_layers,
    "num_heads": model.num_heads,
    "num_kv_heads": model.num_kv_heads,
    "qkv_bias": False,
    "qk_norm": model.qk_norm,
    "window_size": model.window_size,
    "rope_theta": model.rope_theta,
    "max_position_embeddings": None,
    "hidden_ratio": 4,  # unused: intermediate_size is given
    "intermediate_size": model.mlp_dim,
    "hidden_act": "swish",
    "initializer_range": model.init_std,
    "norm_eps": model.norm_eps,
    "tie_word_embeddings": model.tie_embeddings,
    "use_cache": True,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "fuse_cross_entropy": True,
    "fuse_linear_cross_entropy": False,
    "use_l2warp": False,
    "attnres_block_size": None,
    "torch_dtype": torch_dtype,
  }
