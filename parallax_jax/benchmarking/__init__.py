"""Measuring tools the CLI and ``experiments/`` share: sharding comparison, memory, timing."""
