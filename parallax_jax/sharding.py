"""Device meshes, logical-axis rules per strategy, and the shardings derived from them.

Strategies (``config.sharding.strategy``) map the model's logical axis names
(``ModelConfig.axes``) onto the mesh axes ``(data, fsdp, tensor, sequence)``; the rule tables
live in the config (``config.sharding.rules.<strategy>``; defaults in ``DEFAULT_RULES``):

* ``dp``: batch over ``data`` (params replicated);
* ``fsdp``: batch over ``(data, fsdp)``, params and optimizer state sharded along ``embed``;
* ``tp``: batch over ``data``; heads, MLP and vocab over ``tensor`` (Megatron-style);
* ``fsdp_tp``: both;
* ``cp``: batch over ``data``, the sequence over ``sequence``: Parallax runs as ring attention
  (``ring_parallax_attention``) on zigzag-ordered batches, so causal work is balanced.

Parameters are placed by their logical axis names (``param_shardings``), the optimizer state by
its structure (``opt_state_shardings``: moments follow their parameter); a non-scalar leaf that
neither covers raises rather than being replicated.

The mesh uses ``jax.sharding.Mesh`` (Auto axis types, deliberately): the model is plain
GSPMD-style code, the jitted step gets explicit in/out shardings, and the partitioner
propagates the rest. Attention kernels never see a partitioned array: the op is called inside
``jax.shard_map`` over batch and heads (``attention``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Collection, Mapping

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from parallax_jax.attention.sharded import shard_over_batch_and_heads
from parallax_jax.config_utils import from_section

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")
STRATEGIES = ("dp", "fsdp", "tp", "fsdp_tp", "cp")

# logical axis -> mesh axes. Logical names not listed are replicated.
DEFAULT_RULES: dict[str, dict[str, tuple[str, ...]]] = {
  "dp": {"batch": ("data", "fsdp")},
  "fsdp": {"batch": ("data", "fsdp"), "embed": ("fsdp",)},
  "tp": {
    "batch": ("data", "fsdp"),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
  },
  "fsdp_tp": {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
  },
  "cp": {"batch": ("data", "fsdp"), "length": ("sequence",)},
}


# The ``nnx.Param`` metadata key holding a parameter's logical axis names (set by the model's
# layers). Kept rather than Flax's ``out_sharding`` + ``nnx.get_partition_spec``: Flax maps any
# leaf without the metadata to ``PartitionSpec()`` (the silent replication this module refuses),
# has no per-parameter fallback when a mesh axis does not divide a dimension, and ``out_sharding``
# turns on eager sharding at creation. Running optax on the nnx Variables instead of the pure
# param dict (so optimizer leaves inherit the metadata) changes the leaf paths (``.value``), which
# the path-based Muon/AdamW grouping in ``train.optimizer`` reads.
LOGICAL_AXES = "logical_axes"

# Optimizer-state fields that are small constants, not per-parameter buffers: replicated.
# ``ns_coeffs``: optax.contrib.muon's Newton-Schulz coefficients, shape (3,) or (steps, 3).
REPLICATED_STATE_FIELDS = frozenset({"ns_coeffs"})


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """``config.sharding``: the strategy and every strategy's logical-axis rules."""

  strategy: str = "dp"
  rules: Mapping[str, Mapping[str, tuple[str, ...]]] = dataclasses.field(
    default_factory=lambda: DEFAULT_RULES
  )

  def __post_init__(self):
    if not isinstance(self.rules, Mapping):
      raise ValueError(
        "sharding.rules must be a mapping {strategy: {logical axis: mesh axes}}, got "
        f"{self.rules!r}"
      )
    if not isinstance(self.strategy, str) or self.strategy not in self.rules:
      raise ValueError(
        f"sharding.strategy={self.strategy!r} has no rules; known: {sorted(self.rules)}"
      )
    for name, table in self.rules.items():
      if not isinstance(table, Mapping):
        raise ValueError(
          f"sharding.rules.{name} must be a mapping {{logical axis: mesh axes}}, got {table!r}"
        )
      for logical, axes in table.items():
        if not (
          axes is None
          or isinstance(axes, str)
          or (isinstance(axes, list | tuple) and all(isinstance(a, str) for a in axes))
        ):
          raise ValueError(
            f"sharding.rules.{name}.{logical} must be a mesh axis name or a list of them "
            f"(of {MESH_AXES}), got {axes!r}"
          )
        bad = [a for a in _as_tuple(axes) if a not in MESH_AXES]
        if bad:
          raise ValueError(
            f"sharding.rules.{name}.{logical} names mesh axes {bad}; mesh axes are {MESH_AXES}"
          )
        twice = sorted({a for a in _as_tuple(axes) if _as_tuple(axes).count(a) > 1})
        if twice:  # counted twice by the batch check, then a DuplicateSpecError traceback
          raise ValueError(
            f"sharding.rules.{name}.{logical} names mesh axes {twice} more than once; name "
            "each mesh axis once"
          )

  @classmethod
  def from_dict(cls, d: Mapping) -> ShardingConfig:
    if hasattr(d, "to_dict"):  # ml_collections.ConfigDict
      d = d.to_dict()
    d = dict(d)
    if isinstance(d.get("rules"), Mapping):  # axis lists (JSON, ConfigDict) -> tuples
      rules = {
        k: {
          lk: _as_tuple(v) if v is None or isinstance(v, str | list | tuple) else v
          for lk, v in t.items()
        }
        if isinstance(t, Mapping)
        else t  # refused, named, by __post_init__
        for k, t in d["rules"].items()
      }
      d["rules"] = rules or DEFAULT_RULES
    return from_section(cls, "sharding", d)

  @property
  def table(self) -> dict[str, tuple[str, ...]]:
    return {k: _as_tuple(v) for k, v in self.rules[self.strategy].items()}


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


@dataclasses.dataclass(frozen=True)
class Rules:
  """Resolved rules on a concrete mesh: logical names -> mesh axes (size-1 axes dropped)."""

  mesh: Mesh
  table: Mapping[str, tuple[str, ...]]
  strategy: str = "dp"

  def axes(self, logical: str | None) -> tuple[str, ...] | None:
    """Mesh axes of a logical axis (None: replicated); axes of size 1 are left out."""
    if logical is None:
      return None
    kept = tuple(a for a in self.table.get(logical, ()) if self.mesh.shape[a] > 1)
    return kept or None

  def spec(self, logical_axes) -> P:
    return P(*(self.axes(name) for name in logical_axes))

  def sharding(self, logical_axes) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(logical_axes))

  def size(self, logical: str) -> int:
    return int(np.prod([self.mesh.shape[a] for a in self.axes(logical) or ()]))

  def check_distinct(self, logical_axes, what: str) -> None:
    """Raises a ``UserError`` when two logical axes of one array map to the same mesh axis (a
    ``NamedSharding`` may name a mesh axis once: a DuplicateSpecError traceback otherwise)."""
    from parallax_jax.errors import UserError

    seen: dict[str, str] = {}
    for name in logical_axes:
      for a in self.axes(name) or ():
        if a in seen:
          raise UserError(
            f"sharding.rules.{self.strategy} maps {seen[a]} and {name} both to mesh axis {a!r}, "
            f"but {what} has both as dimensions; map them to different mesh axes"
          )
        seen[a] = name


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor, sequence) sized by ``mesh_cfg`` (a MeshConfig)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_cfg.shape(len(devices))
  return Mesh(np.asarray(devices).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def make_rules(mesh: Mesh, cfg: ShardingConfig) -> Rules:
  return Rules(mesh=mesh, table=cfg.table, strategy=cfg.strategy)


def idle_axes(mesh: Mesh, table: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
  """``{axis: size}`` of the mesh axes larger than 1 that no rule of ``table`` (a strategy's
  logical axis -> mesh axes) names: every device along them holds and computes the same."""
  used = {a for axes in table.values() for a in axes}
  return {a: n for a, n in mesh.shape.items() if n > 1 and a not in used}


def unsplit_rules(rules: Rules, batch_logical: str = "batch") -> dict[str, tuple[str, ...]]:
  """``{logical: mesh axes}`` of the strategy's rules, other than the batch's, whose mesh axes
  all have size 1: what the strategy names a split of (fsdp's ``embed``, tp's heads, cp's
  ``length``) that this mesh leaves whole on every device."""
  return {
    logical: axes
    for logical, axes in rules.table.items()
    if logical != batch_logical and axes and rules.axes(logical) is None
  }


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(
  rules: Rules, batch_logical: str = "batch", length_logical: str = "length"
) -> NamedSharding:
  """Batch arrays ``[B, T]``: rows over the batch axes, and T over the sequence axes (cp).
  The logical names are the model's (``ModelConfig.axes``)."""
  rules.check_distinct((batch_logical, length_logical), "every batch array [B, T]")
  return NamedSharding(rules.mesh, P(rules.axes(batch_logical), rules.axes(length_logical)))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-process numpy batch -> global jax arrays with ``sharding``."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def check_rows_per_process(sharding: NamedSharding, rows: int, length: int) -> None:
  """Each process reads its own ``rows / process_count`` rows (``train.data_io``), so the batch
  sharding must give every process one whole block of them: its devices together hold rows
  ``[p * rows / P, (p + 1) * rows / P)`` at every position. A mesh that splits the sequence or
  the heads across processes instead would have ``make_array_from_process_local_data`` glue
  two processes' rows along the sequence (measured: it trained, silently, on rows of twice the
  length). Raises a ``UserError`` naming the mesh; one process always passes."""
  from parallax_jax.errors import UserError

  count = jax.process_count()
  if count == 1:
    return
  held: dict[int, dict[tuple[int, int], list[tuple[int, int]]]] = {}  # process -> rows -> cols
  for device, (row_sl, col_sl) in sharding.devices_indices_map((rows, length)).items():
    tiles = held.setdefault(device.process_index, {})
    tiles.setdefault(row_sl.indices(rows)[:2], []).append(col_sl.indices(length)[:2])
  starts = set()
  for tiles in held.values():
    block = _covered(list(tiles))
    whole = all(_covered(cols) == (0, length) for cols in tiles.values())
    if rows % count or not whole or block is None or block[1] - block[0] != rows // count:
      starts = None
      break
    starts.add(block[0])
  if starts is None or sorted(starts) != list(range(0, rows, rows // count)):
    sizes = {a: int(n) for a, n in sharding.mesh.shape.items() if n > 1}
    raise UserError(
      f"mesh {sizes} over {count} processes: each process reads its own rows of the batch "
      f"({rows} rows), so the batch's mesh axes ({sharding.spec[0] or 'none'}) must give each "
      f"process a block of its own: make mesh.data x mesh.fsdp a multiple of {count} and "
      f"train.batch_size a multiple of that (e.g. --config.mesh.data={count}); sequence and "
      "tensor axes then stay within a process"
    )


def _covered(spans: list[tuple[int, int]]) -> tuple[int, int] | None:
  """The one interval ``[start, stop)`` that half-open ``spans`` cover together; None if gaps."""
  spans = sorted(spans)
  start, stop = spans[0]
  for a, b in spans[1:]:
    if a > stop:
      return None
    stop = max(stop, b)
  return start, stop


def param_shardings(variables, rules: Rules) -> dict:
  """Pure dict (``nnx.to_pure_dict`` layout) of NamedShardings for the model's parameters.

  ``variables``: the model's (abstract) ``nnx.State``; every ``nnx.Param`` carries its logical
  axis names as ``LOGICAL_AXES`` metadata (one name or None per dimension), and the strategy's
  rules map the names onto mesh axes. A Param without the metadata raises: it would otherwise
  be replicated unnoticed. So does a rule whose mesh axes do not divide the dimension (a
  ``UserError``; ``train.config.resolve`` refuses such configs first, naming the model key).
  """
  from parallax_jax.errors import UserError

  out: dict = {}
  for path, var in nnx.to_flat_state(variables):
    if not isinstance(var, nnx.Param):
      continue
    names = var.get_metadata().get(LOGICAL_AXES)
    shape = var.get_value().shape
    if names is None or len(names) != len(shape):
      raise ValueError(
        f"parameter {'/'.join(map(str, path))} of shape {shape} has {LOGICAL_AXES}={names!r}: "
        f"create it as nnx.Param(value, {LOGICAL_AXES}=(one name or None per dimension)) "
        "so the sharding rules can place it."
      )
    rules.check_distinct(names, f"parameter {'/'.join(map(str, path))}")
    for dim, name in zip(shape, names, strict=True):
      if rules.axes(name) and dim % rules.size(name):  # kept whole, it would be replicated
        raise UserError(
          f"sharding.rules.{rules.strategy}.{name} splits parameter {'/'.join(map(str, path))} "
          f"of shape {shape} over {rules.size(name)} devices, which do not divide its {dim}; "
          "change the mesh (--config.mesh.*) or the rule"
        )
    spec = [rules.axes(name) for name in names]
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(rules.mesh, P(*spec))
  return out


def opt_state_shardings(
  opt_state,
  params: dict,
  param_sharding: dict,
  mesh: Mesh,
  *,
  replicated_fields: Collection[str] = REPLICATED_STATE_FIELDS,
):
  """Shardings for an optax state, derived from its structure.

  optax states mirror the parameters: AdamW's ``mu``/``nu`` and Muon's momentum are subtrees
  with the params' tree structure (with ``optax.MaskedNode`` where a mask or partition left a
  parameter out). Each leaf of such a subtree gets its parameter's sharding. Scalars (step
  counts) and leaves whose field is in ``replicated_fields`` are replicated. Any other leaf, or
  a mirrored leaf whose shape differs from its parameter's (a factored or reshaped buffer),
  raises: replicated quietly, an optimizer buffer would multiply its memory by the mesh size.
  """
  params_def = jax.tree.structure(params)
  repl = replicated(mesh)

  def mirrors_params(x) -> bool:
    return not _is_masked(x) and jax.tree.structure(x, is_leaf=_is_masked) == params_def

  def mirrored(prefix, path, x, p, s):
    if _is_masked(x):
      return x
    if x.shape != p.shape:
      raise ValueError(
        f"optimizer state leaf {jax.tree_util.keystr((*prefix, *path))} has shape {x.shape} "
        f"but its parameter has shape {p.shape}: it needs its own sharding rule in "
        "parallax_jax.sharding.opt_state_shardings."
      )
    return s

  def one(path, x):
    if mirrors_params(x):
      return jax.tree_util.tree_map_with_path(
        lambda sub, y, p, s: mirrored(path, sub, y, p, s),
        x,
        params,
        param_sharding,
        is_leaf=_is_masked,
      )
    if _is_masked(x) or x.shape == () or _field(path) in replicated_fields:
      return repl if not _is_masked(x) else x
    raise ValueError(
      f"optimizer state leaf {jax.tree_util.keystr(path)} (shape {x.shape}) mirrors no "
      "parameter and is not a scalar. Replicated on every device it could exhaust memory at "
      "scale, so it needs a rule: if it is a small constant, add its field name to "
      "parallax_jax.sharding.REPLICATED_STATE_FIELDS (or pass replicated_fields=); otherwise "
      "give it a sharding in parallax_jax.sharding.opt_state_shardings."
    )

  return jax.tree_util.tree_map_with_path(one, opt_state, is_leaf=mirrors_params)


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _field(path) -> str | None:
  """The name of the state field (NamedTuple attribute or dict key) a leaf sits in."""
  if not path:
    return None
  last = path[-1]
  return str(getattr(last, "name", getattr(last, "key", last)))


def sequence_layout(
  rules: Rules | None, uses_ring: bool, length_logical: str = "length"
) -> Callable | None:
  """Under context parallelism with ring attention, batches enter the model in zigzag order
  (``ring_state.to_zigzag``): each sequence shard then holds chunks ``i`` and ``2n-1-i`` and
  causal work is balanced. Token-wise layers do not care, RoPE reads the permuted
  ``positions`` and the loss is a sum over tokens, so the step's result is unchanged.
  ``length_logical``: the model's name of the sequence axis (``ModelConfig.axes.length``), the
  one its ring reads. Returns the batch transform, or None when no reordering is needed."""
  if rules is None or not uses_ring or rules.axes(length_logical) is None:
    return None
  from parallax_jax.attention.ring_state import to_zigzag

  n = rules.size(length_logical)
  return lambda batch: {k: None if v is None else to_zigzag(v, n, axis=1) for k, v in batch.items()}


# ---------------------------------------------------------------- tracing-time context

_CURRENT: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("rules", default=None)


@contextlib.contextmanager
def use_rules(rules: Rules | None):
  """Layers traced inside see these rules (``attention``, ``constrain``)."""
  token = _CURRENT.set(rules)
  try:
    yield rules
  finally:
    _CURRENT.reset(token)


def current_rules() -> Rules | None:
  return _CURRENT.get()


def constrain(x, logical_axes):
  """``with_sharding_constraint`` by logical names; a no-op outside ``use_rules``."""
  rules = current_rules()
  if rules is None or rules.mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, rules.sharding(logical_axes))


def attention(fn: Callable, q, r, k, v, segment_ids, *, axes, ring: Callable | None = None):
  """Calls ``fn(q, r, k, v, segment_ids)`` with no partitioned array inside.

  ``q, r: [B, T, Hq, D]``, ``k, v: [B, T, Hkv, D]``, ``segment_ids: [B, T] | None``. Under
  rules that shard the sequence (cp) and with ``ring`` given, calls
  ``ring(q, r, k, v, segment_ids, rules)`` instead (ring attention handles its own
  ``shard_map``). Otherwise ``fn`` runs inside ``jax.shard_map`` over the batch and head axes.
  """
  rules = current_rules()
  if rules is None or rules.mesh.size == 1:
    return fn(q, r, k, v, segment_ids)
  if rules.axes(axes.length) is not None and ring is not None:
    return ring(q, r, k, v, segment_ids, rules)
  b, hq, hkv = rules.axes(axes.batch), rules.axes(axes.q_heads), rules.axes(axes.kv_heads)
  if hq != hkv or (hkv is not None and k.shape[2] % rules.size(axes.kv_heads)):
    hq = hkv = None  # q and kv heads split unlike each other, or unevenly: keep heads whole
  return shard_over_batch_and_heads(
    fn, q, r, k, v, segment_ids, mesh=rules.mesh, batch_axes=b, q_head_axes=hq, kv_head_axes=hkv
  )
