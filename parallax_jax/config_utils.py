"""Building frozen config dataclasses from config sections."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def from_section(cls, section: str, d: Mapping[str, Any] | Any):
  """``cls(**d)`` for a mapping or ConfigDict; unknown keys raise, naming the section."""
  if hasattr(d, "to_dict"):  # ml_collections.ConfigDict
    d = d.to_dict()
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"unknown {section} config keys {unknown}; known: {sorted(fields)}")
  return cls(**dict(d))
