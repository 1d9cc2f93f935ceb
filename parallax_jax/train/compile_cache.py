"""JAX's persistent compilation cache for training processes (``train.compilation_cache_dir``).

A restarted run (preempted, killed, resumed) compiles the same step again: 1-2 minutes at 0.6B
on one GPU, most of it the attention kernels of every layer. With a cache directory, the second
process loads the executables instead. The cache is keyed by the computation, the devices and
the jax/XLA versions, so a stale entry is never used; deleting the directory is always safe.
"""

from __future__ import annotations

import logging
import os

import jax

from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")


def use_compilation_cache(directory: str | None) -> str | None:
  """Points this process's persistent compilation cache at ``directory`` (``~`` expanded;
  created); None or "": leaves JAX's setting as it is. Returns the directory in use."""
  if not directory:
    return jax.config.jax_compilation_cache_dir
  path = os.path.abspath(os.path.expanduser(directory))
  if jax.config.jax_compilation_cache_dir != path:
    from jax.experimental.compilation_cache import compilation_cache

    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:  # a file in the way, no permission (a file itself: refused by config)
      raise UserError(
        f"train.compilation_cache_dir={directory!r}: cannot create the directory ({e}); give "
        "a directory this process can write, or '' for JAX's own setting"
      ) from e
    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()  # JAX opens its cache once per process: reopen it here
    log.info("persistent compilation cache: %s", path)
  return path
