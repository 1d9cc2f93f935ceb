"""``parallax-jax compare-sharding``: the same train steps under each sharding strategy.

For every strategy it builds the mesh preset (``mesh_preset``), compiles the train step and
reads per-device memory from XLA's compiled memory analysis and collective traffic from the
compiled HLO, runs a few steps, prints the table one row per strategy as it finishes, and writes
``<workdir>/sharding.csv`` and ``sharding.png`` (bar charts). A strategy that fails is
recorded with its error. With several ``device_counts`` (``--devices 1,2,4,8``) every strategy
runs on the first ``n`` devices for each count, at the same global batch, and ``scaling.png``
plots tokens/s against the device count beside linear scaling.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import re
import time
import traceback
from pathlib import Path

import jax

from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
from parallax_jax.errors import UserError
from parallax_jax.flops import MFU_HEADER
from parallax_jax.sharding import STRATEGIES
from parallax_jax.train import run_record
from parallax_jax.train.config import apply_overrides, resolve
from parallax_jax.train.metrics import compiled_memory_bytes, mfu
from parallax_jax.train.program import Program

log = logging.getLogger("parallax_jax")

COLUMNS = (
  "strategy",
  "devices",
  "mesh",
  "step_time_s",
  "tokens_per_s",
  "peak_memory_bytes",
  "collective_bytes",
  "mfu",
  "first_step_loss",
  "compile_s",
  "error",
)

_COLLECTIVE = re.compile(
  r"=\s*(?P<shape>\(?[a-z0-9_\[\],{}:\s]*?\)?)\s*"
  r"(?P<op>all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\("
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
_BYTES = {
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "s8": 1,
  "u8": 1,
  "pred": 1,
}


def collective_bytes(hlo_text: str) -> int:
  """Bytes produced by collective ops in compiled HLO text (per device, one step)."""
  total = 0
  for match in _COLLECTIVE.finditer(hlo_text):
    for arr in _ARRAY.finditer(match.group("shape")):
      dims = [int(d) for d in arr.group("dims").split(",") if d]
      total += _BYTES.get(arr.group("dtype"), 4) * math.prod(dims)
  return total


def mesh_preset(strategy: str, n: int, model, seq_len: int, processes: int = 1) -> dict[str, int]:
  """Mesh sizes for a strategy on ``n`` devices (the widest split the shapes allow). The tensor
  and sequence axes stay within one of ``processes`` processes (each reads its own rows)."""
  per_process = max(n // processes, 1)

  def largest(fits):
    return max(d for d in range(1, per_process + 1) if per_process % d == 0 and fits(d))

  tensor = largest(
    lambda t: (
      model.num_kv_heads % t == 0
      and model.num_heads % t == 0
      and model.mlp_dim % t == 0
      and (not model.has_vocab or model.vocab_size % t == 0)
    )
  )
  # fsdp shards every parameter along d_model: the widest split of the batch axes it divides.
  fsdp = lambda rest: max(f for f in range(1, rest + 1) if rest % f == 0 and model.d_model % f == 0)
  sizes = {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1}
  if strategy == "dp":
    sizes["data"] = n
  elif strategy == "fsdp":
    sizes.update(fsdp=fsdp(n), data=n // fsdp(n))
  elif strategy == "tp":
    sizes.update(tensor=tensor, data=n // tensor)
  elif strategy == "fsdp_tp":
    rest = n // tensor
    sizes.update(tensor=tensor, fsdp=fsdp(rest), data=rest // fsdp(rest))
  elif strategy == "cp":
    seq = largest(lambda s: seq_len % (2 * s) == 0)
    sizes.update(sequence=seq, data=n // seq)
  else:
    raise ValueError(f"unknown strategy {strategy!r}; known: {STRATEGIES}")
  # A strategy whose own axis got no split would run as dp / fsdp under its name.
  if n > 1 and strategy in ("tp", "fsdp_tp") and tensor == 1:
    vocab = f" and vocab_size={model.vocab_size}" if model.has_vocab else ""
    alone = "fsdp" if strategy == "fsdp_tp" else "dp"
    raise UserError(
      f"{strategy} on {n} devices: no tensor split of 2+ of a process's {per_process} devices "
      f"divides num_heads={model.num_heads}, num_kv_heads={model.num_kv_heads}, "
      f"mlp_dim={model.mlp_dim}{vocab}; the row would be {alone}"
    )
  if n // sizes["tensor"] > 1 and strategy in ("fsdp", "fsdp_tp") and sizes["fsdp"] == 1:
    raise UserError(
      f"{strategy} on {n} devices: no fsdp split of 2+ devices divides "
      f"d_model={model.d_model}; the row would be {'tp' if strategy == 'fsdp_tp' else 'dp'}"
    )
  if n > 1 and strategy == "cp" and sizes["sequence"] == 1:
    raise UserError(
      f"cp on {n} devices: train.seq_len={seq_len} has no split over 2+ of a process's "
      f"{per_process} devices into an even number of chunks each (zigzag); the row would be dp"
    )
  return sizes


def run_strategy(cfg, strategy: str, steps: int, synthetic: bool, devices=None) -> dict:
  """One strategy on ``devices`` (default: all): compile, memory, collectives, timed steps."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  probe = resolve(cfg)
  sizes = mesh_preset(strategy, n, probe.model, probe.train.seq_len, jax.process_count())
  cfg = apply_overrides(
    copy.deepcopy(cfg),
    [f"sharding.strategy={strategy}"] + [f"mesh.{k}={v}" for k, v in sizes.items()],
  )
  exp = resolve(cfg, n)
  mesh = " ".join(f"{k}={v}" for k, v in sizes.items() if v > 1)
  row = {"strategy": strategy, "devices": n, "mesh": mesh}
  program = Program(exp, devices)
  if synthetic:  # this process's rows, as TrainData gives them
    b, t = exp.train.batch_size // jax.process_count(), exp.train.seq_len
    seed = 1000 * jax.process_index()
    batches = [synthetic_batch(exp.model, b, t, seed=seed + i) for i in range(steps + 1)]
  else:
    from parallax_jax.train.data_io import TrainData

    data = TrainData(exp)
    batches = [data.next_train() for _ in range(steps + 1)]
  t0 = time.perf_counter()
  compiled = program.lower_train_step(batches[0]).compile()
  row["compile_s"] = time.perf_counter() - t0
  row["peak_memory_bytes"] = compiled_memory_bytes(compiled)
  row["collective_bytes"] = collective_bytes(compiled.as_text())
  state = program.init(exp.train.seed)
  state, m = program.train_step(state, program.device_batch(batches[0]))
  row["first_step_loss"] = float(m["loss"])
  t0 = time.perf_counter()
  for batch in batches[1:]:
    state, m = program.train_step(state, program.device_batch(batch))
  float(m["loss"])
  dt = (time.perf_counter() - t0) / max(steps, 1)
  tokens = exp.train.batch_size * exp.train.seq_len
  row["step_time_s"] = dt
  row["tokens_per_s"] = tokens / dt
  row["mfu"] = mfu(exp.model.flops_per_token(exp.train.seq_len) * tokens, dt, n)
  return row


def plot(rows: list[dict], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ok = [r for r in rows if not r.get("error")]
  metrics = [
    ("step_time_s", "step time (s)"),
    ("peak_memory_bytes", "peak memory / device (MiB)"),
    ("collective_bytes", "collective bytes / device (MiB)"),
  ]
  fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
  for ax, (key, label) in zip(axes, metrics, strict=True):
    scale = 2**20 if "bytes" in key else 1
    values = [(r[key] or 0) / scale for r in ok]
    several = len({r["devices"] for r in ok}) > 1
    labels = [f"{r['strategy']}@{r['devices']}" if several else r["strategy"] for r in ok]
    ax.bar(labels, values, color="tab:blue")
    ax.set_title(label)
    ax.tick_params(axis="x", rotation=30)
  counts = sorted({r["devices"] for r in ok}) or [jax.device_count()]
  fig.suptitle(f"{'/'.join(map(str, counts))} x {jax.devices()[0].device_kind}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_scaling(rows: list[dict], path: Path) -> None:
  """tokens/s against the device count, one line per strategy, beside linear scaling from
  each strategy's smallest count."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.6))
  for strategy in dict.fromkeys(r["strategy"] for r in rows):
    ok = sorted(
      (r["devices"], r["tokens_per_s"])
      for r in rows
      if r["strategy"] == strategy and not r.get("error")
    )
    if not ok:
      continue
    (line,) = ax.plot(*zip(*ok, strict=True), marker="o", label=strategy)
    n0, t0 = ok[0]
    ideal = [(n, t0 * n / n0) for n, _ in ok]
    ax.plot(*zip(*ideal, strict=True), linestyle=":", color=line.get_color())
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("devices")
  ax.set_ylabel("tokens/s (dotted: linear)")
  ax.legend(fontsize=8)
  ax.set_title(jax.devices()[0].device_kind)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def format_table(rows: list[dict]) -> str:
  head = [
    "strategy",
    "devices",
    "mesh",
    "step (s)",
    "tokens/s",
    "peak MiB",
    "collective MiB",
    MFU_HEADER,
    "loss@1",
  ]
  lines = [" | ".join(head)]
  for r in rows:
    if r.get("error"):
      lines.append(f"{r['strategy']} | {r.get('devices', '-')} | failed: {r['error'][:80]}")
      continue
    mfu_text = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    peak = f"{r['peak_memory_bytes'] / 2**20:.1f}" if r.get("peak_memory_bytes") else "-"
    lines.append(
      f"{r['strategy']} | {r['devices']} | {r['mesh']} | {r['step_time_s']:.4f} | "
      f"{r['tokens_per_s']:.0f} | "
      f"{peak} | {r['collective_bytes'] / 2**20:.2f} | {mfu_text} | {r['first_step_loss']:.6f}"
    )
  return "\n".join(lines)


def check_output_folder(workdir: Path, *, scaling: bool) -> None:
  """Refuses, before anything compiles, a folder that holds a training run (a run is read,
  never written into, by the other commands), a sweep or an earlier comparison's results (never
  overwritten)."""
  if run_record.holds_run(workdir):
    raise UserError(
      f"--workdir {str(workdir)!r} holds a training run (config.json); compare-sharding "
      "writes its results into a folder of its own: pass a new one"
    )
  if (workdir / run_record.SWEEP).is_file():  # a sweep's folder: its reports and points only
    raise UserError(
      f"--workdir {str(workdir)!r} holds a sweep ({run_record.SWEEP}); compare-sharding "
      "writes its results into a folder of its own: pass a new one"
    )
  names = ["sharding.csv", "sharding.png", *(["scaling.png"] if scaling else [])]
  taken = [n for n in names if (workdir / n).exists()]
  if taken:
    raise UserError(
      f"--workdir {str(workdir)!r} already holds {', '.join(taken)} from an earlier "
      "comparison; pass a new folder (results are never overwritten)"
    )


def compare_sharding(
  cfg, strategies, workdir, *, steps: int = 3, synthetic: bool = False, device_counts=None
):
  """Every strategy (on the first ``n`` devices for each of ``device_counts``; default: all
  devices); writes the CSV and the charts, returns the rows (a failed run: its error)."""
  if steps < 1:  # no timed step: the timings would be made up
    raise UserError(f"--steps must be >= 1 (timed steps after the first), got {steps}")
  available = jax.device_count()
  counts = list(device_counts or [available])
  bad = [n for n in counts if not 1 <= n <= available]
  if bad:
    raise UserError(
      f"--devices: counts {bad} are not between 1 and the {available} devices here; "
      "give counts this host has"
    )
  workdir = Path(workdir)
  check_output_folder(workdir, scaling=len(counts) > 1)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  print(format_table([]), flush=True)  # the header; each row follows as its run ends
  for n in counts:
    for strategy in strategies:
      try:
        row = run_strategy(cfg, strategy, steps, synthetic, jax.devices()[:n])
      except Exception as e:  # record it; the comparison goes on
        log.error("strategy %s on %d devices failed:\n%s", strategy, n, traceback.format_exc())
        row = {"strategy": strategy, "devices": n, "error": f"{type(e).__name__}: {e}"}
      rows.append(row)
      print(format_table([row]).splitlines()[-1], flush=True)
  if jax.process_index() != 0:  # every process measured the same steps; one writes them
    return rows
  with (workdir / "sharding.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r.get(k) for k in COLUMNS})
  plot(rows, workdir / "sharding.png")
  written = [workdir / "sharding.csv", workdir / "sharding.png"]
  if len(counts) > 1:
    plot_scaling(rows, workdir / "scaling.png")
    written.append(workdir / "scaling.png")
  print("wrote " + ", ".join(map(str, written)))
  return rows
