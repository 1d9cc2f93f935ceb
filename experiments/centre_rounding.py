"""What the W2 centre costs in rounding: the Mosaic GPU forward's running centre against a centre
fixed by a row's first tile (and none), emulated in float64 NumPy with bf16-rounded operands.

The blockwise forward of docs/design.md §3.5 is replayed tile by tile in float64, rounding only
what the kernel rounds: the PV operands ``w`` and ``w (t - c)`` and ``V`` to bfloat16. Each
centre rule is exact in exact arithmetic, so the error against the float64 reference is the
rounding alone. Scenarios stretch what moves ``t`` between tiles: a large ``r`` (``t_scale``),
an attention sink (key 0 scaled up), and a drift of ``t`` along the key positions.

  python -m experiments.centre_rounding [--length 1024] [--seeds 3] [--out-dir DIR]
Writes ``<out-dir>/centre_rounding_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parallax_jax.benchmarking import result_files, run_info  # noqa: E402
from parallax_jax.environment import package_versions  # noqa: E402

CENTRES = ("running", "first", "none")
SCENARIOS = {
  "gaussian": {},
  "large r (t x4)": {"t_scale": 4.0},
  "attention sink (k0 x9)": {"sink": 8.0},
  "t drift 3 over the keys": {"drift": 3.0},
  "t drift 10, r x2": {"drift": 10.0, "t_scale": 2.0},
  "sink and drift 5": {"sink": 8.0, "drift": 5.0},
}


def _bf16(x):
  return x.astype(ml_dtypes.bfloat16).astype(np.float64)


def inputs(seed, length, d, sink=0.0, drift=0.0, t_scale=1.0):
  """``(s, t, v)``: causal scores (``-inf`` above the diagonal), ``t = r.k`` and values."""
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=(length, d)) for _ in range(3))
  r = rng.normal(size=(length, d)) * t_scale / np.sqrt(d)
  k[0] *= 1 + sink
  s = q @ k.T / np.sqrt(d)
  t = r @ k.T + drift * np.linspace(-1, 1, length)[None, :]
  visible = np.arange(length)[None, :] <= np.arange(length)[:, None]
  return np.where(visible, s, -np.inf), t, v


def reference(s, t, v):
  p = np.exp(s - s.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  tbar = (p * t).sum(1, keepdims=True)
  return (p * (1 + tbar - t)) @ v


def blockwise(s, t, v, centre, block_k=64, rounding=True):
  """The kernel's recurrence (running max, ``accb = acc2 - c acc1``) with bf16 PV operands
  (float64 throughout without ``rounding``)."""
  rnd = _bf16 if rounding else (lambda x: x)
  rows, d = s.shape[0], v.shape[1]
  m, d1, d2, cen = np.full(rows, -np.inf), np.zeros(rows), np.zeros(rows), np.zeros(rows)
  acc1, accb = np.zeros((rows, d)), np.zeros((rows, d))
  for j in range(0, s.shape[1], block_k):
    s_j, t_j, v_j = s[:, j : j + block_k], t[:, j : j + block_k], rnd(v[j : j + block_k])
    m_new = np.maximum(m, s_j.max(1))
    m_use = np.where(np.isinf(m_new), 0.0, m_new)
    alpha, w = np.exp(m - m_use), np.exp(s_j - m_use[:, None])
    d1_old = d1
    d1, d2 = alpha * d1 + w.sum(1), alpha * d2 + (w * t_j).sum(1)
    mean = np.where(d1 > 0, d2 / np.where(d1 > 0, d1, 1.0), 0.0)
    cen_new = {"running": mean, "first": np.where(d1_old > 0, cen, mean), "none": 0 * mean}[centre]
    acc1 = acc1 * alpha[:, None]
    accb = accb * alpha[:, None] - (cen_new - cen)[:, None] * acc1  # zero unless "running"
    acc1 += rnd(w) @ v_j
    accb += rnd(w * (t_j - cen_new[:, None])) @ v_j
    m, cen = m_new, cen_new
  barv, bart = acc1 / d1[:, None], d2 / d1
  return barv - accb / d1[:, None] + (bart - cen)[:, None] * barv


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--length", type=int, default=1024)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  for flag in ("length", "head_dim", "seeds"):  # 0 seeds: a table of NaN, written as a result
    if getattr(args, flag) < 1:
      p.error(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
  now = datetime.datetime.now()
  result = {
    "what": "RMS error of o against float64, bf16 PV operands, per W2 centre rule",
    "date": now.isoformat(timespec="seconds"),
    # NumPy on the host's CPU: the machine and the libraries that do the arithmetic
    "device": f"{platform.machine()} CPU ({os.cpu_count()} cores), {platform.system()}",
    "versions": {"python": platform.python_version(), **package_versions(("numpy", "ml_dtypes"))},
    "command": run_info.command("experiments.centre_rounding", argv),
    "config": {"length": args.length, "head_dim": args.head_dim, "seeds": args.seeds},
    "rows": [],
  }
  for name, kw in SCENARIOS.items():
    errs = {c: [] for c in CENTRES}
    for seed in range(args.seeds):
      s, t, v = inputs(seed, args.length, args.head_dim, **kw)
      ref = reference(s, t, v)
      for c in CENTRES:
        errs[c].append(float(np.sqrt(np.mean((blockwise(s, t, v, c) - ref) ** 2))))
    row = {"scenario": name, **{f"rms_{c}": float(np.mean(errs[c])) for c in CENTRES}}
    row["first_over_running"] = row["rms_first"] / row["rms_running"]
    result["rows"].append(row)
    print(json.dumps(row), flush=True)
  result_files.save(
    args.out_dir, f"centre_rounding_{now.strftime('%Y-%m-%d')}", result, to_markdown(result)
  )
  return result


def to_markdown(result: dict) -> str:
  out = [f"# centre_rounding {result['date']}", "", f"- {result['what']}"]
  out += [f"- {k}: {result[k]}" for k in ("device", "versions", "command", "config")]
  out += ["", "| scenario | " + " | ".join(f"rms, {c}" for c in CENTRES) + " | first / running |"]
  out.append("|---|" + "---:|" * (len(CENTRES) + 1))
  for row in result["rows"]:
    cols = [f"{row[f'rms_{c}']:.3e}" for c in CENTRES] + [f"{row['first_over_running']:.2f}"]
    out.append(f"| {row['scenario']} | " + " | ".join(cols) + " |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
