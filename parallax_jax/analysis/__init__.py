"""Analysis of trained models: attention effective weights and their statistics."""

from parallax_jax.analysis.attention_stats import AttentionStats, attention_stats, capture_scored

__all__ = ["AttentionStats", "attention_stats", "capture_scored"]
