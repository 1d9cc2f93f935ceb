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

The mesh uses ``jax.sharding.Mesh`` (Auto axis types, deliberately): the model is plain
GSPMD-style code, the jitted step gets explicit in/out shardings, and the partitioner
propagates the rest. Attention kernels never see a partitioned array: the op is called inside
``jax.shard_map`` over batch and heads (``attention``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """``config.sharding``: the strategy and every strategy's logical-axis rules."""

  strategy: str = "dp"
  rules: Mapping[str, Mapping[str, tuple[str, ...]]] = dataclasses.field(
    default_factory=lambda: DEFAULT_RULES
  )

  def __post_init__(self):
    if self.strategy not in self.rules:
      raise ValueError(
        f"sharding.strategy={self.strategy!r} has no rules; known: {sorted(self.rules)}"
      )
    for name, table in self.rules.items():
      for logical, axes in table.items():
        bad = [a for a in _as_tuple(axes) if a not in MESH_AXES]
        if bad:
          raise ValueError(
            f"sharding.rules.{name}.{logical} names mesh axes {bad}; mesh axes are {MESH_AXES}"
          )

  @classmethod
  def from_dict(cls, d: Mapping) -> ShardingConfig:
    unknown = sorted(set(d) - {"strategy", "rules"})
    if unknown:
      raise ValueError(f"unknown sharding config keys {unknown}; known: ['rules', 'strategy']")
    rules = {k: {lk: _as_tuple(v) for lk, v in t.items()} for k, t in d.get("rules", {}).items()}
    return cls(strategy=d.get("strategy", "dp"), rules=rules or DEFAULT_RULES)

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


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor, sequence) sized by ``mesh_cfg`` (a MeshConfig)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_cfg.shape(len(devices))
  return Mesh(np.asarray(devices).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def make_rules(mesh: Mesh, cfg: ShardingConfig) -> Rules:
  return Rules(mesh=mesh, table=cfg.table, strategy=cfg.strategy)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(rules: Rules, batch_logical: str = "batch") -> NamedSharding:
  """Batch arrays ``[B, T]``: rows over the batch axes, and T over the sequence axes (cp)."""
  return NamedSharding(rules.mesh, P(rules.axes(batch_logical), rules.axes("length")))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-process numpy batch -> global jax arrays with ``sharding``."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def param_shardings(logical_axes: Mapping[tuple, tuple], params: dict, rules: Rules) -> dict:
  """Pure dict of NamedShardings for ``params`` from their logical axis names.

  ``logical_axes`` maps a flat parameter path (as ``nnx.to_flat_state`` gives it) to names.
  A mesh axis that does not divide the dimension is dropped for that parameter.
  """

  def one(path, x):
    key = tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path)
    names = logical_axes[key]
    spec = []
    for dim, name in zip(x.shape, names, strict=True):
      axes = rules.axes(name)
      size = int(np.prod([rules.mesh.shape[a] for a in axes or ()]))
      spec.append(axes if axes and dim % size == 0 else None)
    return NamedSharding(rules.mesh, P(*spec))

  return jax.tree_util.tree_map_with_path(one, params)


def tree_shardings_like(tree, params: dict, param_sharding: dict, mesh: Mesh):
  """Shardings for a tree holding params-shaped subtrees (optimizer state): a leaf whose path
  ends with a parameter's path and has its shape gets that parameter's sharding; everything
  else (step counts, scalars) is replicated."""
  by_path = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    by_path[_keys(path)] = (x.shape, None)
  for path, s in jax.tree_util.tree_flatten_with_path(param_sharding)[0]:
    shape, _ = by_path[_keys(path)]
    by_path[_keys(path)] = (shape, s)

  def one(path, x):
    keys = _keys(path)
    for n in range(len(keys)):
      hit = by_path.get(keys[n:])
      if hit is not None and tuple(hit[0]) == tuple(x.shape):
        return hit[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, tree)


def _keys(path) -> tuple:
  return tuple(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def sequence_layout(rules: Rules | None, uses_ring: bool) -> Callable | None:
  """Under context parallelism with ring attention, batches enter the model in zigzag order
  (``ring_state.to_zigzag``): each sequence shard then holds chunks ``i`` and ``2n-1-i`` and
  causal work is balanced. Token-wise layers do not care, RoPE reads the permuted
  ``positions`` and the loss is a sum over tokens, so the step's result is unchanged.
  Returns the batch transform, or None when no reordering is needed."""
  if rules is None or not uses_ring or rules.axes("length") is None:
    return None
  from parallax_jax.attention.ring_state import to_zigzag

  n = rules.size("length")
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
  if hkv is not None and k.shape[2] % rules.size(axes.kv_heads):
    hq = hkv = None  # kv heads do not split evenly: keep heads whole
  q_spec, kv_spec = P(b, None, hq, None), P(b, None, hkv, None)
  args, specs = [q, r, k, v], [q_spec, q_spec, kv_spec, kv_spec]
  if r is None:
    args, specs = [q, k, v], [q_spec, kv_spec, kv_spec]
  seg_spec = P(b, None)
  has_seg = segment_ids is not None

  def local(*xs):
    xs = list(xs)
    seg = xs.pop() if has_seg else None
    if r is None:
      return fn(xs[0], None, xs[1], xs[2], seg)
    return fn(*xs, seg)

  return jax.shard_map(
    local,
    mesh=rules.mesh,
    in_specs=tuple(specs + ([seg_spec] if has_seg else [])),
    out_specs=q_spec,
    check_vma=False,  # pallas_call inside shard_map (JAX_NOTES.md 1)
  )(*args, *([segment_ids] if has_seg else []))
