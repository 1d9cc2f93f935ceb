"""Training throughput of a config's model with Parallax vs softmax attention, same run.

Times the jitted train step (forward, backward, optimizer) on random tokens (no data
pipeline), for each attention kind, at the largest batch from ``--batches`` that fits, and
reports tokens/s and MFU (attention FLOPs counted, see ``ModelConfig.flops_per_token``).

  python -m experiments.bench_train --config configs/lm_0p6b.py --seq-len 4096 \
      --batches 16,12,8,4 --out-dir experiments/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

from parallax_jax.model import ModelConfig
from parallax_jax.train.config import load_config
from parallax_jax.train.metrics import peak_flops_per_device
from parallax_jax.train.optimizer import OptimizerConfig, make_optimizer
from parallax_jax.train.step import init_state, make_train_step, model_graphdef


def _batch(batch_size, seq_len, vocab, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (batch_size, seq_len + 1), 0, vocab)
  return {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": jnp.broadcast_to(jnp.arange(seq_len), (batch_size, seq_len)),
    "segment_ids": None,  # unpacked rows: both kinds run their plain causal kernels
    "loss_mask": jnp.ones((batch_size, seq_len), jnp.float32),
  }


def bench_one(
  model: ModelConfig, opt: OptimizerConfig, batch_size: int, seq_len: int, steps: int, warmup: int
) -> dict:
  tx, schedules = make_optimizer(opt, 1000)
  graphdef, _ = model_graphdef(model)
  state = jax.jit(lambda seed: init_state(model, tx, seed))(jnp.int32(0))
  step = jax.jit(make_train_step(graphdef, tx, schedules), donate_argnums=(0,))
  batch = _batch(batch_size, seq_len, model.vocab_size)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  float(m["loss"])
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, m = step(state, batch)
  float(m["loss"])
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  loss = float(m["loss"])
  dt = (time.perf_counter() - t0) / steps
  tokens = batch_size * seq_len
  peak = peak_flops_per_device()
  flops = model.flops_per_token(seq_len) * tokens
  return {
    "batch_size": batch_size,
    "step_time_s": dt,
    "tokens_per_s": tokens / dt,
    "tflops_per_s": flops / dt / 1e12,
    "mfu": flops / dt / peak if peak else None,
    "loss": loss,
    "compile_s": compile_s,
    "peak_bytes": _peak_bytes(),
  }


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/lm_0p6b.py")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--batches", default="16,12,8,4", help="tried largest first until one fits")
  p.add_argument("--attention", default="softmax,parallax")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
  p.add_argument("--out-dir", default=None)
  args, overrides = p.parse_known_args(argv)
  cfg = load_config(args.config, overrides)
  base = ModelConfig.from_dict(cfg.model.to_dict())
  if args.layers:
    base = dataclasses.replace(base, num_layers=args.layers)
  opt = OptimizerConfig.from_dict(cfg.optimizer.to_dict())
  rows = []
  for kind in args.attention.split(","):
    model = dataclasses.replace(base, attention=kind)
    for b in map(int, args.batches.split(",")):
      try:
        row = bench_one(model, opt, b, args.seq_len, args.steps, args.warmup)
      except Exception as e:  # OOM (or any failure): record it, try the next batch size
        rows.append({"attention": kind, "batch_size": b, "error": repr(e)[:500]})
        print(f"{kind} B={b}: failed: {repr(e)[:200]}", flush=True)
        if "RESOURCE_EXHAUSTED" not in repr(e) and "out of memory" not in repr(e).lower():
          traceback.print_exc()
        continue
      row.update(attention=kind, params=model.num_params())
      rows.append(row)
      print(json.dumps(row), flush=True)
      break
  ok = {r["attention"]: r for r in rows if "error" not in r}
  ratio = (
    ok["parallax"]["tokens_per_s"] / ok["softmax"]["tokens_per_s"]
    if {"parallax", "softmax"} <= set(ok)
    else None
  )
  record = {
    "what": f"train step tokens/s and MFU, {args.config}, seq_len {args.seq_len}",
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": jax.devices()[0].device_kind,
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "command": "python -m experiments.bench_train "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "num_layers": base.num_layers,
    "parallax_over_softmax_tokens_per_s": ratio,
    "rows": rows,
  }
  print(json.dumps({"parallax_over_softmax_tokens_per_s": ratio}))
  if args.out_dir:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_train_{Path(args.config).stem}_{datetime.date.today().isoformat()}"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
      f"# {record['what']}",
      "",
      f"- date: {record['date']}; device: {record['device']}; jax {record['jax']}",
      f"- command: `{record['command']}`",
      "",
      "| attention | batch | step (s) | tokens/s | TFLOP/s | MFU | peak mem (GiB) |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
      if "error" in r:
        lines.append(
          f"| {r['attention']} | {r['batch_size']} | failed: {r['error'][:60]} | | | | |"
        )
        continue
      mem = f"{r['peak_bytes'] / 2**30:.1f}" if r.get("peak_bytes") else "-"
      mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
      lines.append(
        f"| {r['attention']} | {r['batch_size']} | {r['step_time_s']:.3f} | "
        f"{r['tokens_per_s']:.0f} | {r['tflops_per_s']:.0f} | {mfu} | {mem} |"
      )
    if ratio:
      lines += ["", f"Parallax / softmax tokens/s: {ratio:.3f}"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  return record


if __name__ == "__main__":
  main()
