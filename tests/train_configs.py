"""Override lists that shrink ``configs/tiny.py`` to a seconds-long CPU run, for training tests.

Imported as a top-level module (like ``attention_cases``); each test adds what it varies.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"

# A one-layer, 64-wide model on 64-token rows, no eval, plain logs.
SMALL_MODEL = [
  "--config.model.d_model=64",
  "--config.model.num_layers=1",
  "--config.model.mlp_dim=128",
  "--config.model.head_dim=16",
  "--config.train.batch_size=8",
  "--config.train.seq_len=64",
  "--config.train.log_every=1",
  "--config.train.eval_every=0",
  "--config.train.progress_bar=false",
]
# A short warmup and a high learning rate, so the loss visibly falls within a few steps.
FAST_LR = ["--config.optimizer.warmup_steps=5", "--config.optimizer.learning_rate=1e-2"]
# Two layers of 4 query / 2 KV heads on 8 rows: every mesh of 8 devices splits it (sharding
# tests); plain ``key=value`` overrides (``load_config``'s form).
SHARDABLE = [
  "model.d_model=64",
  "model.num_layers=2",
  "model.mlp_dim=128",
  "model.head_dim=16",
  "model.num_heads=4",
  "model.num_kv_heads=2",
  "train.batch_size=8",
  "train.seq_len=64",
  "train.progress_bar=false",
]
