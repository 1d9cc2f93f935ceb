import os
import re
import shlex
import sys


def _gpu_mode() -> bool:
  """``-m`` selects the ``gpu`` marker (``python -m pytest -m gpu``): keep JAX's accelerator.

  Read from the command line because JAX fixes its platforms when first imported, before
  pytest hands the parsed options to any hook.
  """
  args = shlex.split(os.environ.get("PYTEST_ADDOPTS", "")) + sys.argv[1:]
  exprs = [b for a, b in zip(args, args[1:], strict=False) if a in ("-m", "--markexpr")]
  exprs += [a[2:] for a in args if a.startswith("-m") and len(a) > 2]
  return any(re.search(r"(?<!not )\bgpu\b", e) for e in exprs)


# The controller decides once and hands the decision to its pytest-xdist workers through the
# environment they inherit (a worker's own command line does not carry ``-m``).
_MODE = os.environ.setdefault("PARALLAX_TESTS_PLATFORM", "gpu" if _gpu_mode() else "cpu")
if _MODE == "cpu":
  # The default suite runs on CPU even on an accelerator host (kernels in interpret mode).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # Every test process sees 8 CPU devices, so sharding tests (8 fake devices) and the rest
  # share one pytest run; single-device code is unaffected. The suite's tensors are tiny, so
  # its time is mostly XLA compiling thousands of small programs: LLVM's optimisation level 0
  # compiles ~35% faster and changes no result (HLO passes, and so numerics and buffer
  # assignment, are untouched; fast-math stays off). Set before jax is imported; the CLI
  # subprocesses the tests start inherit it.
  os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true",
  )

# Test helpers (attention_cases) are imported as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))
