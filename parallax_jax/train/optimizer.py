"""Optimizers from config: AdamW or Muon (+ AdamW for non-matrix params), schedules, clipping.

Parameter groups are decided by path (``parallax_jax.model`` names):
- Muon: attention projections ``q/r/k/v_proj`` ([D, H, Dh]: reduce over D, output H*Dh),
  ``o_proj`` ([H, Dh, D]: reduce over H*Dh) and the MLP matrices; W_R (``r_proj``) included.
- AdamW: embeddings, the untied LM head, norm scales.
Weight decay applies to matrices (embeddings only if ``decay_embeddings``), never to norms.
Under "muon" the AdamW group is ``optax.contrib.muon``'s own, with Nesterov momentum; optax
decays every parameter of it (norms and embeddings too), so its decay is applied here instead,
with the same mask as "adamw" (``muon_adam_decay="matrices"``). ``muon_adam_decay="all"``
keeps optax's: the runs recorded before 2026-12-05 trained so, and resume so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from parallax_jax.config_utils import from_section, require_number
from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
MUON_ADAM_DECAY = ("matrices", "all")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"
  learning_rate: float = 3e-3  # peak LR (Muon group under "muon")
  adam_learning_rate: float | None = None  # AdamW group under "muon"; None: learning_rate
  schedule: str = "cosine"
  warmup_steps: int = 100
  decay_fraction: float = 0.2  # wsd: share of steps spent decaying
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  decay_embeddings: bool = False
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float | None = 1.0
  muon_beta: float = 0.95
  muon_ns_steps: int = 5
  # "muon": what its AdamW group decays: "matrices" (as "adamw"), or "all" (optax's own)
  muon_adam_decay: str = "matrices"

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise UserError(f"optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
    if self.schedule not in SCHEDULES:
      raise UserError(f"optimizer.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    require_number("optimizer.learning_rate", self.learning_rate, above=0)
    require_number(
      "optimizer.adam_learning_rate", self.adam_learning_rate, above=0, none="learning_rate"
    )
    require_number("optimizer.warmup_steps", self.warmup_steps, at_least=0, integer=True)
    for f in ("decay_fraction", "min_lr_ratio"):
      require_number(f"optimizer.{f}", getattr(self, f), at_least=0, at_most=1)
    require_number("optimizer.weight_decay", self.weight_decay, at_least=0)
    if not isinstance(self.decay_embeddings, bool):
      raise UserError(
        f"optimizer.decay_embeddings must be True or False, got {self.decay_embeddings!r}"
      )
    for f in ("b1", "b2", "muon_beta"):
      require_number(f"optimizer.{f}", getattr(self, f), at_least=0, below=1)
    require_number("optimizer.eps", self.eps, above=0)
    # 0 is off too (a TOGGLE key: off at None/0), as the clip is applied only if it is truthy
    require_number("optimizer.clip_norm", self.clip_norm, at_least=0, none="no clipping; 0 too")
    require_number("optimizer.muon_ns_steps", self.muon_ns_steps, at_least=1, integer=True)
    if self.muon_adam_decay not in MUON_ADAM_DECAY:
      raise UserError(
        f"optimizer.muon_adam_decay must be one of {MUON_ADAM_DECAY}, got {self.muon_adam_decay!r}"
      )

  @classmethod
  def from_dict(cls, d: Mapping) -> OptimizerConfig:
    return from_section(cls, "optimizer", d)


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
  """The warmup the schedules run: ``optimizer.warmup_steps``, shortened to ``train.steps - 1``
  when it would not end before training does (a short run of a long config still reaches its
  peak; `make_optimizer` says so)."""
  return min(cfg.warmup_steps, max(total_steps - 1, 0))


def make_schedule(peak: float, cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Warmup then cosine decay, warmup-stable-decay (linear decay), or constant."""
  warmup = warmup_steps(cfg, total_steps)
  end = peak * cfg.min_lr_ratio
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end)
  if cfg.schedule == "constant":  # (optax's warmup_constant_schedule stays at 0 for warmup 0)
    warmup_lr = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([warmup_lr, optax.constant_schedule(peak)], boundaries=[warmup])
  # The decay ends at train.steps even when warmup + decay would overrun it (it used to be
  # cut mid-way: 90 warmup steps of 100 with 20% decay ended at LR 0.6 x peak, not the end LR).
  decay = min(int(round(cfg.decay_fraction * total_steps)), max(total_steps - warmup, 0))
  stable = max(total_steps - warmup - decay, 0)
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak, warmup),
      optax.constant_schedule(peak),
      optax.linear_schedule(peak, end, max(decay, 1)),
    ],
    boundaries=[warmup, warmup + stable],
  )


def _path_names(path) -> tuple[str, ...]:
  """``("blocks", "0", "attn", "q_proj", "kernel")`` for a params-tree key path."""
  return tuple(jax.tree_util.keystr(path, simple=True, separator="/").split("/"))


def _is_embedding(names) -> bool:
  """Input and output layers (token embedding, LM head, their float-vector counterparts)."""
  return names[-1] in ("embed", "head") or names[0] in ("input_proj", "output_head")


def muon_dimension_numbers(params):
  """Per-leaf ``MuonDimensionNumbers`` (Muon) or None (AdamW), from the parameter path."""

  def rule(path, x):
    names = _path_names(path)
    if x.ndim < 2 or _is_embedding(names) or names[-1] != "kernel":
      return None
    if "o_proj" in names:  # [H, Dh, D]
      return MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=(2,))
    if any(n in names for n in ("q_proj", "r_proj", "k_proj", "v_proj")):  # [D, H, Dh]
      return MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1, 2))
    return MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1,))

  return jax.tree_util.tree_map_with_path(rule, params)


def decay_mask(cfg: OptimizerConfig):
  def mask(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, x: (
        x.ndim >= 2 and (cfg.decay_embeddings or not _is_embedding(_path_names(path)))
      ),
      params,
    )

  return mask


def adam_group_decay_mask(cfg: OptimizerConfig):
  """Under "muon": the leaves of its AdamW group that ``decay_mask`` decays."""

  def mask(params):
    groups = muon_dimension_numbers(params)
    decayed = decay_mask(cfg)(params)
    return jax.tree.map(
      lambda group, d: group is None and d,
      groups,
      decayed,
      is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers),
    )

  return mask


def decay_at_lr(
  weight_decay: float, lr: optax.Schedule, mask
) -> optax.GradientTransformationExtraArgs:
  """Decoupled weight decay ``-lr(t) * weight_decay * param`` added to finished updates on the
  ``mask``ed leaves: AdamW's decay, for a group whose transform (optax's muon) decays none."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    step_lr = lr(state.count)
    updates = jax.tree.map(
      lambda u, p, m: u - (step_lr * weight_decay * p).astype(u.dtype) if m else u,
      updates,
      params,
      mask(params),
    )
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: OptimizerConfig, total_steps: int):
  """``(tx, schedules)``: the optax transformation and ``{"lr": ..., ["adam_lr": ...]}``."""
  warmup = warmup_steps(cfg, total_steps)
  if warmup != cfg.warmup_steps:  # said, not silent
    log.warning(
      "optimizer.warmup_steps=%d does not end before train.steps=%d: the warmup runs %d "
      "steps instead; set --config.optimizer.warmup_steps below train.steps to choose it",
      cfg.warmup_steps,
      total_steps,
      warmup,
    )
  lr = make_schedule(cfg.learning_rate, cfg, total_steps)
  schedules = {"lr": lr}
  if cfg.name == "adamw":
    if cfg.adam_learning_rate is not None:  # e.g. a Muon config switched to adamw: said
      log.warning(
        "optimizer.adam_learning_rate=%g is Muon's (the LR of its AdamW group); "
        "optimizer.name='adamw' trains every parameter at optimizer.learning_rate=%g",
        cfg.adam_learning_rate,
        cfg.learning_rate,
      )
    if cfg.muon_adam_decay == "all":  # a Muon key: adamw never decays the norms (said, not silent)
      log.warning(
        "optimizer.muon_adam_decay='all' is Muon's (what its AdamW group decays); "
        "optimizer.name='adamw' decays the matrices only (embeddings and head with "
        "optimizer.decay_embeddings), never the norms"
      )
    core = optax.adamw(
      lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask(cfg)
    )
  else:
    adam_lr = make_schedule(
      cfg.learning_rate if cfg.adam_learning_rate is None else cfg.adam_learning_rate,
      cfg,
      total_steps,
    )
    schedules["adam_lr"] = adam_lr
    core = optax.contrib.muon(
      lr,
      ns_steps=cfg.muon_ns_steps,
      beta=cfg.muon_beta,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      weight_decay_mask=decay_mask(cfg),
      adam_b1=cfg.b1,
      adam_b2=cfg.b2,
      adam_weight_decay=cfg.weight_decay if cfg.muon_adam_decay == "all" else 0.0,
      adam_learning_rate=adam_lr,
      muon_weight_dimension_numbers=muon_dimension_numbers,
    )
    if cfg.muon_adam_decay == "matrices":  # (with weight_decay 0 too: one state tree)
      core = optax.chain(core, decay_at_lr(cfg.weight_decay, adam_lr, adam_group_decay_mask(cfg)))
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  return optax.chain(*parts, core), schedules
