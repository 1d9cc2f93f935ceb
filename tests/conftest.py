import os
import sys

# Every test process sees 8 CPU devices, so sharding tests (8 fake devices) and the rest share
# one pytest run; single-device code is unaffected. Must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Test helpers (oracle, attention_cases) are imported as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))
