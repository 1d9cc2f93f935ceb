"""THE table between Hugging Face tensor names and the NNX params pure-dict paths.

Import (``import_hf``) and export (``export_hf``) both walk ``tensor_table(cfg)``: one
``TensorMap`` per HF tensor, with its NNX path, both shapes and the two conversions
(``to_nnx(w_hf) -> w_nnx``, ``to_hf(w_nnx) -> w_hf``; exact inverses, NumPy arrays in, NumPy
arrays out, the input's dtype kept).

Layouts (HF ``nn.Linear.weight`` is ``[out, in]``; NNX ``LinearGeneral`` kernels are
``in_shape + out_shape``):
  ``model.embed_tokens.weight`` [V, d]                 <-> ``embed`` [V, d]
  ``model.layers.{i}.self_attn.q_proj.weight`` [Hq*Dh, d] <-> ``blocks/{i}/attn/q_proj/kernel``
      [d, Hq, Dh] (``r_proj`` likewise, Parallax only; ``k_proj``/``v_proj`` with Hkv)
  ``...self_attn.o_proj.weight`` [d, Hq*Dh]             <-> ``.../o_proj/kernel`` [Hq, Dh, d]
  ``...self_attn.{q,r,k}_norm.weight`` [Dh]             <-> ``.../{q,r,k}_norm/scale`` [Dh]
  ``...input_layernorm.weight`` [d]                     <-> ``blocks/{i}/attn_norm/scale``
  ``...post_attention_layernorm.weight`` [d]            <-> ``blocks/{i}/mlp_norm/scale``
  ``...mlp.{gate,up}_proj.weight`` [F, d]                <-> ``blocks/{i}/mlp/{gate,up}/kernel``
      [d, F]; ``...mlp.down_proj.weight`` [d, F] <-> ``blocks/{i}/mlp/down/kernel`` [F, d]
  ``model.norm.weight`` [d]                             <-> ``final_norm/scale`` [d]
  ``lm_head.weight`` [V, d] (untied only)               <-> ``head`` [d, V]

The tied head: HF computes ``logits = norm(x) @ E^T``, as ``Transformer.lm_head`` does with
``model.tied_head_scale="one"`` (the default): the norm maps unchanged. With ``"rsqrt_d"`` the
tied head is scaled by ``d**-0.5``; ``final_norm`` feeds only the head, so its scale carries the
factor: ``final_norm/scale = sqrt(d) * model.norm.weight`` on import (divided back on export);
the function is the same.

Names follow Qwen3 (``QWEN3_NAMES``); another naming (e.g. fla's ``parallax`` model type) is a
different ``names`` dict with the same keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

from parallax_jax.model.config import ModelConfig

# HF name templates by role ({i}: layer index). ``r_proj``/``r_norm`` exist for Parallax only.
QWEN3_NAMES: dict[str, str] = {
  "embed": "model.embed_tokens.weight",
  "q_proj": "model.layers.{i}.self_attn.q_proj.weight",
  "r_proj": "model.layers.{i}.self_attn.r_proj.weight",
  "k_proj": "model.layers.{i}.self_attn.k_proj.weight",
  "v_proj": "model.layers.{i}.self_attn.v_proj.weight",
  "o_proj": "model.layers.{i}.self_attn.o_proj.weight",
  "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
  "r_norm": "model.layers.{i}.self_attn.r_norm.weight",
  "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
  "attn_norm": "model.layers.{i}.input_layernorm.weight",
  "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
  "gate": "model.layers.{i}.mlp.gate_proj.weight",
  "up": "model.layers.{i}.mlp.up_proj.weight",
  "down": "model.layers.{i}.mlp.down_proj.weight",
  "final_norm": "model.norm.weight",
  "head": "lm_head.weight",
}

Path = tuple[str | int, ...]
Convert = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One HF tensor and its NNX parameter."""

  hf_name: str
  path: Path  # pure-dict path, e.g. ("blocks", 0, "attn", "q_proj", "kernel")
  hf_shape: tuple[int, ...]
  nnx_shape: tuple[int, ...]
  to_nnx: Convert  # w_hf [hf_shape] -> w_nnx [nnx_shape]
  to_hf: Convert  # w_nnx [nnx_shape] -> w_hf [hf_shape]

  @property
  def path_str(self) -> str:
    return "/".join(str(p) for p in self.path)


def _identity(w: np.ndarray) -> np.ndarray:
  return w


def _scaled(factor: float) -> tuple[Convert, Convert]:
  """Multiply on import, divide on export, in float32 at least (a bf16 tensor stays bf16)."""
  up = lambda w: (w.astype(np.promote_types(w.dtype, np.float32)) * factor).astype(w.dtype)
  down = lambda w: (w.astype(np.promote_types(w.dtype, np.float32)) / factor).astype(w.dtype)
  return up, down


def _in_proj(d: int, h: int, dh: int) -> tuple[Convert, Convert]:
  """``[h*dh, d]`` <-> ``[d, h, dh]`` (q, r, k, v projections)."""
  return (lambda w: w.T.reshape(d, h, dh), lambda k: k.reshape(d, h * dh).T)


def _out_proj(d: int, h: int, dh: int) -> tuple[Convert, Convert]:
  """``[d, h*dh]`` <-> ``[h, dh, d]`` (o projection)."""
  return (lambda w: w.T.reshape(h, dh, d), lambda k: k.reshape(h * dh, d).T)


def _transpose(w: np.ndarray) -> np.ndarray:
  return w.T


def tensor_table(cfg: ModelConfig, names: dict[str, str] = QWEN3_NAMES) -> list[TensorMap]:
  """Every tensor of ``cfg``'s model, in HF order (embedding, layers, final norm, head).

  ``cfg`` must be a token language model (no ``input_dim``/``output_dim``) with ``qk_norm``
  and attention "parallax" or "softmax": the shapes HF's Qwen3 (and fla's parallax) hold.
  """
  check_mappable(cfg)
  d, v, f = cfg.d_model, cfg.vocab_size, cfg.mlp_dim
  hq, hkv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  out: list[TensorMap] = []

  def add(role: str, path: Path, hf_shape, nnx_shape, conv: tuple[Convert, Convert], i=None):
    name = names[role] if i is None else names[role].format(i=i)
    out.append(TensorMap(name, path, tuple(hf_shape), tuple(nnx_shape), *conv))

  same = (_identity, _identity)
  add("embed", ("embed",), (v, d), (v, d), same)
  for i in range(cfg.num_layers):
    attn: Path = ("blocks", i, "attn")
    projs = [("q_proj", hq), *([("r_proj", hq)] if cfg.uses_r else []), ("k_proj", hkv)]
    for role, h in [*projs, ("v_proj", hkv)]:
      add(role, (*attn, role, "kernel"), (h * dh, d), (d, h, dh), _in_proj(d, h, dh), i)
    add("o_proj", (*attn, "o_proj", "kernel"), (d, hq * dh), (hq, dh, d), _out_proj(d, hq, dh), i)
    for role in ("q_norm", *(["r_norm"] if cfg.uses_r else []), "k_norm"):
      add(role, (*attn, role, "scale"), (dh,), (dh,), same, i)
    add("attn_norm", ("blocks", i, "attn_norm", "scale"), (d,), (d,), same, i)
    add("mlp_norm", ("blocks", i, "mlp_norm", "scale"), (d,), (d,), same, i)
    mlp: Path = ("blocks", i, "mlp")
    add("gate", (*mlp, "gate", "kernel"), (f, d), (d, f), (_transpose, _transpose), i)
    add("up", (*mlp, "up", "kernel"), (f, d), (d, f), (_transpose, _transpose), i)
    add("down", (*mlp, "down", "kernel"), (d, f), (f, d), (_transpose, _transpose), i)
  # Tied: the head's d**-0.5 moves into the final norm's scale (module docstring); a tied head
  # with tied_head_scale="one" is HF's own.
  scaled_head = cfg.tie_embeddings and cfg.tied_head_scale == "rsqrt_d"
  norm_conv = _scaled(math.sqrt(d)) if scaled_head else same
  add("final_norm", ("final_norm", "scale"), (d,), (d,), norm_conv)
  if not cfg.tie_embeddings:
    add("head", ("head",), (v, d), (d, v), (_transpose, _transpose))
  return out


def check_mappable(cfg: ModelConfig) -> None:
  """Raises (naming the field) for a model the Hugging Face layouts cannot hold."""
  if cfg.input_dim or cfg.output_dim:
    raise ValueError(
      f"hf_names: a regression model (model.input_dim={cfg.input_dim}, model.output_dim="
      f"{cfg.output_dim}) has no Hugging Face causal-LM layout; only token models map."
    )
  if cfg.attention not in ("parallax", "softmax"):
    raise NotImplementedError(
      f"hf_names: model.attention={cfg.attention!r} has no Hugging Face layout; "
      "'parallax' and 'softmax' map."
    )
  if not cfg.qk_norm:
    raise NotImplementedError(
      "hf_names: model.qk_norm=False has no Qwen3 layout (Qwen3 always has q_norm/k_norm)."
    )


def get_path(tree: dict, path: Path):
  """``tree[path[0]][path[1]]...`` of a params pure dict."""
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: Path, value) -> None:
  """Sets ``tree[path...] = value``, creating the intermediate dicts."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def iter_paths(tree: dict, prefix: Path = ()) -> Iterator[Path]:
  """Every leaf path of a params pure dict."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from iter_paths(value, (*prefix, key))
    else:
      yield (*prefix, key)
