"""Model configuration: a frozen, validated dataclass built from ``config.model``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from parallax_jax.config_utils import from_section, require_number
from parallax_jax.errors import UserError
from parallax_jax.flops import model_flops_per_token

ATTENTION_KINDS = ("parallax", "softmax", "lla")
R_INITS = ("like_q", "zeros")
# The tied LM head's logit scale: x . E^T / sqrt(d) ("rsqrt_d") or x . E^T ("one", as Qwen3 and
# GPT-2 tie it); design §8.4.
TIED_HEAD_SCALES = ("rsqrt_d", "one")
DTYPES = ("float32", "bfloat16", "float16")
# Activation rematerialisation per block (see ``transformer.remat_policy``): what the backward
# pass keeps from the forward and what it recomputes.
REMAT = ("none", "full", "dots", "dots_attention")
# jax.nn.dot_product_attention's implementation names (a softmax model's paths).
SOFTMAX_IMPLS = ("xla", "cudnn")
_SOFTMAX_PLATFORMS = {"xla": ("cpu", "gpu", "tpu"), "cudnn": ("gpu",)}


def _registry(decode: bool):
  # Imported when used: the op's registries pull in jax; the config module stays light.
  if decode:
    from parallax_jax.decode.api import DECODE

    return DECODE
  from parallax_jax.attention.implementations import ATTENTION

  return ATTENTION


def attention_paths(kind: str, *, decode: bool = False) -> tuple[str, ...]:
  """The names ``attention_impl`` (``decode=True``: ``decode_impl``) may take for an attention
  kind, besides None (the best available path): the Parallax op's (or decode op's) registry
  for "parallax", ``jax.nn.dot_product_attention``'s for "softmax", none for "lla" (one dense
  path, no decode)."""
  if kind == "parallax":
    return _registry(decode).names()
  if kind == "softmax":
    return SOFTMAX_IMPLS
  return ()


def path_platforms(kind: str, name: str, *, decode: bool = False) -> tuple[str, ...]:
  """The backends an explicit path runs on natively (``attention_paths`` names only)."""
  if kind == "softmax":
    return _SOFTMAX_PLATFORMS[name]
  try:
    return _registry(decode).get(name).platforms
  except NotImplementedError:  # its kernel family does not import here
    return ()


@dataclasses.dataclass(frozen=True)
class LogicalAxes:
  """Logical names of parameter and activation axes; mesh rules map them (sharding config)."""

  vocab: str = "vocab"
  embed: str = "embed"
  q_heads: str = "q_heads"
  kv_heads: str = "kv_heads"
  head_dim: str = "head_dim"
  mlp: str = "mlp"
  norm: str | None = None
  batch: str = "batch"
  length: str = "length"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Qwen3-style decoder (pre-RMSNorm, SwiGLU, RoPE, GQA, QK-norm).

  ``attention="parallax"`` adds ``r_proj`` (shaped like ``q_proj``) with its own RMSNorm when
  ``qk_norm``; RoPE is applied to q, r and k. ``r_init="zeros"`` makes the model exactly a
  softmax transformer at step 0; ``"like_q"`` initialises ``r_proj`` like ``q_proj``.
  ``attention="lla"``: Local Linear Attention (q, k, v; a dense per-query ridge solve with ridge
  ``lla_ridge``, ``parallax_jax.attention.lla``), a reference for small models.

  ``input_dim > 0`` reads float vectors ``[B, T, input_dim]`` through a linear projection with
  a bias (no token embedding); ``output_dim > 0`` replaces the LM head by a linear head
  predicting ``output_dim`` numbers per position (trained with MSE). Both 0: token ids in,
  logits out. The regression tasks ("linreg", "drift_linreg") use ``input_dim = d + 1``,
  ``output_dim = 1``.

  ``tied_head_scale`` (tied embeddings only): the LM head's logits are ``x . E^T`` ("one", the
  default, Qwen3's) or ``x . E^T / sqrt(d)`` ("rsqrt_d", the default until session 17). With
  embeddings at ``init_std`` the second bounds every logit by ``sqrt(d) init_std`` at init
  (0.55 at d = 768), and held every model of the GPU study back by 1.8-3.0 nats of held-out
  loss (docs/design.md §8.4).
  """

  vocab_size: int = 512
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 64
  mlp_dim: int = 768
  attention: str = "parallax"
  r_init: str = "like_q"
  qk_norm: bool = True
  tie_embeddings: bool = True
  tied_head_scale: str = "one"  # one of TIED_HEAD_SCALES
  rope_theta: float = 1_000_000.0
  norm_eps: float = 1e-6
  window_size: int | None = None
  init_std: float = 0.02
  param_dtype: str = "float32"
  compute_dtype: str = "bfloat16"
  remat: str = "none"  # one of REMAT
  # Training loss: LM head + cross-entropy in chunks of this many positions, never holding
  # the [B, T, V] logits (model/cross_entropy.py); 0: dense logits.
  logits_chunk: int = 0
  attention_impl: str | None = None  # parallax_attention's implementation=; None: best
  # parallax_attention's deterministic=: False allows the fused GPU backward whose dq/dr are
  # added with float32 atomics (not bitwise reproducible; slower on the H200, design §5.5).
  attention_deterministic: bool = True
  # Decode attention (Transformer.decode_step): parallax_decode's path for attention="parallax"
  # ("xla", "pallas_gpu", "pallas_tpu"), jax.nn.dot_product_attention's for "softmax" ("xla",
  # "cudnn"); None: attention_impl when it names such a path, else the best path.
  decode_impl: str | None = None
  decode_num_splits: int | None = None  # split-KV count of the decode kernels; None: heuristic
  lla_ridge: float = 1.0  # attention="lla": ridge lambda on the local slope (> 0)
  input_dim: int = 0  # > 0: float input vectors of this size instead of token ids
  output_dim: int = 0  # > 0: a linear regression head of this size instead of the LM head
  axes: LogicalAxes = LogicalAxes()

  def __post_init__(self):
    def need(cond, field, msg):
      if not cond:
        raise ValueError(f"model.{field}: {msg}")

    for f in (
      "vocab_size",
      "d_model",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "mlp_dim",
    ):
      value = getattr(self, f)
      need(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f,
        f"must be a positive int, got {value!r}",
      )
    need(
      self.num_heads % self.num_kv_heads == 0,
      "num_heads",
      f"{self.num_heads} query heads must be a multiple of num_kv_heads={self.num_kv_heads}",
    )
    need(
      self.attention in ATTENTION_KINDS,
      "attention",
      f"must be one of {ATTENTION_KINDS}, got {self.attention!r}",
    )
    need(self.r_init in R_INITS, "r_init", f"must be one of {R_INITS}, got {self.r_init!r}")
    need(
      self.tied_head_scale in TIED_HEAD_SCALES,
      "tied_head_scale",
      f"must be one of {TIED_HEAD_SCALES}, got {self.tied_head_scale!r}",
    )
    need(
      self.tie_embeddings or self.tied_head_scale == "one",
      "tied_head_scale",
      f"{self.tied_head_scale!r} applies to a tied head only; with tie_embeddings=False the "
      "head is its own matrix and is not scaled (leave tied_head_scale at 'one')",
    )
    need(
      isinstance(self.remat, str) and self.remat in REMAT,
      "remat",
      f"must be one of the strings {REMAT} (True/False: use 'full'/'none'), got {self.remat!r}",
    )
    need(self.param_dtype in DTYPES, "param_dtype", f"must be one of {DTYPES}")
    need(self.compute_dtype in DTYPES, "compute_dtype", f"must be one of {DTYPES}")
    need(self.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates pairs)")
    require_number(
      "model.window_size", self.window_size, at_least=1, integer=True, none="full causal attention"
    )
    for f in ("rope_theta", "norm_eps", "init_std", "lla_ridge"):
      require_number(f"model.{f}", getattr(self, f), above=0)
    for f in ("qk_norm", "tie_embeddings"):
      need(
        isinstance(getattr(self, f), bool), f, f"must be True or False, got {getattr(self, f)!r}"
      )
    need(
      isinstance(self.logits_chunk, int)
      and not isinstance(self.logits_chunk, bool)
      and self.logits_chunk >= 0,
      "logits_chunk",
      f"must be an int >= 0 (0: dense logits), got {self.logits_chunk!r}",
    )
    need(
      isinstance(self.attention_deterministic, bool),
      "attention_deterministic",
      f"must be True or False, got {self.attention_deterministic!r}",
    )
    if self.attention in ATTENTION_KINDS:  # (an unknown kind was refused above)
      for key, decode in (("attention_impl", False), ("decode_impl", True)):
        value, paths = getattr(self, key), attention_paths(self.attention, decode=decode)
        takes = f"None (the best available path) or one of {paths}" if paths else "None only"
        need(
          value is None or value in paths,
          key,
          f"attention={self.attention!r} takes {takes}, got {value!r}",
        )
    need(
      self.decode_num_splits is None
      or (
        isinstance(self.decode_num_splits, int)
        and not isinstance(self.decode_num_splits, bool)
        and self.decode_num_splits >= 1
      ),
      "decode_num_splits",
      f"must be a positive int or None, got {self.decode_num_splits!r}",
    )
    for f in ("input_dim", "output_dim"):
      value = getattr(self, f)
      need(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f,
        f"must be an int >= 0 (0: token ids / LM head), got {value!r}",
      )
    need(
      not (self.input_dim and not self.output_dim and self.tie_embeddings),
      "tie_embeddings",
      "must be False when input_dim > 0 and output_dim = 0 (no token embedding to tie the "
      "LM head to)",
    )
    need(
      not (self.output_dim and self.logits_chunk),
      "logits_chunk",
      "must be 0 when output_dim > 0 (it chunks the LM head, which the model then lacks)",
    )

  @classmethod
  def from_dict(cls, d: Mapping) -> ModelConfig:
    return from_section(cls, "model", d)

  def check_paths(self, platform: str, *, decode: bool = False) -> None:
    """Refuses, before anything is built or written, an explicit ``attention_impl`` (and with
    ``decode``, for generation, ``decode_impl``) that does not run on ``platform`` (e.g.
    ``jax.default_backend()``): an explicit request is served or refused, never swapped."""
    keys = [("attention_impl", False)] + ([("decode_impl", True)] if decode else [])
    for key, is_decode in keys:
      name = getattr(self, key)
      if name is None:
        continue
      platforms = path_platforms(self.attention, name, decode=is_decode)
      if platform not in platforms:
        runs = f"runs on {', '.join(platforms)}" if platforms else "is unavailable here"
        raise UserError(
          f"model.{key}={name!r} {runs}, not on this machine's {platform!r} backend; pass "
          f"--config.model.{key}=None for the best available path"
        )

  def with_attention(self, kind: str) -> ModelConfig:
    """This config with ``attention=kind``. A path the new kind does not have
    (``attention_impl``, ``decode_impl``: the names are per kind) becomes None, the best
    available: it was asked of the other kind's op."""
    paths = {
      key: value if value in attention_paths(kind, decode=key == "decode_impl") else None
      for key, value in (("attention_impl", self.attention_impl), ("decode_impl", self.decode_impl))
    }
    return dataclasses.replace(self, attention=kind, **paths)

  @property
  def has_vocab(self) -> bool:
    """Whether a parameter has a ``vocab_size`` dimension (the embedding or an untied head)."""
    return not self.input_dim or not (self.output_dim or self.tie_embeddings)

  @property
  def uses_r(self) -> bool:
    return self.attention == "parallax"

  def num_params(self, *, embedding: bool = True) -> int:
    """Parameter count (embedding and untied head included unless ``embedding=False``)."""
    d, h, hkv, dh, f = (
      self.d_model,
      self.num_heads,
      self.num_kv_heads,
      self.head_dim,
      self.mlp_dim,
    )
    attn = d * h * dh * (3 if self.uses_r else 2) + 2 * d * hkv * dh
    norms = 2 * d + (dh * (3 if self.uses_r else 2) if self.qk_norm else 0)
    layer = attn + 3 * d * f + norms
    total = self.num_layers * layer + d
    if embedding:
      total += self.input_dim * d + d if self.input_dim else self.vocab_size * d
      if self.output_dim:
        total += d * self.output_dim
      elif not self.tie_embeddings:
        total += d * self.vocab_size
    return total

  def flops_per_token(self, seq_len: int) -> float:
    """Training model FLOPs per token (the MFU convention): ``parallax_jax.flops``."""
    return model_flops_per_token(self, seq_len)
