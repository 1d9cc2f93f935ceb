"""The pytest face of the shared case grid (``parallax_jax/testing/attention_cases.py``).

One parametrised base: the test modules take ``(implementation, case)`` pairs from here, so
adding a kernel means adding one entry to ``IMPLEMENTATIONS``. Cases, inputs, the oracle and
the one tolerance table live in the package module, shared with ``experiments/``.

GPU mode: ``python -m pytest -m gpu`` runs ``gpu_params()`` (the Pallas GPU kernels compiled
for the GPU, ``interpret=False``) against the same oracle and tolerances; without a GPU
backend those tests skip, saying why, and the default run (``-m 'not slow and not gpu'``)
deselects them.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

from parallax_jax.testing.attention_cases import (  # noqa: F401  (re-exported for the tests)
  CASES,
  CORE_CASES,
  TOLERANCES,
  Case,
  assert_close,
  check_case,
  errors,
  make_inputs,
  natural_scale,
  oracle_result,
)
from parallax_jax.testing.attention_cases import run_op as _run_op


@dataclasses.dataclass(frozen=True)
class Impl:
  """An implementation under test: its name, whether it runs as an interpreted kernel."""

  name: str
  interpret: bool = False
  # Kernel paths run in interpret mode on CPU: they take the "core" grid by default and the
  # full grid only under -m slow.
  fast_grid: bool = True

  def __str__(self):
    return self.name


IMPLEMENTATIONS = [
  Impl("reference"),
  Impl("xla"),
  Impl("pallas_gpu", interpret=True, fast_grid=False),
  Impl("pallas_tpu", interpret=True, fast_grid=False),
]

GPU_COMMAND = "python -m pytest -m gpu"


def cases_for(impl: Impl, cases=CASES):
  """``pytest.param`` list of the cases this implementation runs (slow-marked beyond core)."""
  out = []
  for case in cases:
    marks = [] if (impl.fast_grid or case.core) else [pytest.mark.slow]
    out.append(pytest.param(impl, case, id=f"{impl}-{case.id}", marks=marks))
  return out


def all_params():
  return [p for impl in IMPLEMENTATIONS for p in cases_for(impl)]


def run_op(impl: Impl, case: Case, seed: int = 0, block_sizes=None, deterministic=True):
  """The op's output and (dq, dr, dk, dv) under ``jax.vjp`` with the case's cotangent."""
  return _run_op(
    impl.name,
    case,
    interpret=impl.interpret,
    block_sizes=block_sizes,
    seed=seed,
    deterministic=deterministic,
  )


def require_gpu():
  """Skips (with the reason) unless JAX's default backend is a GPU."""
  backend = jax.default_backend()
  if backend != "gpu":
    pytest.skip(
      f"GPU mode needs a GPU backend, JAX has {backend!r} (JAX_PLATFORMS="
      f"{jax.config.jax_platforms!r}); run `{GPU_COMMAND}` on a CUDA machine with jax[cuda12]."
    )


def block_config_params(block_configs: dict):
  """``(case, blocks)`` params of a kernel's block configs over the shared cases: core case ``i``
  runs config ``i mod n`` by default; every other pairing is marked slow."""
  names = list(block_configs)
  out = []
  for case in CASES:
    default = names[CORE_CASES.index(case) % len(names)] if case.core else None
    for name, blocks in block_configs.items():
      marks = [] if name == default else [pytest.mark.slow]
      out.append(pytest.param(case, blocks, id=f"{name}-{case.id}", marks=marks))
  return out


def gpu_params(block_configs: dict):
  """``(case, block_sizes)`` params for GPU mode: every case with each named block config,
  marked ``gpu`` (deselected by default)."""
  return [
    pytest.param(case, blocks, id=f"{name}-{case.id}", marks=[pytest.mark.gpu])
    for name, blocks in block_configs.items()
    for case in CASES
  ]
