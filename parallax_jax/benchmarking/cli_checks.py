"""The experiment scripts' shared argument checks: a bad flag is one ``p.error`` line naming it and
the fix (exit 2) before anything is built or written, not a traceback or a file of error rows."""

from __future__ import annotations

import argparse

from parallax_jax.errors import UserError
from parallax_jax.model.config import ATTENTION_KINDS, attention_paths
from parallax_jax.train.config import load_config


def attention_kind(p: argparse.ArgumentParser, flag: str, kind: str) -> str:
  """``kind`` if it is a ``model.attention`` kind, else ``p.error`` naming ``flag``."""
  if kind not in ATTENTION_KINDS:
    p.error(f"{flag}: unknown attention {kind!r}; choose from {', '.join(ATTENTION_KINDS)}")
  return kind


def attention_impl(
  p: argparse.ArgumentParser, flag: str, kind: str, impl: str | None, unset: str = "leave it out"
) -> str | None:
  """``impl`` if ``kind`` has that ``model.attention_impl`` (None: the best available), else
  ``p.error`` naming ``flag``, the kind's paths and ``unset`` (how to ask for the default)."""
  paths = attention_paths(attention_kind(p, "--attention", kind))
  if impl is not None and impl not in paths:
    choices = f"choose from {', '.join(paths)} or {unset}" if paths else unset
    p.error(f"{flag}: attention {kind!r} has no implementation {impl!r}; {choices}")
  return impl


def choice(p: argparse.ArgumentParser, flag: str, value: str, choices) -> str:
  """``value`` if it is one of ``choices`` (e.g. ``model.config.DTYPES``), else ``p.error``."""
  if value not in choices:
    p.error(f"{flag}: unknown {value!r}; choose from {', '.join(choices)}")
  return value


def at_least(p: argparse.ArgumentParser, args, minimum: int, *names: str) -> None:
  """``p.error`` naming the first of ``args``' flags ``names`` (dest names) below ``minimum``;
  None (a flag left to its default) passes."""
  for name in names:
    value = getattr(args, name)
    if value is not None and value < minimum:
      p.error(f"--{name.replace('_', '-')}: must be >= {minimum}, got {value}")


def gpu_host(p: argparse.ArgumentParser, what: str, fix: str = "") -> None:
  """``p.error`` unless JAX's default backend is a GPU: ``what`` (e.g. "compiles the kernels")
  would otherwise end in a traceback or error rows; ``fix`` says what to pass instead."""
  import jax

  if (backend := jax.default_backend()) != "gpu":
    p.error(f"{what} on a GPU, not on this {backend!r} host" + (f"; {fix}" if fix else ""))


def positive_ints(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
  """``"1,32"`` -> ``[1, 32]``; anything but a comma list of ints >= 1 is ``p.error``."""
  try:
    values = [int(x) for x in text.split(",")]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    p.error(f"{flag}: expected a comma list of integers >= 1 such as 1,32, got {text!r}")
  return values


def config(p: argparse.ArgumentParser, path: str, overrides=()):
  """``load_config(path, overrides)``; a missing or bad config file, or a bad override, is one
  ``p.error`` line naming ``--config`` instead of a traceback."""
  try:
    return load_config(path, list(overrides))
  except UserError as e:
    p.error(f"--config: {e}")
