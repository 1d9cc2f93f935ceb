"""The registries of Parallax implementations and the choice among them.

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
    interpretable: its kernels run anywhere in Pallas interpret mode (``spec.interpret``).
    backward_variant: for paths that choose among backwards, ``(spec) -> hashable`` read
      when the op is called; ``api`` makes it a static argument of the custom VJP (so a cached
      trace never serves another variant) and passes it to ``bwd`` as ``variant=``.

  The decode op (``parallax_jax.decode``) uses the same class: ``fwd(q, r, k_cache, v_cache,
  lengths, spec) -> o`` and no ``bwd``.
  """

  name: str
  fwd: Callable
  bwd: Callable | None
  platforms: tuple[str, ...]
  check: Callable[[CallSpec], None] = lambda spec: None
  interpretable: bool = False
  backward_variant: Callable[[CallSpec], object] | None = None

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


class Registry:
  """The implementations of one op by name, and ``implementation=None``'s choice among them.

  Args:
    op: the op's name, for messages and the log line.
    entries: name -> ``"module:attribute"`` of an ``Implementation``; modules are imported on
      first use (kernel families whose Pallas backend is missing stay unimported).
    preference: per backend, the names ``implementation=None`` tries, in order.
    default_preference: the names tried on any other backend.
  """

  def __init__(
    self,
    op: str,
    entries: dict[str, str],
    preference: dict[str, tuple[str, ...]],
    default_preference: tuple[str, ...] = ("xla",),
  ):
    self.op = op
    self._entries = dict(entries)
    self._preference = dict(preference)
    self._default_preference = tuple(default_preference)
    self._logged: set[tuple] = set()

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def get(self, name: str) -> Implementation:
    if not isinstance(name, str) or name not in self._entries:  # a list is unhashable
      raise ValueError(f"implementation must be None or one of {self.names()}, got {name!r}.")
    module, attr = self._entries[name].split(":")
    try:
      impl = getattr(importlib.import_module(module), attr)
    except ImportError as e:  # e.g. a kernel family whose Pallas backend is missing
      raise NotImplementedError(f"implementation={name!r} is unavailable here: {e}") from e
    return impl

  def select(self, implementation: str | None, spec) -> Implementation:
    """The implementation that serves this call; explicit requests raise if they cannot."""
    platform = jax.default_backend()
    if implementation is not None:
      impl = self.get(implementation)
      impl.ensure_supported(spec, platform)
      return impl
    reasons = []
    for name in self._preference.get(platform, self._default_preference):
      try:
        impl = self.get(name)
        impl.ensure_supported(spec, platform)
      except NotImplementedError as e:
        reasons.append(f"{name}: {e}")
        continue
      key = (platform, name, tuple(reasons))
      if key not in self._logged:
        self._logged.add(key)
        skipped = f" (skipped {'; '.join(reasons)})" if reasons else ""
        log.info("%s: implementation=None on %s uses %r%s.", self.op, platform, name, skipped)
      return impl
    raise NotImplementedError(
      f"no {self.op} implementation can serve this call: " + "; ".join(reasons)
    )

  def clear_log(self) -> None:
    """Forget which choices were logged (tests of the log line)."""
    self._logged.clear()


ATTENTION = Registry(
  "parallax_attention",
  {
    "reference": "parallax_jax.attention.reference:IMPLEMENTATION",
    "xla": "parallax_jax.attention.xla:IMPLEMENTATION",
    "pallas_gpu": "pallas_kernels.gpu:IMPLEMENTATION",
    "pallas_mosaic_gpu": "pallas_kernels.mosaic_gpu:IMPLEMENTATION",
    "pallas_tpu": "pallas_kernels.tpu:IMPLEMENTATION",
  },
  # GPU: the Mosaic forward (Hopper; bf16/f16, D 64/128) where it serves the call, measured
  # faster than the Triton forward at every benchmarked shape (docs/design.md §6.3), else Triton.
  {"gpu": ("pallas_mosaic_gpu", "pallas_gpu", "xla"), "tpu": ("pallas_tpu", "xla")},
)

# The attention op's registry as module functions (``implementations.select(...)``).
names, get, select = ATTENTION.names, ATTENTION.get, ATTENTION.select
