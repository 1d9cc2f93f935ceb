"""Config files and sections: importing a file's ``get_config()``, and the one ``from_dict``
helper that builds frozen config dataclasses from sections."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parallax_jax.errors import UserError, UserFileNotFoundError


def import_get_config(path: str | Path, kind: str = "config"):
  """``get_config()`` of the Python file at ``path``; ``kind`` names the file in messages.

  A missing file, one that fails to import (a syntax error, a failing import) or one without
  ``get_config`` is the user's to fix: each raises ``UserError`` in one line.
  """
  path = Path(path)
  if path.is_dir():
    raise UserError(f"{kind} file {str(path)!r} is a directory; give a .py file with get_config()")
  if not path.is_file():
    raise UserFileNotFoundError(f"{kind} file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_parallax_{kind}_{path.stem}", path)
  if spec is None or spec.loader is None:  # not a Python file (README.md, a JSON file, ...)
    raise UserError(
      f"{kind} file {str(path)!r} is not a Python file; give a .py file with get_config()"
    )
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the file's own error, shown as one line with its location
    where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
    raise UserError(
      f"{kind} file {str(path)!r} failed to import{where}: {type(e).__name__}: {e}"
    ) from e
  if not hasattr(module, "get_config"):
    raise UserError(f"{kind} file {str(path)!r} has no get_config()")
  try:
    return module.get_config()
  except Exception as e:
    raise UserError(
      f"{kind} file {str(path)!r}: get_config() raised {type(e).__name__}: {e}"
    ) from e


# jax.random.key(seed) keeps 32 bits: a seed outside 0 .. SEED_MAX would repeat one inside.
SEED_MAX = 2**32 - 1


def require_number(
  key: str,
  value,
  *,
  at_least: float | None = None,
  above: float | None = None,
  below: float | None = None,
  at_most: float | None = None,
  integer: bool = False,
  none: str | None = None,
) -> None:
  """Raises ``UserError`` naming ``key`` unless ``value`` is a finite number (``integer``: an
  int; a bool is neither) within the bounds given; ``none``: None is allowed too, and means
  this (shown in the message)."""
  if value is None and none is not None:
    return
  if integer:
    ok, kind = isinstance(value, int) and not isinstance(value, bool), "an int"
  else:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok, kind = number and math.isfinite(value), "a finite number"
  lo = "" if at_least is None and above is None else ("[" if above is None else "(")
  hi = "" if at_most is None and below is None else ("]" if below is None else ")")
  low = at_least if above is None else above
  high = at_most if below is None else below
  if ok:
    ok = (
      (at_least is None or value >= at_least)
      and (above is None or value > above)
      and (below is None or value < below)
      and (at_most is None or value <= at_most)
    )
  if ok:
    return
  fmt = "" if integer else "g"  # an int's bounds in full (4294967295, not 4.29497e+09)
  if lo and hi:
    what = f"{kind} in {lo}{low:{fmt}}, {high:{fmt}}{hi}"
  elif lo:
    what = f"{kind} {'>=' if lo == '[' else '>'} {low:{fmt}}"
  elif hi:
    what = f"{kind} {'<=' if hi == ']' else '<'} {high:{fmt}}"
  else:
    what = kind
  if none is not None:
    what += f" or None ({none})"
  raise UserError(f"{key} must be {what}, got {value!r}")


def from_section(cls, section: str, d: Mapping[str, Any] | Any):
  """``cls(**d)`` for a mapping or ``ConfigDict``; unknown keys raise, naming the section.

  A field whose default is itself a config dataclass (``ModelConfig.axes``) is built from a
  nested mapping the same way (section ``"<section>.<field>"``).
  """
  if hasattr(d, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    d = d.to_dict()
  if not isinstance(d, Mapping):
    raise TypeError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise UserError(f"unknown {section} config keys {unknown}; known: {sorted(fields)}")
  kwargs = dict(d)
  for name, value in kwargs.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
      kwargs[name] = from_section(type(default), f"{section}.{name}", value)
  return cls(**kwargs)
