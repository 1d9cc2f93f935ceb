"""``BlockSizes``: one shape for every path, each path's own rules, the GPU tuned defaults."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from pallas_kernels.gpu import block_sizes as gpu_blocks
from pallas_kernels.tpu import block_sizes as tpu_blocks
from parallax_jax import BlockSizes, Tile, parallax_attention

X = jnp.zeros((1, 40, 2, 16), jnp.float32)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(block_q=0, block_k=4), "Tile.block_q must be a positive int"),
    (dict(block_q=4, block_k=2.0), "Tile.block_k must be a positive int"),
    (dict(block_q=True, block_k=4), "Tile.block_q must be a positive int"),
    (dict(block_q=4, block_k=4, num_warps=0), "Tile.num_warps must be a positive int"),
  ],
)
def test_tile_validation_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Tile(**kwargs)


def test_block_sizes_needs_tiles():
  with pytest.raises(TypeError, match="BlockSizes.dq must be a Tile"):
    BlockSizes(Tile(8, 8), (8, 8), Tile(8, 8))
  bs = BlockSizes.uniform(16, 32, num_warps=4, num_stages=2)
  assert bs.fwd == bs.dq == bs.dkv == Tile(16, 32, 4, 2)
  assert hash(bs) == hash(BlockSizes.uniform(16, 32, num_warps=4, num_stages=2))  # jit-static


@pytest.mark.parametrize(
  "impl,bs,match",
  [
    ("xla", BlockSizes(Tile(8, 8), Tile(8, 8), Tile(16, 8)), "dkv must equal block_sizes.dq"),
    ("xla", BlockSizes.uniform(8, num_warps=4), "no launch parameters"),
    ("reference", BlockSizes.uniform(8), "takes no block_sizes"),
    ("pallas_gpu", BlockSizes.uniform(24, num_warps=4, num_stages=2), "power of two >= 16"),
    ("pallas_gpu", BlockSizes.uniform(16), "num_warps must be a power of two"),
    ("pallas_gpu", BlockSizes.uniform(16, num_warps=4, num_stages=9), r"num_stages must be in"),
    ("pallas_tpu", BlockSizes.uniform(192), "fwd.block_q=192 must be a multiple of 128"),
    ("pallas_tpu", BlockSizes.uniform(128, num_stages=2), "no launch parameters"),
  ],
)
def test_each_path_refuses_what_it_cannot_run(impl, bs, match):
  with pytest.raises(NotImplementedError, match=match):
    parallax_attention(X, X, X, X, implementation=impl, interpret=True, block_sizes=bs)


def test_xla_uses_each_pass_tile():
  """Different forward and backward tiles are fine (only dq/dkv share the fused loop)."""
  import jax

  bs = BlockSizes(Tile(8, 16), Tile(16, 8), Tile(16, 8))
  f = lambda q, b: parallax_attention(q, X, X, X, implementation="xla", block_sizes=b).sum()
  g1 = jax.grad(f)(X + 1.0, bs)
  g2 = jax.grad(f)(X + 1.0, None)
  assert jnp.allclose(g1, g2, atol=1e-5)


def test_gpu_clip_and_tuned_defaults():
  tile = gpu_blocks.clip(Tile(128, 64, 4, 2), 20, 300)
  assert (tile.block_q, tile.block_k) == (32, 64)  # next power of two >= 16 of the lengths
  assert gpu_blocks.clip(Tile(32, 64, 4, 2), 1, 1) == Tile(16, 16, 4, 2)
  with open(gpu_blocks._JSON) as f:
    entries = json.load(f)["entries"]
  for dtype in ("float32", "bfloat16", "float16"):
    for d in (32, 60, 64, 100, 128, 256):
      bs = gpu_blocks.default_block_sizes(dtype, d)
      gpu_blocks.check(bs)  # every bucket's defaults are runnable
      key = f"{'bfloat16' if dtype == 'float16' else dtype}/d{gpu_blocks.pow2_at_least(d)}"
      if key in entries:
        assert bs.fwd == Tile(**entries[key]["fwd"]), key
  # Length-specific entries ("fwd@8192") apply from that length on.
  key = "bfloat16/d128"
  if "fwd@8192" in entries.get(key, {}):
    assert gpu_blocks.default_block_sizes("bfloat16", 128, 16384).fwd == Tile(
      **entries[key]["fwd@8192"]
    )
    assert gpu_blocks.default_block_sizes("bfloat16", 128, 4096).fwd == Tile(**entries[key]["fwd"])


def test_tpu_resolve():
  r = tpu_blocks.resolve(None, 300, 1000)
  assert r.fwd == (384, 512) and r.dq == (256, 512) and r.dkv == (384, 256)
  assert tpu_blocks.resolve(BlockSizes.uniform(128), 300, 300).q_pad(300, "dq", "dkv") == 384
