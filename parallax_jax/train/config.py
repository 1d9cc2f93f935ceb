"""Experiment configs: ml_collections files with ``get_config()``, CLI overrides, validation.

A config file returns a ``ConfigDict`` with sections ``model``, ``data``, ``train``,
``optimizer``, ``checkpoint`` and ``mesh``. ``load_config`` applies ``--config.a.b=value``
overrides (typed by the existing value; unknown keys are errors), and ``resolve`` turns the
result into frozen, validated dataclasses before anything compiles. Every key's meaning:
``config_keys.KEYS``. Invalid input raises ``parallax_jax.errors.UserError`` (a ValueError).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections

from parallax_jax.config_utils import SEED_MAX, from_section, import_get_config, require_number
from parallax_jax.distributed import DistributedConfig
from parallax_jax.errors import UserError
from parallax_jax.model.config import ModelConfig
from parallax_jax.sharding import ShardingConfig
from parallax_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  seed: int = 0
  batch_size: int = 8  # global batch (rows of seq_len tokens)
  seq_len: int = 256
  # Gradient accumulation (train/microbatch.py): the batch is taken in this many pieces of
  # batch_size / microbatches rows, one at a time, for the same step with less memory.
  microbatches: int = 1
  log_every: int = 10
  eval_every: int = 200  # 0: never
  eval_batches: int = 4
  progress_bar: bool = True
  # JAX's persistent compilation cache (train/compile_cache.py): a restarted run loads its
  # compiled step instead of compiling again; "": JAX's own setting (off by default).
  compilation_cache_dir: str = ""
  # A profiler trace (train/profiling.py) of profile_steps steps, after the first
  # profile_skip_steps steps of each start (the first compiles); 0: no trace.
  profile_steps: int = 0
  profile_skip_steps: int = 2

  def __post_init__(self):
    for f in ("steps", "batch_size", "seq_len", "log_every", "microbatches"):
      require_number(f"train.{f}", getattr(self, f), at_least=1, integer=True)
    require_number("train.seed", self.seed, integer=True, at_least=0, at_most=SEED_MAX)
    for f in ("eval_every", "eval_batches", "profile_steps", "profile_skip_steps"):
      require_number(f"train.{f}", getattr(self, f), at_least=0, integer=True)
    if self.eval_every > 0 and self.eval_batches == 0:
      raise UserError(
        f"train.eval_batches=0 with train.eval_every={self.eval_every}: every eval would read "
        "no batch; set train.eval_every=0 to turn evals off, or train.eval_batches >= 1"
      )
    if not isinstance(self.progress_bar, bool):
      raise UserError(f"train.progress_bar must be True or False, got {self.progress_bar!r}")
    cache = self.compilation_cache_dir
    if not isinstance(cache, str):
      raise UserError(
        f"train.compilation_cache_dir must be a directory path or '' (off), got {cache!r}"
      )
    if (
      cache
      and os.path.exists(os.path.expanduser(cache))
      and not os.path.isdir(os.path.expanduser(cache))
    ):
      raise UserError(
        f"train.compilation_cache_dir={cache!r} is an existing file, not a directory; give a "
        "directory (created if missing) or '' for JAX's own setting"
      )
    if self.batch_size % self.microbatches:
      raise UserError(
        f"train.batch_size={self.batch_size} does not split into train.microbatches="
        f"{self.microbatches} equal pieces; use a divisor of the batch size"
      )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 100
  keep: int = 3
  async_save: bool = True
  init_from: str | None = None  # params-only checkpoint (e.g. from convert-softmax)

  def __post_init__(self):
    for f in ("every_steps", "keep"):
      require_number(f"checkpoint.{f}", getattr(self, f), at_least=1, integer=True)
    if not isinstance(self.async_save, bool):
      raise UserError(f"checkpoint.async_save must be True or False, got {self.async_save!r}")
    # An empty path (e.g. an unset shell variable) trained from scratch, as None does.
    if self.init_from is not None and (
      not isinstance(self.init_from, str) or not self.init_from.strip()
    ):
      raise UserError(
        f"checkpoint.init_from must be a checkpoint path or None, got {self.init_from!r}"
      )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh axis sizes; -1 takes the remaining devices (at most one axis)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  sequence: int = 1

  def __post_init__(self):
    for k, v in dataclasses.asdict(self).items():
      if isinstance(v, bool) or not isinstance(v, int) or (v != -1 and v < 1):
        raise UserError(f"mesh.{k} must be an int >= 1 or -1 (the remaining devices), got {v!r}")

  def shape(self, num_devices: int) -> dict[str, int]:
    sizes = dataclasses.asdict(self)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
      raise UserError(f"mesh: at most one axis may be -1, got {free}")
    for k, v in sizes.items():
      if v != -1 and v < 1:
        raise UserError(f"mesh.{k} must be >= 1 or -1, got {v}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
      if num_devices % fixed:
        raise UserError(
          f"mesh: {num_devices} devices are not divisible by the fixed axes "
          f"{ {k: v for k, v in sizes.items() if v != -1} }"
        )
      sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
      raise UserError(
        f"mesh sizes {sizes} multiply to {math.prod(sizes.values())}, but "
        f"there are {num_devices} devices; fix --config.mesh.*"
      )
    return sizes


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The resolved, validated config of one run."""

  model: ModelConfig
  data: object  # parallax_jax.data.DataConfig
  train: TrainConfig
  optimizer: OptimizerConfig
  checkpoint: CheckpointConfig
  mesh: MeshConfig
  sharding: ShardingConfig
  distributed: DistributedConfig
  raw: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)


SECTIONS = ("model", "data", "train", "optimizer", "checkpoint", "mesh", "sharding", "distributed")


def _section_classes() -> dict[str, type]:
  """Each section's dataclass, in ``SECTIONS`` order."""
  from parallax_jax.data.config import DataConfig  # data pulls in grain: imported when needed

  return {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "optimizer": OptimizerConfig,
    "checkpoint": CheckpointConfig,
    "mesh": MeshConfig,
    "sharding": ShardingConfig,
    "distributed": DistributedConfig,
  }


def resolve(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> Experiment:
  """Validates every section (unknown keys, ranges, heads vs widths, mesh vs devices)."""
  unknown = sorted(set(cfg.keys()) - set(SECTIONS))
  if unknown:
    raise UserError(f"unknown config sections {unknown}; known: {list(SECTIONS)}")
  d = cfg.to_dict()
  builders = {  # a section with a from_dict of its own (nested keys, extra checks) uses it
    name: getattr(cls, "from_dict", None) or functools.partial(from_section, cls, name)
    for name, cls in _section_classes().items()
  }
  exp = Experiment(
    **{name: _section(name, build, d.get(name, {})) for name, build in builders.items()},
    raw=cfg,
  )
  if exp.model.window_size is not None and exp.model.window_size > exp.train.seq_len:
    raise UserError(
      f"model.window_size={exp.model.window_size} exceeds train.seq_len="
      f"{exp.train.seq_len}; use None for full causal attention"
    )
  if num_devices is not None:
    sizes = exp.mesh.shape(num_devices)
    batch_axes = exp.sharding.table.get(exp.model.axes.batch, ())  # the strategy's rule
    batch_shards = math.prod(sizes[a] for a in batch_axes)
    named = " * ".join(f"mesh.{a}" for a in batch_axes) or "no mesh axis"
    if exp.train.batch_size % batch_shards:
      raise UserError(
        f"train.batch_size={exp.train.batch_size} must be divisible by {named} = {batch_shards}"
      )
    rows = exp.train.batch_size // exp.train.microbatches
    if rows % batch_shards:  # each piece's rows stay on their devices (microbatch.py)
      raise UserError(
        f"a microbatch of train.batch_size / train.microbatches = {rows} rows does not split "
        f"over {named} = {batch_shards} devices; use fewer microbatches or a larger batch"
      )
    _check_strategy(exp, sizes)
  return exp


def _section(name: str, build, values):
  """A section's dataclass; its validation errors (the section classes raise ValueError or,
  for a wrong type, TypeError) are the user's: re-raised as ``UserError``."""
  try:
    return build(values)
  except UserError:
    raise
  except (ValueError, TypeError) as e:
    msg = str(e) if isinstance(e, ValueError) else f"config.{name}: {e}"
    raise UserError(msg) from e


def _check_strategy(exp: Experiment, sizes: dict[str, int]) -> None:
  """Shapes the strategy's rules must divide (clear errors before compiling)."""
  table, m, strategy = exp.sharding.table, exp.model, exp.sharding.strategy
  ax = m.axes
  # A rule naming no logical axis of the model shards nothing: a typo ('embd') ran fsdp as dp.
  known = sorted({n for n in dataclasses.asdict(ax).values() if n is not None})
  for logical in table:
    if logical not in known:
      raise UserError(
        f"sharding.rules.{strategy} names logical axis {logical!r}, which the model does not "
        f"have; the model's logical axes are {known}"
      )
  # A rule that does not divide its dimension would leave the parameter whole
  # (``sharding.param_shardings``): fsdp with d_model % fsdp != 0 replicated every parameter,
  # tp with vocab_size % tensor != 0 the embedding and the head.
  dims = [
    (ax.embed, m.d_model, "model.d_model"),
    (ax.q_heads, m.num_heads, "model.num_heads"),
    (ax.kv_heads, m.num_kv_heads, "model.num_kv_heads"),
    (ax.head_dim, m.head_dim, "model.head_dim"),
    (ax.mlp, m.mlp_dim, "model.mlp_dim"),
    *([(ax.vocab, m.vocab_size, "model.vocab_size")] if m.has_vocab else []),
    (ax.norm, m.d_model, "model.d_model"),  # the layer norms' scales
    *([(ax.norm, m.head_dim, "model.head_dim")] if m.qk_norm else []),
  ]
  for logical, dim, field in dims:
    n = math.prod(sizes[a] for a in table.get(logical, ()))
    if logical is not None and dim % n:
      pad = f", or pad {field} to a multiple of {n}" if logical == ax.vocab else ""
      raise UserError(
        f"sharding.strategy={strategy!r} splits {logical} over {n} devices, "
        f"but {field}={dim} is not divisible by {n}; change the mesh (--config.mesh.*){pad}"
      )
  n_seq = math.prod(sizes[a] for a in table.get(ax.length, ()))
  split = [a for a in table.get(ax.length, ()) if sizes[a] > 1]
  if m.uses_r and len(split) > 1:
    raise UserError(
      f"sharding.rules.{strategy}.{ax.length} splits the sequence over mesh axes "
      f"{tuple(split)}, but ring attention runs over one mesh axis; map {ax.length} to one of them"
    )
  # The ring's zigzag layout cuts the sequence into 2n chunks; softmax (no ring, no zigzag:
  # sharding.sequence_layout) needs n equal shards only.
  need = 2 * n_seq if m.uses_r else n_seq
  if n_seq > 1 and exp.train.seq_len % need:
    why = "zigzag load balancing of ring attention" if m.uses_r else "equal sequence shards"
    raise UserError(
      f"context parallelism over {n_seq} devices needs train.seq_len divisible by "
      f"{need} ({why}), got {exp.train.seq_len}"
    )


# Hand-written rather than ml_collections.config_flags: config_flags cannot override a field whose
# default is None (model.window_size, checkpoint.init_from, optimizer.clip_norm, ...) nor set
# a field to None, and it needs absl's global FLAGS, while overrides here also come from sweeps
# and from argparse subcommands.
def _declares_str(section: str, key: str) -> bool:
  """Whether ``section.key`` is declared ``str | None`` by its section's dataclass: a key whose
  value is None now (``checkpoint.init_from``) then takes the override as a string (a
  directory named ``2024`` is a path, not the int a Python literal would make it)."""
  classes = _section_classes()
  if section not in classes:
    return False
  hint = typing.get_type_hints(classes[section]).get(key)
  return hint is not None and set(typing.get_args(hint)) == {str, type(None)}


def _parse(value: str, current, declared_str: bool = False):
  """Parses an override string into the type of the value it replaces (a string where
  ``declared_str`` says the key is declared ``str | None``)."""
  if isinstance(current, bool):
    if value.lower() in ("true", "1", "yes"):
      return True
    if value.lower() in ("false", "0", "no"):
      return False
    raise UserError(f"expected a bool, got {value!r}")
  if isinstance(current, int) and not isinstance(current, bool):
    try:
      return int(value)
    except ValueError:
      if value.lower() == "none":
        return None
      raise UserError(f"expected an int, got {value!r}") from None
  if isinstance(current, float):
    try:
      return None if value.lower() == "none" else float(value)
    except ValueError:
      raise UserError(f"expected a number, got {value!r}") from None
  if isinstance(current, str) or declared_str:
    return None if value == "None" else value
  try:  # None, tuples, lists: Python literals, else a plain string
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


_LIST_KEYS = "`parallax-jax config --config C` lists every key"


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]):
  """Applies ``a.b=value`` (or ``--config.a.b=value``) overrides in place; returns cfg."""
  for item in overrides:
    key, sep, value = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
      raise UserError(f"override {item!r} must look like --config.section.key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for i, p in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        where = f"no section {'.'.join(parents[: i + 1])!r}"
        raise UserError(f"unknown config key {key!r} ({where}); {_LIST_KEYS}")
      node = node[p]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise UserError(
        f"unknown config key {key!r}; {'.'.join(parents) or 'config'} has "
        f"{sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else 'no keys'}; "
        f"{_LIST_KEYS}"
      )
    try:
      declared_str = node[leaf] is None and len(parents) == 1 and _declares_str(parents[0], leaf)
      parsed = _parse(value, node[leaf], declared_str)
    except ValueError as e:
      raise UserError(f"bad value for config.{key}: {e}") from e
    # A dict replaces what it lands on: for a whole section, every key it leaves out would go
    # back to the dataclass default, silently dropping the config file's value.
    whole_section = not parents and leaf in SECTIONS
    if whole_section and isinstance(parsed, Mapping):
      raise UserError(
        f"bad value for config.{key}: a dict would replace the whole section, resetting the "
        f"keys it leaves out to their defaults (not the config file's values); set its keys "
        f"one by one (--config.{key}.KEY=VALUE), got {value!r}"
      )
    if isinstance(node[leaf], ml_collections.ConfigDict) and not isinstance(parsed, Mapping):
      raise UserError(
        f"bad value for config.{key}: it is a section (keys {sorted(node[leaf].keys())}), not a "
        f"value; set its keys (--config.{key}.KEY=VALUE)"
        f"{'' if whole_section else ' or give a dict'}, got {value!r}"
      )
    with node.ignore_type():
      node[leaf] = parsed
  return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Imports ``get_config()`` from a config file and applies overrides."""
  cfg = import_get_config(path)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise UserError(
      f"config file {str(path)!r}: get_config() must return an ml_collections.ConfigDict "
      f"(start from parallax_jax.train.defaults.base_config()), got {type(cfg).__name__}"
    )
  return apply_overrides(cfg, overrides)


def distributed_config(cfg: ml_collections.ConfigDict) -> DistributedConfig:
  """The validated ``distributed`` section alone (default when the config has none, as in
  ``resolve``): read before anything else, to start ``jax.distributed``."""
  return _section("distributed", DistributedConfig.from_dict, cfg.to_dict().get("distributed", {}))
