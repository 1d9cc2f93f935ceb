"""Quick correctness smoke test of the pallas_gpu kernels on a real GPU (odd shapes, all dtypes).

  python experiments/gpu_smoke.py            # compiles real Triton kernels
  python experiments/gpu_smoke.py --interpret  # same on CPU
Prints max-norm relative errors of o, dq, dr, dk, dv against the fp32 reference.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pallas_kernels.gpu import GpuBlockSizes  # noqa: E402
from parallax_jax import MaskSpec, parallax_attention, parallax_reference  # noqa: E402

INTERPRET = "--interpret" in sys.argv
SMALL = GpuBlockSizes(16, 16, 4, 2, 16, 16, 4, 2, 16, 32, 4, 2)
CASES = [  # (B, Tq, Tk, Hq, Hkv, D, causal, W, segments, scale, dtype, block_sizes)
  (2, 256, None, 4, 2, 128, True, None, None, None, "bfloat16", None),
  (1, 300, None, 4, 1, 100, True, 77, None, None, "bfloat16", None),
  (1, 200, None, 2, 2, 64, True, 33, None, 1.0, "float32", None),
  (1, 111, None, 4, 2, 60, True, None, (1, 40, 70), None, "float16", None),
  (1, 37, 100, 4, 2, 64, True, None, None, None, "float32", SMALL),
  (2, 63, None, 2, 1, 64, False, None, None, 0.1, "bfloat16", None),
  (1, 111, None, 2, 2, 100, True, 40, None, None, "bfloat16", SMALL),
  (1, 1, 77, 4, 2, 64, True, 20, None, None, "float32", None),
]


def run(b, tq, tk, hq, hkv, d, causal, w, segs, scale, dtype, bs):
  tk = tk or tq
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  dt = jnp.dtype(dtype)
  q = jax.random.normal(keys[0], (b, tq, hq, d)).astype(dt)
  r = (0.3 * jax.random.normal(keys[1], (b, tq, hq, d))).astype(dt)
  k = jax.random.normal(keys[2], (b, tk, hkv, d)).astype(dt)
  v = jax.random.normal(keys[3], (b, tk, hkv, d)).astype(dt)
  g = jax.random.normal(keys[4], (b, tq, hq, d)).astype(dt)
  seg = None
  if segs:
    ids = np.concatenate([np.full(n, i) for i, n in enumerate(segs)])
    seg = jnp.asarray(np.stack([ids] * b).astype(np.int32))

  def f(*a):
    return parallax_attention(
      *a,
      scale=scale,
      causal=causal,
      window_size=w,
      segment_ids=seg,
      implementation="pallas_gpu",
      interpret=INTERPRET,
      block_sizes=bs,
    )

  sc = scale if scale is not None else 1 / np.sqrt(d)
  mask = MaskSpec(tq, tk, causal, w)

  def fr(*a):
    return parallax_reference(
      *[x.astype(jnp.float32) for x in a], scale=sc, mask=mask, segment_ids=seg
    )

  t0 = time.time()
  o, vjp = jax.vjp(jax.jit(f), q, r, k, v)
  grads = vjp(g)
  o2, vjp2 = jax.vjp(fr, q, r, k, v)
  grads2 = vjp2(g.astype(jnp.float32))
  errs = [
    float(jnp.max(jnp.abs(x.astype(jnp.float32) - y)) / jnp.max(jnp.abs(y)))
    for x, y in zip((o, *grads), (o2, *grads2), strict=True)
  ]
  tol = 2e-5 if dtype == "float32" else (5e-3 if dtype == "float16" else 2e-2)
  ok = all(e < tol for e in errs) and all(bool(jnp.all(jnp.isfinite(x))) for x in (o, *grads))
  print(
    f"{'ok  ' if ok else 'FAIL'} B{b} T{tq}x{tk} H{hq}-{hkv} D{d} causal={causal} W={w} "
    f"seg={segs} scale={scale} {dtype} bs={'small' if bs else 'default'}: "
    + " ".join(f"{n}={e:.1e}" for n, e in zip(("o", "dq", "dr", "dk", "dv"), errs, strict=True))
    + f" ({time.time() - t0:.1f}s)",
    flush=True,
  )
  return ok


if __name__ == "__main__":
  results = []
  for case in CASES:
    try:
      results.append(run(*case))
    except Exception as e:  # noqa: BLE001
      import traceback

      traceback.print_exc()
      print("ERROR", case, type(e).__name__, str(e)[:2000], flush=True)
      results.append(False)
  print(f"{sum(results)}/{len(results)} ok")
  sys.exit(0 if all(results) else 1)
