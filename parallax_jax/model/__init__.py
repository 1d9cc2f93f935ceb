"""Qwen3-style decoder with Parallax or softmax attention (Flax NNX)."""

from parallax_jax.model.config import LogicalAxes, ModelConfig
from parallax_jax.model.transformer import Transformer

__all__ = ["LogicalAxes", "ModelConfig", "Transformer"]
