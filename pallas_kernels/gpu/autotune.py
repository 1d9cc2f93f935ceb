"""Times a few block-size candidates per kernel on the current GPU and writes the best.

  python -m pallas_kernels.gpu.autotune --out pallas_kernels/gpu/tuned_block_sizes.json
  python -m pallas_kernels.gpu.autotune --head-dims 64,128 --dtypes bfloat16,float16

For each (dtype, head dim) the forward, the dq/dr pass and the dk/dv pass are tuned one after
the other (the backward passes timed together, the other pass at its best known config) on a
causal problem (B=2, L=4096, H=16 by default). Candidates are few on purpose: the whole run
for one (dtype, head dim) takes about a minute, mostly Triton compiles. The forward is tuned again
at
B=1, L=16384 (``--long-length``): its best tile grows with L (on an H200, 64x64 wins at 4096 and
128x128 at 16384) and is stored as ``fwd@8192``. Entries for other
(dtype, head dim) keys already in the file are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time

import jax
import jax.numpy as jnp

from pallas_kernels.gpu import backward, forward
from pallas_kernels.gpu.block_sizes import _JSON, bucket_key, clip, default_block_sizes
from parallax_jax.attention.block_sizes import Tile
from parallax_jax.attention.masking import MaskSpec
from parallax_jax.benchmarking.timing import time_call

C = Tile
CANDIDATES = {
  "fwd": [
    C(128, 64, 8, 3),
    C(128, 64, 4, 3),
    C(128, 128, 8, 2),
    C(64, 64, 4, 3),
    C(64, 128, 4, 3),
    C(128, 32, 4, 4),
  ],
  "dq": [C(64, 64, 8, 2), C(64, 64, 4, 2), C(128, 64, 8, 2), C(64, 32, 4, 3)],
  "dkv": [C(64, 128, 8, 2), C(32, 128, 8, 2), C(64, 64, 4, 2), C(32, 64, 4, 3)],
}
# Large head dims: tiles must fit in shared memory / registers.
CANDIDATES_D256 = {
  "fwd": [C(64, 32, 8, 2), C(64, 64, 8, 2), C(32, 32, 4, 2)],
  "dq": [C(32, 32, 8, 1), C(64, 32, 8, 1), C(32, 32, 4, 2)],
  "dkv": [C(32, 64, 8, 1), C(16, 64, 8, 1), C(32, 32, 4, 2)],
}


def tune_one(
  dtype: str,
  head_dim: int,
  *,
  batch: int,
  length: int,
  heads: int,
  iters: int,
  kernels=("fwd", "dq", "dkv"),
  log=print,
) -> dict:
  """Best ``{"fwd": cfg, "dq": cfg, "dkv": cfg}`` (as dicts) for one (dtype, head dim)."""
  dt = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  shape = (batch, length, heads, head_dim)
  q, r, k, v, do = (jax.random.normal(kk, shape, jnp.float32).astype(dt) for kk in keys)
  mask = MaskSpec(length, length, causal=True)
  scale = head_dim**-0.5
  base = default_block_sizes(dtype, head_dim, length)
  best = {n: clip(tile, length, length) for n, tile in base.tiles()}
  cands = CANDIDATES_D256 if head_dim > 128 else CANDIDATES

  def fwd_fn(cfg):
    return jax.jit(
      lambda q, r, k, v: forward.parallax_fwd(q, r, k, v, None, scale=scale, mask=mask, cfg=cfg)
    )

  res = None

  def bwd_fn(cfg_dq, cfg_dkv):
    return jax.jit(
      lambda q, r, k, v, res, do: backward.parallax_bwd(
        q, r, k, v, None, res, do, scale=scale, mask=mask, cfg_dq=cfg_dq, cfg_dkv=cfg_dkv
      )
    )

  for name in kernels:
    if name != "fwd" and res is None:
      _, res = fwd_fn(best["fwd"])(q, r, k, v)
    timings = []
    for cfg in cands[name]:
      try:
        if name == "fwd":
          fn, fn_args = fwd_fn(cfg), (q, r, k, v)
        elif name == "dq":
          fn, fn_args = bwd_fn(cfg, best["dkv"]), (q, r, k, v, res, do)
        else:
          fn, fn_args = bwd_fn(best["dq"], cfg), (q, r, k, v, res, do)
        sec = time_call(fn, fn_args, iters=iters, warmup=1).median_s
      except Exception as e:  # noqa: BLE001  e.g. out of shared memory: skip the candidate
        log(f"  {dtype}/d{head_dim} {name} {cfg}: failed ({type(e).__name__}: {str(e)[:200]})")
        continue
      timings.append((sec, cfg))
      log(f"  {dtype}/d{head_dim} {name} {cfg}: {sec * 1e3:.3f} ms")
    if timings:
      best[name] = min(timings, key=lambda x: x[0])[1]
    log(f"{dtype}/d{head_dim} {name}: best {best[name]}")
  return {n: dataclasses.asdict(c) for n, c in best.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=_JSON)
  p.add_argument("--head-dims", default="128")
  p.add_argument("--dtypes", default="bfloat16")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=4096)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument(
    "--long-length",
    type=int,
    default=16384,
    help="also tune the forward at B=1 and this length, stored as 'fwd@<L/2>' "
    "(used from L/2 on); 0 to skip",
  )
  args = p.parse_args(argv)
  if jax.default_backend() != "gpu":
    raise SystemExit("autotune needs a GPU (the timings of interpret mode mean nothing).")
  try:
    with open(args.out) as f:
      data = json.load(f)
  except FileNotFoundError:
    data = {"version": 1, "entries": {}}
  t0 = time.time()
  for dtype in args.dtypes.split(","):
    for d in (int(x) for x in args.head_dims.split(",")):
      entry = tune_one(
        dtype, d, batch=args.batch, length=args.length, heads=args.heads, iters=args.iters
      )
      if args.long_length:
        long = tune_one(
          dtype,
          d,
          batch=1,
          length=args.long_length,
          heads=args.heads,
          iters=max(3, args.iters // 2),
          kernels=("fwd",),
        )
        entry[f"fwd@{args.long_length // 2}"] = long["fwd"]
      data["entries"][bucket_key(dtype, d)] = entry
  data["device"] = jax.devices()[0].device_kind
  data["note"] = (
    f"autotuned {datetime.date.today().isoformat()} on {data['device']} "
    f"(jax {jax.__version__}), causal B={args.batch} L={args.length} "
    f"H={args.heads}; other keys hand-picked"
  )
  with open(args.out, "w") as f:
    json.dump(data, f, indent=1)
    f.write("\n")
  print(f"wrote {args.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  main()
