import faulthandler
import os
import re
import shlex
import shutil
import sys
import tempfile

import pytest


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
_OWNED_COMPILE_CACHE = None  # the compilation cache directory this process made (below)
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
  # Many tests compile the same programs (the tiny model's train step in every CLI subprocess,
  # resumed run and worker): JAX's persistent compilation cache, one fresh directory shared by
  # the session's processes, loads them instead (the training tests took 17% less time on 2
  # cores). The cache is keyed by the computation, flags and versions, so a hit is the program
  # the miss would have compiled. Removed when the session ends; a directory set in the
  # environment is used as it is; PARALLAX_TESTS_COMPILE_CACHE=0 turns it off.
  if os.environ.get("PARALLAX_TESTS_COMPILE_CACHE", "1") != "0" and not os.environ.get(
    "JAX_COMPILATION_CACHE_DIR"
  ):
    _OWNED_COMPILE_CACHE = tempfile.mkdtemp(prefix="parallax_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWNED_COMPILE_CACHE
    # JAX's default caches compiles of 1 s or more; most of the suite's are 0.1-1 s
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
else:
  # GPU mode under pytest-xdist: each worker is a process with its own JAX client, and JAX's
  # default preallocation (75% of the GPU per process) can leave the next worker too little
  # to create its CUDA context (seen with -n 4 on the H200: "CUDA_ERROR_OUT_OF_MEMORY", and
  # that worker's tests failed or skipped on the CPU). The grid's tensors are small: allocate
  # on demand.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_sessionfinish(session, exitstatus):
  if _OWNED_COMPILE_CACHE:  # the controller, after its workers have ended
    shutil.rmtree(_OWNED_COMPILE_CACHE, ignore_errors=True)


# Importing the package adds the XLA:CPU flags it needs (docs/design.md §11.3); first, so no
# test module starts a JAX backend without them.
import parallax_jax  # noqa: E402, F401

# Test helpers (attention_cases) are imported as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))


# A test that runs longer than this ends its process instead of hanging the suite: an
# interpreted Mosaic GPU kernel whose grid or barrier indices are wrong waits forever inside
# XLA's C++ (seen with a mislabelled grid axis), where no Python signal handler can run.
# faulthandler's watchdog thread prints every thread's stack and exits; pytest-xdist reports the
# worker's crash as that test's failure and starts a new worker. 0 turns it off.
_TEST_TIMEOUT_S = int(os.environ.get("PARALLAX_TEST_TIMEOUT_S", "900"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
  if _TEST_TIMEOUT_S:
    faulthandler.dump_traceback_later(_TEST_TIMEOUT_S, exit=True)
  try:
    yield
  finally:
    faulthandler.cancel_dump_traceback_later()
