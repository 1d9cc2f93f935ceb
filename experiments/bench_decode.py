"""Decode kernel latency: Parallax "pallas_gpu" vs softmax decode on the same KV cache.

For each (B, L) and kv-head count at Hq query heads, D, bf16, Tq = 1, cache S = L and
lengths = L, times
  * "floor": a Pallas kernel copying q to the output (one launch doing nothing): what the
    chain charges any kernel, the floor under the kernel rows;
  * ``parallax_decode(..., implementation="pallas_gpu")`` (one row per ``--tunings`` entry and
    ``--merges`` entry: the split merge in the kernel's last program, a second kernel, XLA),
  * ``parallax_decode(..., implementation="xla")``,
  * ``jax.nn.dot_product_attention`` (softmax decode, ``key_value_seq_lengths``) with
    implementation "cudnn" and "xla".
Each timing is a jitted chain of ``--chain`` calls inside one jit (``q_{n+1} = o_n``: XLA
cannot merge the calls, nothing runs between them); per call = (median time of the chain -
median time of a chain of one) / (chain - 1), so the jit dispatch and sync (~150 us on the
H200 host, more than a decode call) cancels instead of being spread over the chain. Reports
us per call, effective HBM GB/s (K + V bytes / time), kernels launched per call (compiled
HLO) and, for the kernel, the max-norm relative error ``|o - ref| / max|ref|`` (max and
median) against the float32 "xla" path on the same (bf16-rounded) values. A failing cell
records its error.

  python experiments/bench_decode.py                       # full run on the GPU
  python experiments/bench_decode.py --shapes 1x4096 --tunings default,64:4:2:0,256:8:3:0
  python experiments/bench_decode.py --smoke               # tiny CPU run (interpret mode)
Writes ``<out>/decode_kernels_<date>_<device>.json`` and ``.md`` (never overwriting: a suffix
``_2``, ``_3``, ... is added).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bench_kernels  # noqa: E402
from experiments.bench_kernels import versions  # noqa: E402
from parallax_jax.benchmarking import cli_checks, result_files, run_info  # noqa: E402
from parallax_jax.benchmarking.kernel_times import kernel_times  # noqa: E402
from parallax_jax.benchmarking.timing import time_call  # noqa: E402
from parallax_jax.decode import DecodeTuning, parallax_decode  # noqa: E402
from parallax_jax.decode.validation import validate_decode  # noqa: E402

DEFAULT_SHAPES = "1x512,1x1024,1x4096,1x16384,32x512,32x1024,32x4096,32x16384"


def parse_tuning(text: str) -> DecodeTuning | None:
  """``default`` or ``block_k:num_warps:num_stages:num_splits`` (0: the default)."""
  if text == "default":
    return None
  fields = [int(x) or None for x in text.split(":")]
  if len(fields) != 4:
    raise ValueError(f"--tunings entries are 'default' or bk:warps:stages:splits, got {text!r}")
  return DecodeTuning(
    block_k=fields[0], num_warps=fields[1], num_stages=fields[2], num_splits=fields[3]
  )


def make_inputs(batch, length, hq, hkv, d, dtype, seed=0):
  """q, r ``[B, 1, Hq, D]``, k, v ``[B, L, Hkv, D]`` (r scaled to a realistic size), lengths."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, r = (jax.random.normal(kk, (batch, 1, hq, d), jnp.float32) for kk in keys[:2])
  k, v = (jax.random.normal(kk, (batch, length, hkv, d), jnp.float32) for kk in keys[2:])
  lengths = jnp.full((batch,), length, jnp.int32)
  return (q.astype(dtype), (r * 0.1).astype(dtype), k.astype(dtype), v.astype(dtype), lengths)


def parallax_fn(impl, tuning=None, interpret=False, merge=None):
  """The decode call; ``merge`` sets ``pallas_kernels.gpu.decode.MERGE`` while it traces."""

  def f(q, r, k, v, lengths):
    if merge is None:
      return parallax_decode(
        q, r, k, v, lengths=lengths, implementation=impl, tuning=tuning, interpret=interpret
      )
    from pallas_kernels.gpu import decode as gpu_decode

    saved, gpu_decode.MERGE = gpu_decode.MERGE, merge
    try:
      return parallax_decode(
        q, r, k, v, lengths=lengths, implementation=impl, tuning=tuning, interpret=interpret
      )
    finally:
      gpu_decode.MERGE = saved

  return f


def floor_fn(interpret=False):
  """A Pallas kernel that only copies q to the output: the chain's cost of one launch that
  reads and writes a few KB, the floor under every kernel row of the same run."""
  from jax.experimental import pallas as pl

  def copy(q_ref, o_ref):
    o_ref[...] = q_ref[...]

  def f(q, r, k, v, lengths):
    del r, k, v, lengths
    return pl.pallas_call(
      copy, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=interpret
    )(q)

  return f


def softmax_fn(impl):
  def f(q, r, k, v, lengths):
    del r
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=impl)

  return f


def chained(fn, n: int, inputs):
  """One compiled jit of ``n`` calls, each taking the previous output as its query."""

  def run(q, r, k, v, lengths):
    for _ in range(n):
      q = fn(q, r, k, v, lengths)
    return q

  return jax.jit(run).lower(*inputs).compile()


def per_call_seconds(one, many, n: int, inputs, iters: int) -> float:
  """Seconds per call: ``(T(n calls) - T(1 call)) / (n - 1)`` with median chain times ``T``,
  so the fixed cost of a jit dispatch and its sync (~100-200 us, more than a decode call)
  cancels instead of being spread over the chain."""
  t1 = time_call(one, inputs, iters=iters).median_s
  tn = time_call(many, inputs, iters=iters).median_s
  return (tn - t1) / (n - 1)


def reference(inputs):
  """The float32 "xla" path on the same (rounded) values."""
  q, r, k, v, lengths = inputs
  f32 = [x.astype(jnp.float32) for x in (q, r, k, v)]
  return jax.jit(parallax_fn("xla"))(*f32, lengths)


def accuracy(o, ref):
  """``|o - ref| / max|ref|`` (max and median) against ``reference(inputs)``."""
  err = jnp.abs(o.astype(jnp.float32) - ref) / jnp.max(jnp.abs(ref))
  return {"max": float(jnp.max(err)), "median": float(jnp.median(err))}


def launches(compiled) -> int:
  """Kernels one compiled call launches: the fusions, custom calls (Pallas, cuDNN), copies,
  reductions and transposes of its entry computation (at decode sizes each costs a few us,
  whatever it does)."""
  text = compiled.as_text()
  entry = text[text.index("ENTRY") :]
  entry = entry[: entry.index("\n}")]
  ops = r"(?:fusion|custom-call|copy|reduce|transpose|dynamic-update-slice)"
  return len(re.findall(r"^\s*(?:ROOT )?\S+ = .*? " + ops + r"\(", entry, flags=re.M))


def kernel_launch(inputs, tuning, interpret, merge=None):
  """The split count / key block / merge the kernel picks for this call (for the report)."""
  from pallas_kernels.gpu import decode as gpu_decode

  q, r, k, v, lengths = inputs
  spec = validate_decode(
    q,
    r,
    k,
    v,
    lengths=lengths,
    scale=None,
    window_size=None,
    interpret=interpret,
    tuning=tuning,
  )
  saved, gpu_decode.MERGE = gpu_decode.MERGE, merge or gpu_decode.MERGE
  try:
    return gpu_decode.launch_for(spec).__dict__
  finally:
    gpu_decode.MERGE = saved


def output_stem(out_dir: str, date: str, device: str) -> str:
  """``<out_dir>/decode_kernels_<date>_<device>``, with a suffix if that file exists."""
  tag = re.sub(r"[^a-z0-9]+", "", device.lower().replace("nvidia", "")) or "device"
  return str(result_files.new_stem(out_dir, f"decode_kernels_{date}_{tag}"))


def write_result(meta: dict, rows: list[dict], stem: str):
  """Writes ``<stem>.json`` and ``<stem>.md`` (the run's own files, rewritten as rows arrive)."""
  result = {**meta, "rows": rows}
  result_files.write(stem, result, to_markdown(result))
  return result, stem


PATHS = ("floor", "pallas_gpu", "parallax_xla", "softmax_cudnn", "softmax_xla")
GPU_PATHS = ("floor", "pallas_gpu", "softmax_cudnn")  # off a GPU: error rows only


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of BxL (cache S = L)")
  p.add_argument("--kv-heads", default="8,2", help="comma list of Hkv (GQA when < --heads)")
  p.add_argument("--heads", type=int, default=8, help="query heads Hq")
  p.add_argument("--head-dim", type=int, default=128, help="head width D")
  p.add_argument("--dtype", default="bfloat16", help="dtype of q, r and the cache")
  p.add_argument("--iters", type=int, default=20, help="timed chains per cell (median)")
  p.add_argument(
    "--chain", type=int, default=30, help="calls per timed chain (timed against a chain of 1)"
  )
  p.add_argument(
    "--tunings",
    default="default",
    help="comma list of kernel tunings: 'default' or bk:warps:stages:splits (0: default)",
  )
  p.add_argument(
    "--paths",
    default=",".join(PATHS),
    help="comma list of paths to time (floor: a Pallas copy kernel, the chain's launch floor)",
  )
  p.add_argument(
    "--accuracy-all", action="store_true", help="accuracy of every tuning, not just the default"
  )
  p.add_argument(
    "--merges",
    default="default",
    help="comma list of split merges for the pallas_gpu rows: 'default' (the module's MERGE) "
    "or in_kernel, pallas, xla (pallas_kernels.gpu.decode.MERGES)",
  )
  p.add_argument(
    "--kernel-times",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also record each kernel's device time per call from a profiler trace",
  )
  p.add_argument(
    "--out",
    default=os.path.join(os.path.dirname(__file__), "results"),
    help="folder of the result files (default: experiments/results)",
  )
  p.add_argument(
    "--smoke",
    action="store_true",
    help="tiny shapes, interpret mode (CPU); sets --shapes, --kv-heads, --heads, --head-dim, "
    "--iters and --chain itself",
  )
  args = p.parse_args(argv)
  interpret = args.smoke
  from pallas_kernels.gpu import decode as gpu_decode

  if args.smoke:
    set_by_smoke = ("shapes", "kv_heads", "heads", "head_dim", "iters", "chain")
    given = [d for d in set_by_smoke if getattr(args, d) != p.get_default(d)]
    if given:  # they would be replaced below, silently
      flags = ", ".join(f"--{d.replace('_', '-')}" for d in given)
      p.error(f"--smoke sets its own tiny shapes and counts: drop {flags}, or --smoke")
    args.shapes, args.kv_heads, args.heads, args.head_dim = "2x100", "2", 4, 32
    args.iters, args.chain, args.accuracy_all = 2, 3, True
    if args.tunings == "default":  # the merge of split states too
      args.tunings = "default,32:0:0:3"
    if args.merges == "default":
      args.merges = "default,in_kernel"
  merges = args.merges.split(",")
  for m in merges:
    if m != "default" and m not in gpu_decode.MERGES:
      p.error(f"--merges entries are 'default' or one of {gpu_decode.MERGES}, got {m!r}")
  # The arguments' mistakes: one line each, before anything runs or a result file is named.
  names = args.paths.split(",")
  if unknown := [n for n in names if n not in PATHS]:
    p.error(f"--paths: unknown {unknown}; choose from {list(PATHS)}")
  cli_checks.at_least(p, args, 1, "heads", "head_dim", "iters", "chain")
  try:
    dtype = jnp.dtype(args.dtype)
  except TypeError:
    p.error(f"--dtype: unknown dtype {args.dtype!r}; e.g. bfloat16, float16, float32")
  shapes = bench_kernels.parse_shapes(p, args.shapes)
  kv_heads = cli_checks.positive_ints(p, "--kv-heads", args.kv_heads)
  if bad := [h for h in kv_heads if args.heads % h]:
    p.error(f"--kv-heads: {bad} do not divide --heads {args.heads} (GQA groups)")
  if not interpret and (gpu := [n for n in names if n in GPU_PATHS]):
    fix = "pass --smoke (interpret mode) or time parallax_xla,softmax_xla"
    cli_checks.gpu_host(p, f"--paths {','.join(gpu)}: run", fix)
  tunings = {t: parse_tuning(t) for t in args.tunings.split(",")}
  hq, d = args.heads, args.head_dim
  now = datetime.datetime.now()
  device = jax.devices()[0]
  meta = {
    "date": now.isoformat(timespec="seconds"),
    "device": getattr(device, "device_kind", str(device)),
    "backend": jax.default_backend(),
    "versions": versions(),
    "command": run_info.command("experiments.bench_decode", argv),
    "config": {
      "heads": hq,
      "head_dim": d,
      "dtype": str(dtype),
      "q_len": 1,
      "iters": args.iters,
      "chain": args.chain,
      "interpret": interpret,
      "merges": merges,
      "default_merge": gpu_decode.MERGE,
    },
  }
  print(json.dumps(meta, indent=1), flush=True)
  paths = {}
  for name in names:
    if name == "pallas_gpu":
      for merge in merges:
        for label, tuning in tunings.items():
          tags = [t for t in (label, merge) if t != "default"]
          key = f"pallas_gpu[{','.join(tags)}]" if tags else "pallas_gpu"
          fn = parallax_fn("pallas_gpu", tuning, interpret, None if merge == "default" else merge)
          paths[key] = (fn, tuning, None if merge == "default" else merge)
    elif name == "floor":
      paths[name] = (floor_fn(interpret), None, None)
    elif name == "parallax_xla":
      paths[name] = (parallax_fn("xla"), None, None)
    elif name.startswith("softmax_"):
      paths[name] = (softmax_fn(name.removeprefix("softmax_")), None, None)
    else:
      raise ValueError(f"unknown path {name!r} in --paths")

  rows = []
  os.makedirs(args.out, exist_ok=True)
  stem = output_stem(args.out, now.strftime("%Y-%m-%d"), meta["device"])
  for batch, length in shapes:
    for hkv in kv_heads:
      inputs = make_inputs(batch, length, hq, hkv, d, dtype)
      kv_bytes = 2 * batch * length * hkv * d * dtype.itemsize
      ref = None
      for name, (fn, tuning, merge) in paths.items():
        row = {"B": batch, "L": length, "Hkv": hkv, "path": name}
        try:
          if name.startswith("pallas_gpu"):
            row["launch"] = kernel_launch(inputs, tuning, interpret, merge)
          one, many = chained(fn, 1, inputs), chained(fn, args.chain, inputs)
          row["launches"] = launches(one)
          t = per_call_seconds(one, many, args.chain, inputs, args.iters)
          row.update({"us": t * 1e6, "gb_s": kv_bytes / t / 1e9})
          if args.kernel_times:  # device time per kernel (profiler trace; {} on CPU)
            row["kernels_us"] = kernel_times(one, inputs)
          if name == "pallas_gpu" or (name.startswith("pallas_gpu") and args.accuracy_all):
            ref = reference(inputs) if ref is None else ref
            row["accuracy"] = accuracy(one(*inputs), ref)
        except Exception as e:  # noqa: BLE001  one failing cell must not kill the run
          row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
          if not name.startswith("softmax_cudnn"):
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_result(meta, rows, stem)  # after every cell: a run cut short keeps what it measured
      del inputs, ref
  result, stem = write_result(meta, rows, stem)
  print(f"wrote {stem}.json and {stem}.md")
  return result, stem


def to_markdown(result) -> str:
  m = result
  lines = [
    f"# bench_decode {m['date']}",
    "",
    f"- device: {m['device']} ({m['backend']})",
    f"- versions: {m['versions']}",
    f"- command: `{m['command']}`",
    f"- config: {m['config']}",
    "- us: per decode call ((T(chain) - T(1)) / (chain - 1), median chain times); "
    "GB/s: K + V bytes read / time; "
    "launches: kernels per call in the compiled HLO; err: |o - ref| / max|ref| vs the float32 "
    "xla path (max, median)",
    "- kernel us: the device time of the call's kernels (profiler trace, summed; the rest of "
    "'us' is launch gaps)",
    "",
    "| B | L | Hkv | path | us | kernel us | GB/s | splits | launches | err max | err q50 | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in m["rows"]:
    us = f"{r['us']:.1f}" if "us" in r else "-"
    gbs = f"{r['gb_s']:.0f}" if "gb_s" in r else "-"
    splits = str(r["launch"]["num_splits"]) if "launch" in r else "-"
    acc = r.get("accuracy", {})
    emax = f"{acc['max']:.2e}" if acc else "-"
    emed = f"{acc['median']:.2e}" if acc else "-"
    note = r.get("error", "")[:120].replace("|", "/").replace("\n", " ")
    kus = f"{sum(r['kernels_us'].values()):.1f}" if r.get("kernels_us") else "-"
    lines.append(
      f"| {r['B']} | {r['L']} | {r['Hkv']} | {r['path']} | {us} | {kus} | {gbs} | {splits} | "
      f"{r.get('launches', '-')} | "
      f"{emax} | {emed} | {note} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
