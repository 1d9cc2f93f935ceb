"""Building frozen config dataclasses from config sections: the one ``from_dict`` helper."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


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
    raise ValueError(f"unknown {section} config keys {unknown}; known: {sorted(fields)}")
  kwargs = dict(d)
  for name, value in kwargs.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
      kwargs[name] = from_section(type(default), f"{section}.{name}", value)
  return cls(**kwargs)
