"""Issue 13's checks on a multi-device host, beyond ``compare-sharding`` (which gives the strategy
table and the scaling over device counts): context parallelism and resharding.

Parts (``--parts``, comma list; every part isolated: an error is recorded and the run goes on):
  * ``cp_equal``: at ``--equal-len`` the ring (strategy cp, the sequence split over all devices)
    gives the loss and gradients of one device (strategy dp on one device), same params and
    batch: max |g - g1| / max |g1| per parameter and the relative loss difference.
  * ``cp_reach``: for each length of ``--lengths`` (batch ``--batch``, synthetic tokens), one
    device and the ring on all devices: the compiled step's memory per device, then, where it
    fits, ``--steps`` timed steps (tokens/s, MFU). A kind stops at its first length that does
    not fit (memory over the device's limit, or an out-of-memory error).
  * ``reshard``: trains ``--steps`` steps under fsdp on all devices and saves a checkpoint
    (synchronously), takes the next step's loss there, then restores the checkpoint onto one
    device (dp) and onto dp over all devices and takes the same step: the three losses.

  python3 experiments/multi_gpu_check.py --config configs/lm_0p6b.py --out-dir $OUT \\
      --lengths 4096,8192,16384,32768,65536,131072 --equal-len 4096
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python3 experiments/multi_gpu_check.py \\
      --config configs/tiny.py --set train.batch_size=8 --lengths 64,128 --equal-len 64  # CPU
Writes ``<out-dir>/multi_gpu_check_<date>.json`` and ``.md`` (after every part).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench_kernels import versions  # noqa: E402
from parallax_jax.benchmarking import cli_checks, result_files, run_info  # noqa: E402
from parallax_jax.benchmarking.synthetic_batch import synthetic_batch  # noqa: E402
from parallax_jax.train.checkpoint import Checkpointer, abstract_like  # noqa: E402
from parallax_jax.train.config import (  # noqa: E402
  CheckpointConfig,
  apply_overrides,
  resolve,
)
from parallax_jax.train.metrics import compiled_memory_bytes, mfu  # noqa: E402
from parallax_jax.train.program import Program  # noqa: E402

PARTS = ("cp_equal", "cp_reach", "reshard")


def program_for(cfg, strategy: str, devices, seq_len: int, batch: int | None = None) -> Program:
  """``strategy`` over ``devices``: cp splits the sequence over all of them, dp and fsdp the
  batch or the parameters."""
  n = len(devices)
  sizes = {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1}
  sizes[{"dp": "data", "fsdp": "fsdp", "cp": "sequence"}[strategy]] = n
  overrides = [f"sharding.strategy={strategy}", f"train.seq_len={seq_len}"]
  overrides += [f"mesh.{k}={v}" for k, v in sizes.items()]
  if batch is not None:
    overrides.append(f"train.batch_size={batch}")
  return Program(resolve(apply_overrides(copy.deepcopy(cfg), overrides), n), devices)


def _batch(program: Program, seed: int) -> dict:
  exp = program.exp
  return synthetic_batch(exp.model, exp.train.batch_size, exp.train.seq_len, seed=seed)


def cp_equal(cfg, length: int, batch: int | None) -> dict:
  one = program_for(cfg, "dp", jax.devices()[:1], length, batch)
  ring = program_for(cfg, "cp", jax.devices(), length, batch)
  params = jax.device_get(one.init(0).params)
  data = _batch(one, seed=3)
  loss1, grads1 = jax.device_get(one.loss_and_grads(params, one.device_batch(data)))
  loss, grads = jax.device_get(ring.loss_and_grads(params, ring.device_batch(data)))
  worst, where = 0.0, ""
  for (path, g), g1 in zip(
    jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads1), strict=True
  ):
    g, g1 = np.asarray(g, np.float64), np.asarray(g1, np.float64)
    err = float(np.max(np.abs(g - g1)) / max(np.max(np.abs(g1)), 1e-30))
    if err >= worst:
      worst, where = err, jax.tree_util.keystr(path)
  return {
    "length": length,
    "devices": jax.device_count(),
    "loss_one_device": float(loss1),
    "loss_ring": float(loss),
    "loss_rel_diff": abs(float(loss) - float(loss1)) / abs(float(loss1)),
    "grad_max_rel_err": worst,
    "grad_worst_param": where,
  }


def _device_limit(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return (stats or {}).get("bytes_limit")


def reach_one(cfg, strategy: str, devices, length: int, batch: int, steps: int) -> dict:
  """One (kind, length): memory from the compiled step, then timed steps if it fits."""
  row = {"kind": "ring" if strategy == "cp" else "one device", "devices": len(devices)}
  row["length"] = length
  program = program_for(cfg, strategy, devices, length, batch)
  data = [_batch(program, seed=i) for i in range(steps + 1)]
  t0 = time.perf_counter()
  compiled = program.lower_train_step(data[0]).compile()
  row["compile_s"] = time.perf_counter() - t0
  row["memory_bytes"] = need = compiled_memory_bytes(compiled)
  limit = _device_limit(devices[0])
  row["device_limit_bytes"] = limit
  if need is not None and limit is not None and need > limit:
    row["fits"] = False
    return row
  state = program.init(0)
  state, m = program.train_step(state, program.device_batch(data[0]))
  float(m["loss"])
  t0 = time.perf_counter()
  for b in data[1:]:
    state, m = program.train_step(state, program.device_batch(b))
  float(m["loss"])
  dt = (time.perf_counter() - t0) / max(steps, 1)
  tokens = program.exp.train.batch_size * length
  row.update(fits=True, step_time_s=dt, tokens_per_s=tokens / dt)
  row["mfu"] = mfu(program.exp.model.flops_per_token(length) * tokens, dt, len(devices))
  return row


def cp_reach(cfg, lengths, batch: int, steps: int, record) -> list[dict]:
  rows = []
  for strategy, devices in (("dp", jax.devices()[:1]), ("cp", jax.devices())):
    for length in lengths:
      try:
        row = reach_one(cfg, strategy, devices, length, batch, steps)
      except Exception as e:  # an out-of-memory error is a length that does not fit
        oom = "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()
        row = {"kind": "ring" if strategy == "cp" else "one device", "length": length}
        row.update(devices=len(devices), fits=False if oom else None)
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      rows.append(row)
      record(rows)
      if not row.get("fits"):
        break
  return rows


def reshard(cfg, length: int, batch: int | None, steps: int) -> dict:
  devices = jax.devices()
  fsdp = program_for(cfg, "fsdp", devices, length, batch)
  data = [_batch(fsdp, seed=i) for i in range(steps + 1)]
  state = fsdp.init(0)
  for b in data[:steps]:
    state, _ = fsdp.train_step(state, fsdp.device_batch(b))
  out = {"length": length, "devices": len(devices), "saved_step": steps}
  with tempfile.TemporaryDirectory() as d:
    ckpt = Checkpointer(d, CheckpointConfig(async_save=False))
    ckpt.save(steps, state, None)
    ckpt.close()
    _, m = fsdp.train_step(state, fsdp.device_batch(data[steps]))
    out["next_loss_fsdp"] = ref = float(m["loss"])
    _, m = fsdp.train_step(fsdp.init(0), fsdp.device_batch(data[steps]))
    out["same_batch_loss_at_init"] = float(m["loss"])  # differs: the saved steps moved params
    for name, strategy, devs in (("one_device", "dp", devices[:1]), ("dp", "dp", devices)):
      program = program_for(cfg, strategy, devs, length, batch)
      ckpt = Checkpointer(d, CheckpointConfig(async_save=False), read_only=True)
      restored, _ = ckpt.restore(abstract_like(program.abstract_state, program.state_sharding))
      ckpt.close()
      _, m = program.train_step(restored, program.device_batch(data[steps]))
      out[f"next_loss_{name}"] = loss = float(m["loss"])
      out[f"rel_diff_{name}"] = abs(loss - ref) / abs(ref)
  return out


def to_markdown(result: dict) -> str:
  out = [f"# multi_gpu_check {result['date']}", ""]
  out += [f"- {k}: {result[k]}" for k in ("devices", "device_kind", "versions", "command")]
  for part, value in result["parts"].items():
    out += ["", f"## {part}", ""]
    if isinstance(value, dict) and "error" in value:
      out.append(f"error: {value['error']}")
    elif isinstance(value, list):
      keys = list(dict.fromkeys(k for row in value for k in row))
      out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
      out += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in value]
    else:
      out += [f"- {k}: {_cell(v)}" for k, v in value.items()]
  return "\n".join(out) + "\n"


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "-" if v is None else str(v)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--set", action="append", default=[], help="config override k=v (repeatable)")
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
  p.add_argument("--equal-len", type=int, default=4096, help="cp_equal's and reshard's length")
  p.add_argument("--batch", type=int, default=1, help="cp_reach's global batch")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  cli_checks.at_least(p, args, 1, "equal_len", "batch", "steps")
  cli_checks.positive_ints(p, "--lengths", args.lengths)
  parts = args.parts.split(",")
  if set(parts) - set(PARTS):
    p.error(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
  cfg = cli_checks.config(p, args.config, args.set)
  now = datetime.datetime.now()
  result = {
    "date": now.isoformat(timespec="seconds"),
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "versions": versions(),
    "command": run_info.command("experiments.multi_gpu_check", argv),
    "parts": {},
  }
  stem = result_files.new_stem(args.out_dir, f"multi_gpu_check_{now.strftime('%Y-%m-%d_%H%M%S')}")

  def record(part, value):  # after every part: a run cut short keeps what it measured
    result["parts"][part] = value
    result_files.write(stem, result, to_markdown(result))

  lengths = [int(x) for x in args.lengths.split(",")]
  runs = {
    "cp_equal": lambda: cp_equal(cfg, args.equal_len, None),
    "cp_reach": lambda: cp_reach(
      cfg, lengths, args.batch, args.steps, lambda rows: record("cp_reach", rows)
    ),
    "reshard": lambda: reshard(cfg, args.equal_len, None, args.steps),
  }
  for part in parts:
    try:
      record(part, runs[part]())
    except Exception as e:  # recorded; the other parts go on
      traceback.print_exc()
      record(part, {"error": f"{type(e).__name__}: {str(e)[:1000]}"})
    print(json.dumps({part: result["parts"][part]}), flush=True)
  print(f"wrote {stem}.json and {stem}.md")
  return result


if __name__ == "__main__":
  main()
