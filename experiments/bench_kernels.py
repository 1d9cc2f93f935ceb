"""Benchmark of the Parallax Pallas GPU kernels against cuDNN softmax attention and the XLA path.

For each (B, L) at H=16, D=128, bf16, causal: times the forward and forward+backward
(``jax.vjp`` w.r.t. all inputs, jitted) of
  * ``parallax_attention(..., implementation="pallas_gpu")``,
  * ``parallax_attention(..., implementation="xla")`` (optional above ``--skip-xla-above``),
  * ``jax.nn.dot_product_attention(..., implementation="cudnn", is_causal=True)``
    (``softmax_xla``: the same by XLA, the ``--interpret`` smoke's baseline),
reports kernel TFLOP/s of the executed matmuls (``parallax_jax.flops.kernel_executed_flops``:
Parallax fwd 4 matmuls per visible pair, bwd 11; softmax fwd 2, bwd 5; not model FLOPs) and
checks the kernel's accuracy against the float32 ``parallax_reference`` at the smaller shapes.
Every cell is isolated: an error is recorded and the run goes on.

  python experiments/bench_kernels.py                 # full run on the GPU
  python experiments/bench_kernels.py --quick --interpret   # tiny CPU smoke run
Writes ``<out-dir>/bench_kernels_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parallax_jax import BlockSizes, MaskSpec, parallax_attention, parallax_reference  # noqa: E402
from parallax_jax.benchmarking import result_files, run_info  # noqa: E402
from parallax_jax.benchmarking.kernel_times import kernel_times  # noqa: E402
from parallax_jax.benchmarking.timing import time_call, time_pipelined  # noqa: E402
from parallax_jax.environment import PACKAGES, package_versions  # noqa: E402
from parallax_jax.flops import (  # noqa: E402
  KERNEL_TFLOPS_HEADER,
  kernel_executed_flops,
)
from parallax_jax.testing.attention_cases import BENCHMARK_SHAPES  # noqa: E402

# The shared benchmark problems (their heads, head dim, dtype and causality are the defaults of
# --heads/--head-dim/--dtype/--non-causal).
DEFAULT_SHAPES = ",".join(s.id for s in BENCHMARK_SHAPES)
DEFAULT_PATHS = "pallas_gpu,xla,softmax_cudnn"
# the CPU smoke's softmax baseline: XLA's (cuDNN has no interpret mode)
INTERPRET_PATHS = "pallas_gpu,xla,softmax_xla"
_SHAPE = BENCHMARK_SHAPES[0]


def make_inputs(batch, length, heads, d, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  shape = (batch, length, heads, d)
  q, r, k, v, g = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)
  # RMS-normed q, r, k like the model (|t| ~ D); r scaled down to a realistic correction size.
  return tuple(x.astype(dtype) for x in (q, r * 0.1, k, v, g))


def parallax_fn(impl, causal, interpret, window=None, deterministic=True):
  """The op as one path."""

  def f(q, r, k, v):
    return parallax_attention(
      q,
      r,
      k,
      v,
      causal=causal,
      window_size=window,
      implementation=impl,
      interpret=interpret,
      deterministic=deterministic,
    )

  return f


def path_fns(causal, interpret, window=None):
  """Path name -> the function it times (``path_context`` holds its backward switch)."""
  return {
    "pallas_mosaic_gpu": parallax_fn("pallas_mosaic_gpu", causal, interpret, window),
    # the Mosaic forward with the Mosaic / the Triton backward, whatever the call (path_context)
    "pallas_mosaic_gpu_bwd": parallax_fn("pallas_mosaic_gpu", causal, interpret, window),
    # ... the Mosaic backward with the dk/dv kernel's separate Q and R tiles (before session 21)
    "pallas_mosaic_gpu_unstacked_bwd": parallax_fn("pallas_mosaic_gpu", causal, interpret, window),
    "pallas_mosaic_gpu_triton_bwd": parallax_fn("pallas_mosaic_gpu", causal, interpret, window),
    # the fused Mosaic backward (dq/dr by TMA reductions in the dk/dv kernel; deterministic=False)
    "pallas_mosaic_gpu_fused_bwd": parallax_fn(
      "pallas_mosaic_gpu", causal, interpret, window, False
    ),
    # the Mosaic forward with a 2- / 4-deep K/V ring (common.FWD_STAGES: 4 at D = 128 since
    # session 25, 2 before and at D = 64), the default Mosaic backward
    "pallas_mosaic_gpu_fwd_s2": fwd_stages_fn(2, causal, interpret, window),
    "pallas_mosaic_gpu_fwd_s4": fwd_stages_fn(4, causal, interpret, window),
    # "*_fused": deterministic=False, the fused (atomic dq/dr) Triton backward
    "pallas_mosaic_gpu_fused": parallax_fn("pallas_mosaic_gpu", causal, interpret, window, False),
    "pallas_gpu": parallax_fn("pallas_gpu", causal, interpret, window),
    "pallas_gpu_fused": parallax_fn("pallas_gpu", causal, interpret, window, False),
    "xla": parallax_fn("xla", causal, interpret, window),
    "softmax_cudnn": softmax_fn("cudnn", causal, window),
    "softmax_xla": softmax_fn("xla", causal, window),
  }


def fwd_stages_fn(stages, causal, interpret, window=None):
  """The op at the default Mosaic tiles but for the forward's K/V ring depth ``stages``
  (explicit ``BlockSizes``; ``path_context`` pins the Mosaic backward, which the ``"auto"``
  rule would not pick for a call that gives tiles)."""
  from pallas_kernels.mosaic_gpu import backward, common

  def f(q, r, k, v):
    d = q.shape[-1]
    dq, dkv = backward.default_tiles(d)
    fwd = dataclasses.replace(common.default_fwd_tile(d), num_stages=stages)
    return parallax_attention(
      q,
      r,
      k,
      v,
      causal=causal,
      window_size=window,
      implementation="pallas_mosaic_gpu",
      interpret=interpret,
      block_sizes=BlockSizes(fwd, dq, dkv),
    )

  return f


def path_context(name):
  """What a path holds for its cell: "pallas_mosaic_gpu_bwd" (and "_fused_bwd") /
  "_unstacked_bwd" / "_triton_bwd" pin ``pallas_kernels.mosaic_gpu.implementation.BACKWARD``
  to the Mosaic backward / its unstacked Q/R variant / the Triton backward (read when the op is
  called), as do "pallas_mosaic_gpu_fwd_s*" (the Mosaic one); the other paths run the module's
  default ("auto": the measured rule, docs/design.md §6.2)."""
  from pallas_kernels.mosaic_gpu import implementation

  if name.startswith("pallas_mosaic_gpu_fwd_s"):
    return implementation.use_backward("mosaic")
  if not (name.startswith("pallas_mosaic_gpu") and name.endswith("_bwd")):
    return contextlib.nullcontext()

  if name.endswith("_triton_bwd"):
    return implementation.use_backward("triton")
  unstacked = name.endswith("_unstacked_bwd")
  return implementation.use_backward("mosaic_unstacked" if unstacked else "mosaic")


def check_paths(p: argparse.ArgumentParser, text: str) -> list[str]:
  """``--paths``'s names, or ``p.error`` naming those ``path_fns`` does not know."""
  names = text.split(",")
  known = list(path_fns(True, True))  # the names alone: nothing is traced here
  unknown = [n for n in names if n not in known]
  if unknown:
    p.error(f"--paths: unknown {unknown}; choose from {known}")
  return names


def softmax_fn(impl, causal, window=None):
  """``jax.nn.dot_product_attention`` by ``impl`` ("cudnn" or "xla"), ``r`` unused."""

  def f(q, r, k, v):
    del r
    t = q.shape[1]
    local = MaskSpec(t, t, causal=causal, window_size=window).jax_nn_local_window()
    return jax.nn.dot_product_attention(
      q, k, v, is_causal=causal, local_window_size=local, implementation=impl
    )

  return f


def fwd_bwd_fn(fn):
  """Jitted ``(q, r, k, v, g) -> (o, (dq, dr, dk, dv))``: the forward and its VJP of ``g``."""

  @jax.jit
  def fwd_bwd(q, r, k, v, g):
    o, vjp = jax.vjp(fn, q, r, k, v)
    return o, vjp(g)

  return fwd_bwd


def bench_cell(fn, inputs, iters, profile=False):
  """Median wall seconds of the forward and of forward+backward; with ``profile``, also the
  device microseconds of each kernel they launch (``benchmarking.kernel_times``)."""
  q, r, k, v, g = inputs
  fwd = jax.jit(fn)
  fwd_bwd = fwd_bwd_fn(fn)
  out = {
    "fwd_s": time_call(fwd, (q, r, k, v), iters=iters).median_s,
    "fwd_bwd_s": time_call(fwd_bwd, (q, r, k, v, g), iters=iters).median_s,
    # back to back, as training issues them: no per-call launch and sync latency
    "fwd_pipelined_s": time_pipelined(fwd, (q, r, k, v), iters=iters).median_s,
    "fwd_bwd_pipelined_s": time_pipelined(fwd_bwd, (q, r, k, v, g), iters=iters).median_s,
  }
  if profile:
    out["fwd_kernels_us"] = kernel_times(fwd, (q, r, k, v), repeats=3)
    out["fwd_bwd_kernels_us"] = kernel_times(fwd_bwd, (q, r, k, v, g), repeats=3)
  return out


def accuracy(fn, inputs, causal, window=None):
  """Max-norm relative errors ``|out - ref| / max|ref|`` (max and median) of o and grads."""
  q, r, k, v, g = inputs
  o, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(q, r, k, v)
  grads = vjp(g)
  f32 = [x.astype(jnp.float32) for x in (q, r, k, v)]
  length, d = q.shape[1], q.shape[3]
  mask = MaskSpec(length, length, causal=causal, window_size=window)
  ref = lambda *a: parallax_reference(*a, scale=1.0 / np.sqrt(d), mask=mask)  # noqa: E731
  o_ref, vjp_ref = jax.jit(lambda *a: jax.vjp(ref, *a))(*f32)
  grads_ref = vjp_ref(g.astype(jnp.float32))
  out = {}
  for name, a, b in zip(
    ("o", "dq", "dr", "dk", "dv"), (o, *grads), (o_ref, *grads_ref), strict=True
  ):
    err = jnp.abs(a.astype(jnp.float32) - b) / jnp.max(jnp.abs(b))
    out[name] = {"max": float(jnp.max(err)), "median": float(jnp.median(err))}
  out["ok"] = all(e["max"] < 2e-2 and e["median"] < 1e-2 for e in out.values())
  return out


def versions() -> dict:
  """Python's and the installed libraries' versions (``parallax_jax.environment``), triton
  included, for a benchmark's record."""
  return {"python": platform.python_version(), **package_versions(PACKAGES + ("triton",))}


def parse_shapes(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
  """``"4x4096,2x8192"`` -> ``[(4, 4096), (2, 8192)]``; anything else is one line from
  ``parser`` naming ``--shapes``."""
  try:
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in text.split(",")]
  except ValueError:
    shapes = []
  if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
    parser.error(f"--shapes: expected a comma list of BxL such as 2x8192, got {text!r}")
  return shapes


def check_args(p: argparse.ArgumentParser, args, gpu_only: str = "") -> None:
  """``p.error`` naming the flag for a non-positive ``--heads`` / ``--head-dim`` / ``--iters``,
  a ``--window`` below 1, an unknown ``--dtype``, or ``gpu_only`` (the requested kernels that
  need a GPU, as their flag says them) off a GPU without ``--interpret``: such a run would write
  a result file of error rows, or a traceback, instead of a measurement."""
  for flag in ("heads", "head_dim", "iters"):
    if getattr(args, flag, 1) < 1:
      p.error(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
  if getattr(args, "window", None) is not None and args.window < 1:
    p.error(f"--window: must be >= 1 (keys per query) or left out, got {args.window}")
  try:
    jnp.dtype(args.dtype)
  except TypeError:
    p.error(f"--dtype: unknown dtype {args.dtype!r}; e.g. bfloat16, float16, float32")
  backend = jax.default_backend()
  if gpu_only and not args.interpret and backend != "gpu":
    p.error(f"{gpu_only}: runs on a GPU, not on this {backend!r} host; pass --interpret (a smoke)")


def run_header(args, keys, now: datetime.datetime, command: str, **extra) -> dict:
  """The fields every kernel bench's result starts with: date (``now``, the time its stem is
  named for), device, versions, ``command`` (``run_info.command``) and ``args``' values of
  ``keys``."""
  return {
    "date": now.isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "versions": versions(),
    "command": command,
    "config": {k: getattr(args, k) for k in keys},
    **extra,
    "rows": [],
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of BxL")
  p.add_argument("--heads", type=int, default=_SHAPE.heads)
  p.add_argument("--head-dim", type=int, default=_SHAPE.head_dim)
  p.add_argument("--dtype", default=_SHAPE.dtype)
  p.add_argument("--iters", type=int, default=30)
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  p.add_argument(
    "--skip-xla-above", type=int, default=8192, help="skip the xla path for L above this"
  )
  p.add_argument(
    "--accuracy-max-len",
    type=int,
    default=4096,
    help="check accuracy vs the fp32 reference for L <= this (and B*L <= 16384)",
  )
  p.add_argument(
    "--paths",
    default=None,
    help="comma list of paths to time: pallas_gpu, pallas_gpu_fused (the atomic single-pass "
    "backward), pallas_mosaic_gpu (Mosaic forward, the backward its BACKWARD='auto' rule "
    "picks), pallas_mosaic_gpu_bwd / pallas_mosaic_gpu_triton_bwd (Mosaic forward, the Mosaic "
    "/ the Triton backward), pallas_mosaic_gpu_unstacked_bwd (the Mosaic backward with the "
    "dk/dv kernel's separate Q and R tiles, the default before session 21), "
    "pallas_mosaic_gpu_fused (Mosaic forward, fused Triton backward), "
    "pallas_mosaic_gpu_fused_bwd (Mosaic forward, fused Mosaic backward), "
    "pallas_mosaic_gpu_fwd_s2 / _fwd_s4 (the Mosaic forward's K/V ring 2 / 4 deep, whatever "
    "the head dim's default), "
    "xla, softmax_cudnn, softmax_xla (jax.nn.dot_product_attention by XLA). Default "
    f"{DEFAULT_PATHS}; with --interpret {INTERPRET_PATHS}",
  )
  p.add_argument("--non-causal", action="store_true")
  p.add_argument("--window", type=int, default=None, help="sliding window (keys per query)")
  p.add_argument(
    "--kernel-times",
    action="store_true",
    help="record each kernel's device time (profiler trace) of fwd and fwd+bwd",
  )
  p.add_argument("--quick", action="store_true", help="one small shape, few iterations")
  p.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU smoke)")
  args = p.parse_args(argv)
  if args.quick:
    args.shapes = "1x128" if args.interpret else "1x2048"
    args.iters = min(args.iters, 3 if args.interpret else 10)
    if args.interpret:
      args.heads, args.head_dim = 2, 64
  if args.paths is None:
    args.paths = INTERPRET_PATHS if args.interpret else DEFAULT_PATHS
  gpu_paths = [n for n in check_paths(p, args.paths) if n not in ("xla", "softmax_xla")]
  check_args(p, args, gpu_only=gpu_paths and f"--paths {','.join(gpu_paths)}")
  if "softmax_cudnn" in gpu_paths and jax.default_backend() != "gpu":
    # cuDNN has no interpret mode: timing XLA's softmax under its name would mislabel the row
    p.error("--paths softmax_cudnn: cuDNN needs a GPU (--interpret has no cuDNN); use softmax_xla")
  causal = not args.non_causal
  dtype = jnp.dtype(args.dtype)
  shapes = parse_shapes(p, args.shapes)
  h, d = args.heads, args.head_dim
  now = datetime.datetime.now()
  devices = jax.devices()
  meta = {
    "date": now.isoformat(timespec="seconds"),
    "device": getattr(devices[0], "device_kind", str(devices[0])),
    "backend": jax.default_backend(),
    "versions": versions(),
    "command": run_info.command("experiments.bench_kernels", argv),
    "config": {
      "heads": h,
      "head_dim": d,
      "dtype": str(dtype),
      "causal": causal,
      "window": args.window,
      "iters": args.iters,
      "interpret": args.interpret,
    },
  }
  print(json.dumps(meta, indent=1), flush=True)
  w = args.window
  paths = path_fns(causal, args.interpret, w)
  paths = {n: f for n, f in paths.items() if n in args.paths.split(",")}
  rows = []
  stem = result_files.new_stem(args.out_dir, f"bench_kernels_{now.strftime('%Y-%m-%d_%H%M%S')}")

  def write():  # after every row: a run cut short keeps what it measured
    result = {**meta, "rows": rows}
    result_files.write(stem, result, to_markdown(result))
    return result

  for batch, length in shapes:
    inputs = make_inputs(batch, length, h, d, dtype)
    for name, fn in paths.items():
      row = {"B": batch, "L": length, "path": name}
      if name == "xla" and length > args.skip_xla_above:
        row["skipped"] = f"L > --skip-xla-above {args.skip_xla_above}"
        rows.append(row)
        print(row, flush=True)
        continue
      kind = "softmax" if name.startswith("softmax") else "parallax"
      fl = kernel_executed_flops(
        kind, batch=batch, heads=h, length=length, head_dim=d, causal=causal, window_size=w
      )
      try:
        with path_context(name):
          t = bench_cell(fn, inputs, args.iters, profile=args.kernel_times)
        row.update(
          {
            "fwd_ms": t["fwd_s"] * 1e3,
            "fwd_bwd_ms": t["fwd_bwd_s"] * 1e3,
            "fwd_tflops": fl["fwd"] / t["fwd_s"] / 1e12,
            "fwd_bwd_tflops": fl["fwd_bwd"] / t["fwd_bwd_s"] / 1e12,
            "fwd_pipelined_ms": t["fwd_pipelined_s"] * 1e3,
            "fwd_bwd_pipelined_ms": t["fwd_bwd_pipelined_s"] * 1e3,
            "fwd_pipelined_tflops": fl["fwd"] / t["fwd_pipelined_s"] / 1e12,
            "fwd_bwd_pipelined_tflops": fl["fwd_bwd"] / t["fwd_bwd_pipelined_s"] / 1e12,
          }
        )
        for key in ("fwd_kernels_us", "fwd_bwd_kernels_us"):
          if key in t:
            row[key] = t[key]
      except Exception as e:  # noqa: BLE001  one failing cell must not kill the run
        row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        traceback.print_exc()
      if name.startswith("pallas") and length <= args.accuracy_max_len and batch * length <= 16384:
        try:
          with path_context(name):
            row["accuracy"] = accuracy(fn, inputs, causal, w)
        except Exception as e:  # noqa: BLE001
          row["accuracy_error"] = f"{type(e).__name__}: {str(e)[:500]}"
      rows.append(row)
      print(json.dumps(row), flush=True)
      write()
    del inputs
  result = write()
  print(f"wrote {stem}.json and {stem}.md")
  return result


def to_markdown(result) -> str:
  m = result
  lines = [
    f"# bench_kernels {m['date']}",
    "",
    f"- device: {m['device']} ({m['backend']})",
    f"- versions: {m['versions']}",
    f"- command: `{m['command']}`",
    f"- config: {m['config']}",
    "",
    'Each call timed to its sync ("ms"), and back to back ("pipelined": iters calls, one',
    "wait; the per-call launch and sync latency overlaps the device work, as in training).",
    "",
    f"| B | L | path | fwd ms | fwd {KERNEL_TFLOPS_HEADER} | fwd+bwd ms | "
    f"fwd+bwd {KERNEL_TFLOPS_HEADER} | fwd ms pipelined | fwd TFLOP/s pipelined | "
    "fwd+bwd ms pipelined | fwd+bwd TFLOP/s pipelined | accuracy | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in m["rows"]:

    def fmt(key, spec=".3f", r=r):
      return format(r[key], spec) if key in r else "-"

    acc = "-"
    if "accuracy" in r:
      a = r["accuracy"]
      worst = max(v["max"] for k, v in a.items() if k != "ok")
      acc = f"{'ok' if a['ok'] else 'FAIL'} (max {worst:.2e})"
    elif "accuracy_error" in r:
      acc = "error"
    note = r.get("error") or r.get("skipped") or r.get("accuracy_error") or ""
    lines.append(
      f"| {r['B']} | {r['L']} | {r['path']} | {fmt('fwd_ms')} | "
      f"{fmt('fwd_tflops', '.1f')} | {fmt('fwd_bwd_ms')} | "
      f"{fmt('fwd_bwd_tflops', '.1f')} | {fmt('fwd_pipelined_ms')} | "
      f"{fmt('fwd_pipelined_tflops', '.1f')} | {fmt('fwd_bwd_pipelined_ms')} | "
      f"{fmt('fwd_bwd_pipelined_tflops', '.1f')} | {acc} | {note[:120]} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
