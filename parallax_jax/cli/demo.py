"""``demo``: run the op on random inputs; check ``r = 0`` against softmax attention."""

from __future__ import annotations

from parallax_jax.errors import UserError


def _demo(args) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from parallax_jax import parallax_attention
  from parallax_jax.model.config import attention_paths, path_platforms

  b, t, hq, hkv, d = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
  sizes = {"batch": b, "length": t, "heads": hq, "kv-heads": hkv, "head-dim": d}
  for flag, value in sizes.items():
    if value < 1:
      raise UserError(f"--{flag} must be >= 1, got {value}")
  if hq % hkv:
    raise UserError(f"--heads {hq} must be a multiple of --kv-heads {hkv} (GQA groups)")
  impl, backend = args.implementation, jax.default_backend()
  if impl is not None:
    if impl not in (paths := attention_paths("parallax")):
      raise UserError(f"--implementation must be one of {', '.join(paths)}, got {impl!r}")
    if backend not in (where := path_platforms("parallax", impl)):
      raise UserError(
        f"--implementation {impl} runs on {', '.join(where) or 'no backend here'}, not on "
        f"this machine's {backend!r}; omit it for the best available path"
      )
  keys = jax.random.split(jax.random.key(args.seed), 4)
  q = jax.random.normal(keys[0], (b, t, hq, d))
  r = jax.random.normal(keys[1], (b, t, hq, d))
  k = jax.random.normal(keys[2], (b, t, hkv, d))
  v = jax.random.normal(keys[3], (b, t, hkv, d))

  softmax = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  at_zero = parallax_attention(q, jnp.zeros_like(r), k, v, implementation=impl)
  err = float(jnp.max(jnp.abs(at_zero - softmax)) / jnp.max(jnp.abs(softmax)))
  print(f"backend={jax.default_backend()}  B={b} T={t} Hq={hq} Hkv={hkv} D={d}")
  print(f"r = 0  vs softmax attention (jax.nn.dot_product_attention): max rel err {err:.2e}")

  o = parallax_attention(q, r, k, v, implementation=impl)
  cov = float(jnp.sqrt(jnp.mean((o - softmax) ** 2)))
  print(f"r != 0: RMS of the covariance correction o - softmax = {cov:.3f}")

  loss = lambda *x: jnp.sum(parallax_attention(*x, implementation=impl) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, r, k, v)
  norms = ", ".join(
    f"|d{n}|={float(jnp.linalg.norm(g)):.3g}" for n, g in zip("qrkv", grads, strict=True)
  )
  print(f"gradients: {norms}")
  ok = err < 1e-5 and all(bool(np.isfinite(np.asarray(g)).all()) for g in grads)
  print("OK" if ok else "MISMATCH")
  return 0 if ok else 1


def add_demo(sub, common):
  demo = sub.add_parser(
    "demo",
    parents=[common],
    help="run the op; check r = 0 against softmax attention",
    description="Runs parallax_attention (causal) on random inputs of the given shape: with "
    "r = 0, which must equal softmax attention (jax.nn.dot_product_attention), then with a "
    "random r (the covariance correction's size and the gradients' norms); prints OK, or "
    "MISMATCH with exit status 1.",
  )
  demo.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
  demo.add_argument("--length", type=int, default=256, help="sequence length (default 256)")
  demo.add_argument("--heads", type=int, default=8, help="query heads (default 8)")
  demo.add_argument(
    "--kv-heads", type=int, default=2, help="key/value heads, dividing --heads (default 2)"
  )
  demo.add_argument("--head-dim", type=int, default=64, help="head width (default 64)")
  demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the inputs (default 0)")
  demo.add_argument(
    "--implementation",
    default=None,
    help="parallax_attention's implementation= (default: the best available, logged)",
  )
  demo.set_defaults(fn=_demo)
