"""Hugging Face Qwen3 ``config.json`` <-> ``ModelConfig``.

``model_config_from_hf`` reads the fields that define the function (widths, heads, RoPE theta,
RMSNorm eps, tied head) and refuses, naming the field, anything that would change the function
and that the model here cannot compute: sliding-window layers, RoPE scaling, partial RoPE, MoE,
attention biases, an activation other than SiLU, a model type other than ``qwen3``; a value of the
wrong type (a null or a string where a number belongs) is refused naming its field. Bookkeeping
fields (token ids, ``transformers_version``, ...) are ignored; ``max_position_embeddings`` too
(RoPE here has no length limit: it is the length the checkpoint was trained for, not a
parameter).
A field it does not know is logged (not silently dropped) and ignored.

``hf_config_from_model`` writes the Qwen3 ``config.json`` of a softmax ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from parallax_jax.errors import UserError
from parallax_jax.model.config import ModelConfig

log = logging.getLogger("parallax_jax")

MODEL_TYPE = "qwen3"
# Shape and function fields every saved Qwen3 config.json holds (save_pretrained writes them).
REQUIRED = (
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "intermediate_size",
  "vocab_size",
  "rms_norm_eps",
  "tie_word_embeddings",
)
# Fields read without effect on the function.
IGNORED = {
  "architectures",
  "attention_dropout",  # training-time dropout; no layer here is stochastic
  "bos_token_id",
  "eos_token_id",
  "pad_token_id",
  "initializer_range",
  "max_position_embeddings",  # a trained length, not a parameter: RoPE here is unbounded
  "max_window_layers",  # only read with use_sliding_window (refused below)
  "transformers_version",
  "use_cache",
  "torch_dtype",
  "dtype",
  "_name_or_path",
  "output_attentions",
  "output_hidden_states",
  "return_dict",
  "_attn_implementation_autoset",
}
MOE_FIELDS = (
  "num_experts",
  "num_experts_per_tok",
  "moe_intermediate_size",
  "decoder_sparse_step",
  "mlp_only_layers",
  "norm_topk_prob",
  "router_aux_loss_coef",
  "output_router_logits",
)


def _refuse(field: str, value: Any, why: str) -> UserError:
  return UserError(f"Hugging Face config.json field {field}={value!r}: {why}")


def checkpoint_dtype(hf: Mapping[str, Any]) -> str | None:
  """The tensors' stored dtype name (``torch_dtype``, or ``dtype`` in newer transformers)."""
  value = hf.get("torch_dtype", hf.get("dtype"))
  return str(value).removeprefix("torch.") if value is not None else None


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """``rope_theta`` (old layout) or ``rope_parameters.rope_theta`` (newer transformers);
  anything but plain RoPE is refused."""
  scaling = hf.get("rope_scaling")
  if scaling is not None:
    raise _refuse(
      "rope_scaling",
      scaling,
      "scaled RoPE (YaRN, linear, dynamic, ...) is not supported; "
      "only plain RoPE (rope_scaling null) imports",
    )
  params = hf.get("rope_parameters")
  if params is not None and not isinstance(params, Mapping):
    raise _refuse("rope_parameters", params, "must be an object (rope_type, rope_theta)")
  params = params or {}
  kind = params.get("rope_type", "default")
  if kind != "default":
    raise _refuse(
      "rope_parameters.rope_type", kind, "only plain RoPE (rope_type 'default') imports"
    )
  # transformers' default RoPE rotates the first head_dim * partial_rotary_factor channels only.
  for name, factor in (
    ("partial_rotary_factor", hf.get("partial_rotary_factor")),
    ("rope_parameters.partial_rotary_factor", params.get("partial_rotary_factor")),
  ):
    if factor not in (None, 1):
      raise _refuse(name, factor, "partial RoPE is not supported (RoPE here rotates all head_dim)")
  if "rope_theta" in params:
    return _number(params, "rope_theta", float, "rope_parameters.rope_theta")
  if "rope_theta" not in hf:
    raise UserError("Hugging Face config.json lacks rope_theta (needed: the RoPE base)")
  return _number(hf, "rope_theta", float)


_KINDS = {int: "an integer", float: "a number", bool: "true or false"}


def _number(hf: Mapping[str, Any], field: str, kind: type, name: str | None = None):
  """``hf[field]`` as ``kind`` (int, float or bool), else a ``UserError`` naming the field: a
  null, a string or a fraction where a number or a bool belongs is refused, never converted."""
  value = hf[field]
  if kind is bool:
    ok = isinstance(value, bool)
  else:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (kind is float or float(value).is_integer())
  if not ok:
    raise _refuse(name or field, value, f"must be {_KINDS[kind]}")
  return kind(value)


def check_supported(hf: Mapping[str, Any]) -> None:
  """Raises a ``UserError`` naming the first field that the model here cannot compute."""
  if hf.get("model_type") != MODEL_TYPE:
    raise _refuse(
      "model_type", hf.get("model_type"), f"import-hf reads {MODEL_TYPE!r} checkpoints only"
    )
  if hf.get("use_sliding_window", False):
    raise _refuse(
      "use_sliding_window", hf["use_sliding_window"], "sliding-window layers are not supported"
    )
  layer_types = hf.get("layer_types")
  if layer_types is not None and any(t != "full_attention" for t in layer_types):
    kinds = sorted(set(layer_types) - {"full_attention"})
    raise _refuse("layer_types", kinds, "only 'full_attention' layers are supported")
  for field in MOE_FIELDS:
    value = hf.get(field)
    if value not in (None, 0, False, []):
      raise _refuse(field, value, "mixture-of-experts layers are not supported (dense only)")
  if hf.get("attention_bias", False):
    raise _refuse("attention_bias", hf["attention_bias"], "projection biases are not supported")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise _refuse("hidden_act", act, "only 'silu' (SwiGLU MLP) is supported")
  missing = [f for f in REQUIRED if f not in hf]
  if missing:
    raise UserError(f"Hugging Face config.json lacks {missing}: needed to build the model")


def model_config_from_hf(
  hf: Mapping[str, Any],
  *,
  attention: str = "parallax",
  r_init: str = "zeros",
  compute_dtype: str = "bfloat16",
  param_dtype: str = "float32",
) -> ModelConfig:
  """The ``ModelConfig`` of a Qwen3 ``config.json`` (parsed), with ``attention``/``r_init``
  as asked (parallax + zeros: exactly the softmax function at step 0)."""
  check_supported(hf)
  theta = _rope_theta(hf)
  known = set(REQUIRED) | IGNORED | set(MOE_FIELDS)
  known |= {
    "model_type",
    "use_sliding_window",
    "sliding_window",
    "layer_types",
    "attention_bias",
    "hidden_act",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
  }
  unknown = sorted(set(hf) - known)
  if unknown:
    log.warning("Hugging Face config.json: ignoring fields this import does not know: %s", unknown)
  try:
    return ModelConfig(
      vocab_size=_number(hf, "vocab_size", int),
      d_model=_number(hf, "hidden_size", int),
      num_layers=_number(hf, "num_hidden_layers", int),
      num_heads=_number(hf, "num_attention_heads", int),
      num_kv_heads=_number(hf, "num_key_value_heads", int),
      head_dim=_number(hf, "head_dim", int),
      mlp_dim=_number(hf, "intermediate_size", int),
      attention=attention,
      r_init=r_init,
      qk_norm=True,
      tie_embeddings=_number(hf, "tie_word_embeddings", bool),
      rope_theta=theta,
      norm_eps=_number(hf, "rms_norm_eps", float),
      param_dtype=param_dtype,
      compute_dtype=compute_dtype,
    )
  except ValueError as e:
    raise UserError(f"Hugging Face config.json does not give a valid model: {e}") from e


def hf_config_from_model(
  cfg: ModelConfig, *, torch_dtype: str = "float32", max_position_embeddings: int = 40960
) -> dict[str, Any]:
  """A Qwen3 ``config.json`` dict for a softmax ``cfg`` (``max_position_embeddings``: the
  length to advertise; Qwen3's own value by default)."""
  if cfg.attention != "softmax":
    raise ValueError(
      f"hf_config_from_model: a Qwen3 config describes softmax attention; model.attention="
      f"{cfg.attention!r} (export a Parallax model in another format)."
    )
  if cfg.window_size is not None:
    raise NotImplementedError(
      f"hf_config_from_model: model.window_size={cfg.window_size} has no Qwen3 equivalent "
      "here (Qwen3's sliding window applies to a layer range only)."
    )
  if not cfg.qk_norm or cfg.input_dim or cfg.output_dim:
    raise NotImplementedError(
      "hf_config_from_model: only token models with qk_norm=True have a Qwen3 layout."
    )
  return {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": MODEL_TYPE,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.d_model,
    "num_hidden_layers": cfg.num_layers,
    "num_attention_heads": cfg.num_heads,
    "num_key_value_heads": cfg.num_kv_heads,
    "head_dim": cfg.head_dim,
    "intermediate_size": cfg.mlp_dim,
    "hidden_act": "silu",
    "rms_norm_eps": cfg.norm_eps,
    "rope_theta": cfg.rope_theta,
    "rope_scaling": None,
    "tie_word_embeddings": cfg.tie_embeddings,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_position_embeddings": max_position_embeddings,
    "torch_dtype": torch_dtype,
  }


def model_fields(cfg: ModelConfig) -> dict[str, Any]:
  """``cfg`` as the ``model`` config section (a plain dict, ``axes`` left at its default)."""
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "axes"}
