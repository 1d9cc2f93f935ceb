"""XLA:CPU flags that keep jitted CPU results correct on the jaxlib this package runs on.

jaxlib 0.10.2's XLA:CPU fuses broadcast-multiply-reduce patterns into XNNPACK "YNN" fusions
that miscompile some shapes with a size-1 axis: jitted code returns wrong numbers (off by
orders of magnitude, varying from run to run), no error. One of this package's paths met it
(the "pallas_tpu" decode's split merge in interpret mode, B = 5, Hkv = 1, D = 64); a CPU
training step holds over a hundred such fusions. ``apply()`` turns the YNN fusions off
(``--xla_cpu_experimental_ynn_fusion_type=``) on the affected jaxlib by appending to
``XLA_FLAGS``, which XLA reads when the CPU backend starts: it runs when ``parallax_jax`` is
imported, so import it before the first JAX computation. CPU speed is unchanged at the sizes
measured (docs/design.md §11.3). A ``XLA_FLAGS`` that sets the flag itself is left alone.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

log = logging.getLogger("parallax_jax")

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# The versions where the miscompile was measured and the flag parses (an unknown flag in
# XLA_FLAGS is fatal, so the list is explicit, not "every version from"). 0.11.2 computes the
# pattern right without it (design §11.3).
AFFECTED_JAXLIB = frozenset({"0.10.2"})


def jaxlib_version() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def _cpu_backend_started() -> bool:
  """Whether XLA has already read its flags (any backend created); False when unknown."""
  try:
    from jax._src import xla_bridge
  except ImportError:
    return False
  return bool(getattr(xla_bridge, "_backends", None))


def apply(environ=os.environ, version: str | None = None) -> bool:
  """Adds ``--xla_cpu_experimental_ynn_fusion_type=`` to ``environ["XLA_FLAGS"]`` on an
  affected jaxlib (``version``: default the installed one) unless the flags name it already.
  Returns whether it added the flag. Warns if JAX's backends have started (too late to act)."""
  version = jaxlib_version() if version is None else version
  flags = environ.get("XLA_FLAGS", "")
  if version not in AFFECTED_JAXLIB or YNN_FLAG in flags:
    return False
  if _cpu_backend_started():
    log.warning(
      "jaxlib %s's XLA:CPU miscompiles some fusions (docs/design.md §11.3), and JAX started "
      "before parallax_jax was imported, so its fix could not be applied: import parallax_jax "
      "first, or set XLA_FLAGS=--%s= yourself",
      version,
      YNN_FLAG,
    )
    return False
  environ["XLA_FLAGS"] = f"{flags} --{YNN_FLAG}=".strip()
  return True
