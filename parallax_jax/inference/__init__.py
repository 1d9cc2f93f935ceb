"""Text generation with the KV cache: sampling, the jitted decode loop, loading a trained run
(docs/design.md §13.5)."""

from parallax_jax.inference.generate import GenerationResult, generate
from parallax_jax.inference.sampling import SamplingConfig, sample

__all__ = ["GenerationResult", "SamplingConfig", "generate", "sample"]
