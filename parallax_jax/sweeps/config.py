"""Sweep configs: a base experiment config, axes of values, and the points they expand to.

A sweep file ``configs/sweeps/<name>.py`` has ``get_config()`` returning a ``ConfigDict`` (or a
dict) with

    base       path of a base config file (absolute, or relative to the working directory or
               the repository root), or the base ``ConfigDict`` itself
    axes       {dotted config key: [values]}; dotted keys need
               ``ConfigDict(..., allow_dotted_keys=True)``, or nest them
               ({"model": {"attention": [...]}}); a list is always a leaf (a value list)
    exclude    optional [{axis key: value}]: grid combinations matching every item of one entry
               are dropped (e.g. an expensive reference at the largest sizes)
    mode       "grid" (every combination, in axis order) or "random" (``count`` distinct
               combinations drawn with ``seed``; a larger count keeps a smaller one's points,
               so raising it adds runs)
    overrides  optional {dotted key: value} applied to every point
    variants   optional {name: {dotted key: value}}: named bundles of overrides that form one
               more axis, "variant" (first), for comparisons no grid of single keys expresses
               (e.g. "softmax, widened to Parallax's parameter count")
    metric     optional column that ranks points: default "eval_mse" for the regression
               tasks (data.source "linreg", "drift_linreg"; lower is better),
               "eval_accuracy" for "mqar", else "eval_perplexity"

Every point is checked against the base config here (unknown keys, unparsable values), before
anything runs. A point's name is built from its axis values, so it stays the same when the
sweep is rerun (resume) and when other values are added to an axis.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from parallax_jax.config_utils import import_get_config
from parallax_jax.data.config import REGRESSION_TASKS
from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.train import config_keys
from parallax_jax.train.config import apply_overrides, load_config, resolve

MODES = ("grid", "random")
# The columns of a sweep's results (``report.point_row``) that ``metric`` may name: every
# point's, and the reference predictors' eval MSE of the regression tasks (their sweeps only).
METRIC_COLUMNS = (
  "train_loss",
  "eval_loss",
  "eval_perplexity",
  "eval_accuracy",
  "eval_mse",
  "tokens_per_s",
)
BASELINE_COLUMNS = ("eval_mse_baseline_zero", "eval_mse_baseline_ols", "eval_mse_baseline_bayes")
KEYS = ("base", "axes", "variants", "exclude", "mode", "seed", "count", "overrides", "metric")
VARIANT = "variant"  # the axis that ``variants`` adds
REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_NAME = 96


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of a sweep: its axis values and fully resolved config."""

  name: str
  values: dict[str, Any]  # axis key -> value
  overrides: tuple[str, ...]  # "key=value" strings, fixed overrides then axis values
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)

  @property
  def steps(self) -> int:
    return int(self.config.train.steps)

  def fingerprint(self) -> str:
    """sha256 of the resolved config: a rerun must train exactly this config. Keys added to
    the code later, at the value that reproduces the earlier code, are left out
    (``config_keys.ADDED_KEYS``): a point finished before them keeps its fingerprint; so are
    the keys that only check a run's inputs (``config_keys.CHECK_KEYS``)."""
    config = config_keys.without_check_keys(
      config_keys.without_added_defaults(self.config.to_dict())
    )
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def problem(self) -> str | None:
    """Why the train CLI would refuse this point's config (the checks that need no devices
    or data: sections, ranges, heads vs widths), or None. ``sweep --dry-run`` shows it; a real
    sweep still runs the point and records its failure, as for any failing point."""
    try:
      resolve(self.config)
    except ValueError as e:  # UserError and the sections' own range checks
      return str(e)
    return None


@dataclasses.dataclass(frozen=True)
class Sweep:
  base_path: Path  # a config file the train CLI can load
  base: ml_collections.ConfigDict
  axes: dict[str, list]
  mode: str
  seed: int
  count: int | None
  overrides: dict[str, Any]
  metric: str | None
  points: tuple[Point, ...]
  inline_base: bool = False  # ``base`` was given inline: ``write_inline_base`` writes it


def cli_value(value) -> str:
  """A value as a ``--config.key=`` string that ``apply_overrides`` parses back to it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "None"
  if isinstance(value, str):
    return value
  if isinstance(value, int | float):
    return repr(value)
  if isinstance(value, list | tuple):
    return repr(tuple(value))
  raise UserError(f"sweep values must be str, int, float, bool, None or tuples; got {value!r}")


def _same(a, b) -> bool:
  """Whether two axis values make one config: the same override text, or equal numbers (``1`` and
  ``1.0`` set one float; a bool is not the number 1)."""
  numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
  return a == b if numbers else cli_value(a) == cli_value(b)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _to_plain(d, what: str = "sweep config") -> dict:
  if isinstance(d, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
    return d.to_dict()
  if not isinstance(d, Mapping):
    raise UserError(f"{what}: expected a mapping (a dict or ConfigDict), got {d!r}")
  return dict(d)


def _label(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, list | tuple):
    return "-".join(_label(v) for v in value)
  return str(value)


def point_name(values: Mapping[str, Any]) -> str:
  """``attention=softmax,lr=0.003`` (short keys unless two axes share a last component)."""
  if not values:
    return "base"
  leaves = [k.rsplit(".", 1)[-1] for k in values]
  keys = [leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(values, leaves, strict=True)]
  name = ",".join(f"{k}={_label(v)}" for k, v in zip(keys, values.values(), strict=True))
  name = re.sub(r"[^A-Za-z0-9._=,+-]", "-", name)
  if len(name) > _MAX_NAME:
    digest = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:8]
    name = f"{name[: _MAX_NAME - 9]}~{digest}"
  return name


def _combinations(axes: dict[str, list], mode: str, seed: int, count: int | None):
  keys, lists = list(axes), list(axes.values())
  if mode == "grid":
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
  total = math.prod(len(v) for v in lists)
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    raise UserError(f"sweep.count must be an int >= 1 for mode='random', got {count!r}")
  if count > total:
    raise UserError(f"sweep.count={count} exceeds the {total} distinct combinations of axes")
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise UserError(f"sweep.seed must be an int >= 0 for mode='random', got {seed!r}")
  rng = np.random.default_rng(seed)
  drawn: dict[int, None] = {}  # in draw order
  while len(drawn) < count:  # one at a time: a larger count keeps a smaller one's points
    drawn.setdefault(int(rng.integers(total)), None)
  out = []
  for flat in drawn:
    combo, rest = {}, int(flat)
    for key, values in zip(reversed(keys), reversed(lists), strict=True):  # mixed radix
      rest, i = divmod(rest, len(values))
      combo[key] = values[i]
    out.append({k: combo[k] for k in keys})
  return out


def _resolve_base(base) -> tuple[Path | None, ml_collections.ConfigDict]:
  if isinstance(base, str | Path):
    path = Path(base)
    if not path.is_absolute():
      candidates = [Path.cwd() / path, REPO_ROOT / path]
      path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
      raise UserFileNotFoundError(f"sweep.base={str(base)!r}: no such config file")
    return path.resolve(), load_config(path)
  if isinstance(base, ml_collections.ConfigDict):
    return None, base
  if isinstance(base, Mapping):
    return None, ml_collections.ConfigDict(dict(base))
  raise UserError(f"sweep.base must be a config file path or a ConfigDict, got {type(base)}")


def build_sweep(spec, *, base_path_for_inline: Path | None = None) -> Sweep:
  """Validates a sweep spec (the ``get_config()`` result) and expands its points.

  ``base_path_for_inline``: where an inline base ``ConfigDict`` is written for the train CLI
  (``write_inline_base``); required only when ``spec.base`` is not a path.
  """
  spec = _to_plain(spec)
  unknown = sorted(set(spec) - set(KEYS))
  if unknown:
    raise UserError(f"unknown sweep config keys {unknown}; known: {list(KEYS)}")
  if "base" not in spec:
    raise UserError("sweep config needs `base` (a config file path or a ConfigDict)")
  base_path, base = _resolve_base(spec["base"])
  inline_base = base_path is None
  if inline_base:
    base_path = base_path_for_inline or Path("base_config.py")
  axes = _flatten(_to_plain(spec.get("axes") or {}, "sweep.axes"))
  for key, values in axes.items():
    if not isinstance(values, list | tuple) or not values:
      raise UserError(f"sweep.axes[{key!r}] must be a non-empty list of values, got {values!r}")
    twice = next(
      (v for i, v in enumerate(values) if any(_same(v, w) for w in values[i + 1 :])), None
    )
    if twice is not None:
      raise UserError(
        f"sweep.axes[{key!r}] has {twice!r} more than once ({list(values)!r}); list each value once"
      )
  axes = {k: list(v) for k, v in axes.items()}
  mode = spec.get("mode", "grid")
  if mode not in MODES:
    raise UserError(f"sweep.mode must be one of {MODES}, got {mode!r}")
  seed = spec.get("seed", 0)
  count = spec.get("count")
  for key in ("count", "seed"):  # a grid ignores them: it would run every combination
    if mode == "grid" and spec.get(key) is not None:
      raise UserError(
        f"sweep.{key}={spec[key]!r} applies to mode='random' only (mode='grid' runs every "
        f"combination); set mode='random' or drop {key}"
      )
  fixed = _flatten(_to_plain(spec.get("overrides") or {}, "sweep.overrides"))
  variants = {
    name: _flatten(_to_plain(v)) for name, v in _to_plain(spec.get("variants") or {}).items()
  }
  if variants:
    if VARIANT in axes:
      raise UserError(f"sweep.axes may not have a {VARIANT!r} axis when sweep.variants is set")
    axes = {VARIANT: list(variants), **axes}
  for key in axes:  # a point's axis value is applied last: it would replace these unsaid
    setters = (["sweep.overrides"] if key in fixed else []) + [
      f"sweep.variants[{name!r}]" for name, v in variants.items() if key in v
    ]
    if setters:
      raise UserError(
        f"sweep.axes[{key!r}] is set by {', '.join(setters)} too: each point's axis value would "
        "silently replace it; sweep the key in one place"
      )
  combos = _combinations(axes, mode, seed, count) if axes else [{}]
  exclude = [_flatten(_to_plain(e, "sweep.exclude entry")) for e in spec.get("exclude") or []]
  if exclude and mode != "grid":
    # Dropping points after a random draw would silently run fewer than `count`.
    raise UserError("sweep.exclude works with mode='grid' only")
  for entry in exclude:
    for key, value in entry.items():
      if key not in axes or not any(_same(value, v) for v in axes[key]):
        raise UserError(f"sweep.exclude entry {entry}: {key}={value!r} is not an axis value")
  combos = [
    c for c in combos if not any(all(_same(c[k], v) for k, v in e.items()) for e in exclude)
  ]
  if not combos:
    raise UserError(f"sweep.exclude drops every point of the grid ({exclude}); keep at least one")
  points, names = [], set()
  for values in combos:
    chosen = variants.get(values.get(VARIANT), {})
    keyed = {k: v for k, v in values.items() if not (variants and k == VARIANT)}
    overrides = tuple(f"{k}={cli_value(v)}" for k, v in {**fixed, **chosen, **keyed}.items())
    try:
      config = apply_overrides(ml_collections.ConfigDict(base.to_dict()), overrides)
    except ValueError as e:
      raise UserError(f"sweep point {values}: {e}") from e
    name = point_name(values)
    if name in names:
      name = f"{name}~{hashlib.sha256(repr(values).encode()).hexdigest()[:8]}"
    names.add(name)
    points.append(Point(name, values, overrides, config))
  metric = spec.get("metric")
  _check_metric(metric, {str(p.config.data.source) for p in points})
  return Sweep(
    base_path=base_path,
    base=base,
    axes=axes,
    mode=mode,
    seed=seed,
    count=count,
    overrides=fixed,
    metric=metric,
    points=tuple(points),
    inline_base=inline_base,
  )


def _check_metric(metric, sources: set[str]) -> None:
  """Refuses a ``metric`` that names no column of the sweep's results (a typo would rank
  nothing and plot empty axes)."""
  if metric is None:
    return
  regression = bool(sources & set(REGRESSION_TASKS))
  known = METRIC_COLUMNS + (BASELINE_COLUMNS if regression else ())
  if metric in known:
    return
  if metric in BASELINE_COLUMNS:
    raise UserError(
      f"sweep.metric={metric!r} exists for the regression tasks {REGRESSION_TASKS} only (no "
      f"point's data.source is one); known: {', '.join(known)}"
    )
  raise UserError(
    f"sweep.metric={metric!r} is not a column of the results; known: {', '.join(known)}"
  )


def load_sweep(path: str | Path, workdir: str | Path | None = None) -> Sweep:
  """Imports ``get_config()`` from a sweep file; an inline base is written under ``workdir``."""
  spec = import_get_config(path, "sweep config")
  inline = None if workdir is None else Path(workdir).resolve() / "base_config.py"
  return build_sweep(spec, base_path_for_inline=inline)


_INLINE_TEMPLATE = '''"""Inline base config of a sweep (written by `parallax-jax sweep`)."""

import json
from pathlib import Path

import ml_collections


def get_config():
  text = (Path(__file__).parent / "base_config.json").read_text()
  return ml_collections.ConfigDict(json.loads(text))
'''


def write_inline_base(sweep: Sweep) -> None:
  """Writes an inline base config where the train CLI will load it (no-op for file bases); a
  rerun rewrites it, so that a changed inline base is the one its points train."""
  if not sweep.inline_base:
    return
  sweep.base_path.parent.mkdir(parents=True, exist_ok=True)
  (sweep.base_path.parent / "base_config.json").write_text(
    json.dumps(sweep.base.to_dict(), indent=2) + "\n"
  )
  sweep.base_path.write_text(_INLINE_TEMPLATE)


def describe(sweep: Sweep) -> dict:
  return {
    "base": str(sweep.base_path),
    "axes": sweep.axes,
    "mode": sweep.mode,
    "seed": sweep.seed,
    "count": sweep.count,
    "overrides": sweep.overrides,
    "points": [p.name for p in sweep.points],
  }


__all__: Sequence[str] = [
  "Point",
  "Sweep",
  "build_sweep",
  "cli_value",
  "describe",
  "load_sweep",
  "point_name",
  "write_inline_base",
]


def point_patterns(patterns: str | Sequence[str] | None) -> list[str]:
  """``--points``' fnmatch patterns: each argument that holds ``=`` is one pattern (a point's
  name joins its axes with commas, ``variant=a,seed=0``); any other is a comma list of them
  (variant names, ``a,b``)."""
  if isinstance(patterns, str):
    patterns = [patterns]
  out = []
  for arg in patterns or ():
    parts = [arg] if "=" in arg else arg.split(",")
    out.extend(p.strip() for p in parts if p.strip())
  return out


def select_points(sweep: Sweep, patterns: str | Sequence[str] | None) -> Sweep:
  """The sweep restricted to the points whose name (``variant=...,seed=...``) or variant name
  matches one of ``patterns`` (``--points``, read by `point_patterns`): one device call can
  run a few points of a larger study into its own workdir. None or empty: every point. A
  pattern that matches nothing is a UserError naming the points."""
  names = point_patterns(patterns)
  if not names:
    return sweep

  def keys(point: Point) -> list[str]:
    parts = dict(part.split("=", 1) for part in point.name.split(",") if "=" in part)
    return [point.name] + ([parts["variant"]] if "variant" in parts else [])

  unmatched = [n for n in names if not any(fnmatch.filter(keys(p), n) for p in sweep.points)]
  if unmatched:
    raise UserError(
      f"--points {unmatched} match no point of the sweep; its points: "
      f"{', '.join(p.name for p in sweep.points)}"
    )
  chosen = tuple(p for p in sweep.points if any(fnmatch.filter(keys(p), n) for n in names))
  return dataclasses.replace(sweep, points=chosen)
