"""Checkpoints in and out: Hugging Face Qwen3 import (``import_hf``) and export (``export_hf``).

``hf_names`` is the one tensor-name table both directions use; ``hf_config`` maps config.json;
``safetensors_io`` streams tensors. Nothing here needs torch.
"""
