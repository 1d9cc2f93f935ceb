"""Reads Nsight Compute's CSV (``ncu --import R --csv --page details --print-units base``) into
one record per profiled kernel launch, and summarises what limits each kernel.

A record keeps every metric ncu printed (``"Section / Metric Name"`` -> number, or text when it
is not a number) beside the launch's kernel name, block and grid size, so nothing is lost; the
summary picks the fields that say where a kernel's time goes: registers and shared memory per
block, which of them bounds the resident blocks, achieved occupancy, issue-slot and tensor-pipe
use, DRAM throughput, register spills to local memory, the L2 hit rate, shared-memory traffic
and its bank conflicts, the sectors L2 reduced and the warp stall reasons that dominate
(docs/design.md §5.6).
"""

from __future__ import annotations

import csv
import io

__all__ = ["parse_details_csv", "summarize", "to_markdown"]

# Raw metrics asked for with --metrics beside the sections (Hopper names): warp stall reasons
# (warps stalled per issued instruction) and the tensor pipes (wgmma: gmma, mma.sync: hmma).
STALLS = (
  "barrier",
  "long_scoreboard",
  "short_scoreboard",
  "math_pipe_throttle",
  "mio_throttle",
  "lg_throttle",
  "wait",
  "not_selected",
  "dispatch_stall",
  "membar",
  "no_instruction",
  "branch_resolving",
  "sleeping",
)
STALL_METRICS = tuple(
  f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio" for s in STALLS
)
TENSOR_METRICS = (
  "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
  "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
)
# Shared memory through the LSU pipe (register <-> SMEM loads and stores; wgmma's and TMA's
# SMEM reads are not in it): wavefronts and the excess wavefronts that bank conflicts cause,
# per direction; and the sectors L2 reduced (TMA reductions, atomics).
SMEM_METRICS = {
  op: (
    f"l1tex__data_pipe_lsu_wavefronts_mem_shared_op_{op}.sum",
    f"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_{op}.sum",
  )
  for op in ("ld", "st")
}
L2_REDUCTION_METRIC = "lts__t_sectors_op_red.sum"
RAW_METRICS = (
  STALL_METRICS
  + TENSOR_METRICS
  + tuple(m for pair in SMEM_METRICS.values() for m in pair)
  + (L2_REDUCTION_METRIC,)
)


def _number(text: str) -> float | str:
  try:
    return float(text.replace(",", ""))
  except ValueError:
    return text


def parse_details_csv(text: str) -> list[dict]:
  """``[{"id", "kernel", "block", "grid", "metrics": {"Section / Metric": value}}]`` in launch
  order. Lines before the CSV header (ncu's ``==PROF==`` messages) are skipped."""
  lines = text.splitlines()
  start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
  if start is None:
    raise ValueError("no ncu details CSV header (a line starting with '\"ID\"') in the text")
  launches: dict[str, dict] = {}
  for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
    if not row.get("Metric Name"):
      continue
    rec = launches.setdefault(
      row["ID"],
      {
        "id": int(row["ID"]),
        "kernel": row.get("Kernel Name", ""),
        "block": row.get("Block Size", ""),
        "grid": row.get("Grid Size", ""),
        "metrics": {},
      },
    )
    section = row.get("Section Name", "")
    key = f"{section} / {row['Metric Name']}" if section else row["Metric Name"]
    rec["metrics"][key] = _number(row.get("Metric Value", ""))
  return sorted(launches.values(), key=lambda r: r["id"])


def _find(metrics: dict, name: str):
  """The value of the metric whose name (after the section) is ``name``; None if absent."""
  for key, value in metrics.items():
    if key == name or key.endswith(f" / {name}"):
      return value
  return None


def _scaled(x, factor: float):
  return x * factor if isinstance(x, float) else None


def _conflict_pct(metrics: dict, op: str):
  """Share of the shared-memory wavefronts of ``op`` ("ld"/"st") that bank conflicts added."""
  wavefronts, conflicts = (_find(metrics, name) for name in SMEM_METRICS[op])
  if not (isinstance(wavefronts, float) and isinstance(conflicts, float)) or wavefronts <= 0:
    return None
  return 100.0 * conflicts / wavefronts


def summarize(record: dict) -> dict:
  """The limits of one launch, in base units (ns, bytes, percent)."""
  m = record["metrics"]
  limits = {
    lim: _find(m, f"Block Limit {lim}") for lim in ("Registers", "Shared Mem", "Warps", "SM")
  }
  known = {k: v for k, v in limits.items() if isinstance(v, float)}
  stalls = {s: _find(m, metric) for s, metric in zip(STALLS, STALL_METRICS, strict=True)}
  stalls = {s: v for s, v in stalls.items() if isinstance(v, float)}
  tensor = [v for v in (_find(m, t) for t in TENSOR_METRICS) if isinstance(v, float)]
  smem = [
    v
    for v in (
      _find(m, "Dynamic Shared Memory Per Block"),
      _find(m, "Static Shared Memory Per Block"),
    )
    if isinstance(v, float)
  ]
  return {
    "kernel": record["kernel"],
    "duration_us": _scaled(_find(m, "Duration"), 1e-3),  # ns -> us
    "registers_per_thread": _find(m, "Registers Per Thread"),
    "shared_memory_per_block_kib": sum(smem) / 1024 if smem else None,
    "block": record["block"],
    "grid": record["grid"],
    "blocks_per_sm_limited_by": min(known, key=known.get) if known else None,
    "block_limits": limits,
    "achieved_occupancy_pct": _find(m, "Achieved Occupancy"),
    "issue_slots_busy_pct": _find(m, "Issue Slots Busy"),
    "tensor_pipe_pct": max(tensor) if tensor else None,
    "sm_throughput_pct": _find(m, "Compute (SM) Throughput"),
    "dram_throughput_pct": _find(m, "DRAM Throughput"),
    "local_spill_requests": _find(m, "Local Memory Spilling Requests"),
    "l2_hit_pct": _find(m, "L2 Hit Rate"),
    "warp_cycles_per_issue": _find(m, "Warp Cycles Per Issued Instruction"),
    "smem_wavefronts": {op: _find(m, SMEM_METRICS[op][0]) for op in SMEM_METRICS},
    "smem_conflict_pct": {op: _conflict_pct(m, op) for op in SMEM_METRICS},
    "l2_reduction_sectors": _find(m, L2_REDUCTION_METRIC),
    "top_stalls": dict(sorted(stalls.items(), key=lambda kv: -kv[1])[:3]),
  }


def _fmt(x, spec=".1f") -> str:
  return "-" if x is None else (format(x, spec) if isinstance(x, float) else str(x))


def _pair(summary: dict, key: str, factor: float, spec: str) -> str:
  """``"ld / st"`` of a per-direction field (summaries written before it existed: "-")."""
  both = summary.get(key) or {}
  return " / ".join(_fmt(_scaled(both.get(op), factor), spec) for op in ("ld", "st"))


def to_markdown(summaries: list[dict]) -> str:
  """One table row per launch."""
  head = (
    "| kernel | us | regs/thread | smem/block KiB | blocks/SM bound by | achieved occ % | "
    "issue busy % | tensor pipe % | DRAM % | L2 hit % | spill requests (M) | cycles/issue | "
    "SMEM ld / st wavefronts (M) | SMEM ld / st conflict % | L2 reduced sectors (M) | "
    "top stalls (warps per issue) |\n"
    "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
  )
  rows = []
  for s in summaries:
    stalls = ", ".join(f"{k} {v:.2f}" for k, v in s["top_stalls"].items()) or "-"
    rows.append(
      f"| {s['kernel'][:48]} | {_fmt(s['duration_us'])} | {_fmt(s['registers_per_thread'], '.0f')}"
      f" | {_fmt(s['shared_memory_per_block_kib'])} | {_fmt(s['blocks_per_sm_limited_by'])}"
      f" | {_fmt(s['achieved_occupancy_pct'])} | {_fmt(s['issue_slots_busy_pct'])}"
      f" | {_fmt(s['tensor_pipe_pct'])} | {_fmt(s['dram_throughput_pct'])}"
      f" | {_fmt(s['l2_hit_pct'])} | {_fmt(_scaled(s['local_spill_requests'], 1e-6), '.2f')}"
      f" | {_fmt(s['warp_cycles_per_issue'])}"
      f" | {_pair(s, 'smem_wavefronts', 1e-6, '.2f')} | {_pair(s, 'smem_conflict_pct', 1, '.1f')}"
      f" | {_fmt(_scaled(s.get('l2_reduction_sectors'), 1e-6), '.2f')} | {stalls} |"
    )
  return head + "\n".join(rows) + "\n"
