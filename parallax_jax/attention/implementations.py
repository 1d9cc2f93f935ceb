"""The registry of Parallax implementations and the choice among them.

An implementation is a forward that returns ``(o, Residuals)`` and a backward that maps the
residuals and ``dO`` to ``(dq, dr, dk, dv)`` (wired into one ``jax.custom_vjp`` by ``api``),
or, for "reference", a plain function differentiated by JAX. Kernels live in
``pallas_kernels`` and are imported only when asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable

import jax

from parallax_jax.attention.validation import CallSpec

log = logging.getLogger("parallax_jax")


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One way of computing Parallax attention.

  Attributes:
    name: the ``implementation=`` string.
    fwd: ``fwd(q, r, k, v, segment_ids, spec) -> (o, Residuals)`` (custom_vjp paths), or
      ``fwd(q, r, k, v, segment_ids, spec) -> o`` when ``bwd`` is None (autodiff).
    bwd: ``bwd(q, r, k, v, segment_ids, residuals, do, spec) -> (dq, dr, dk, dv)`` or None.
    platforms: backends it compiles for natively; with ``spec.interpret`` it runs anywhere.
    check: raises NotImplementedError (saying why) for a call it cannot serve.
  """

  name: str
  fwd: Callable
  bwd: Callable | None
  platforms: tuple[str, ...]
  check: Callable[[CallSpec], None] = lambda spec: None
  interpretable: bool = False

  def ensure_supported(self, spec: CallSpec, platform: str) -> None:
    if platform not in self.platforms and not (self.interpretable and spec.interpret):
      hint = (
        " (or pass interpret=True to run its kernels in interpret mode)"
        if self.interpretable
        else ""
      )
      raise NotImplementedError(
        f"implementation={self.name!r} runs on {', '.join(self.platforms)}, not on the "
        f"'{platform}' backend{hint}."
      )
    self.check(spec)


# name -> "module:attribute" of an Implementation; modules are imported on first use.
_REGISTRY: dict[str, str] = {
  "reference": "parallax_jax.attention.reference:IMPLEMENTATION",
  "xla": "parallax_jax.attention.xla:IMPLEMENTATION",
  "pallas_gpu": "pallas_kernels.gpu:IMPLEMENTATION",
  "pallas_tpu": "pallas_kernels.tpu:IMPLEMENTATION",
}

# What implementation=None tries, per backend, in order.
_PREFERENCE: dict[str, tuple[str, ...]] = {
  "gpu": ("pallas_gpu", "xla"),
  "tpu": ("pallas_tpu", "xla"),
}
_DEFAULT_PREFERENCE = ("xla",)

_logged: set[tuple] = set()


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Implementation:
  if name not in _REGISTRY:
    raise ValueError(f"implementation must be None or one of {names()}, got {name!r}.")
  module, attr = _REGISTRY[name].split(":")
  try:
    impl = getattr(importlib.import_module(module), attr)
  except ImportError as e:  # e.g. a kernel family whose Pallas backend is missing
    raise NotImplementedError(f"implementation={name!r} is unavailable here: {e}") from e
  return impl


def select(implementation: str | None, spec: CallSpec) -> Implementation:
  """The implementation that serves this call; explicit requests raise if they cannot."""
  platform = jax.default_backend()
  if implementation is not None:
    impl = get(implementation)
    impl.ensure_supported(spec, platform)
    return impl
  reasons = []
  for name in _PREFERENCE.get(platform, _DEFAULT_PREFERENCE):
    try:
      impl = get(name)
      impl.ensure_supported(spec, platform)
    except NotImplementedError as e:
      reasons.append(f"{name}: {e}")
      continue
    key = (platform, name, tuple(reasons))
    if key not in _logged:
      _logged.add(key)
      skipped = f" (skipped {'; '.join(reasons)})" if reasons else ""
      log.info("parallax_attention: implementation=None on %s uses %r%s.", platform, name, skipped)
    return impl
  raise NotImplementedError("no implementation can serve this call: " + "; ".join(reasons))
