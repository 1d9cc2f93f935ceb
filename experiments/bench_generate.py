"""End-to-end generation speed: Parallax beside softmax, the same model size, the same run.

For each attention kind, builds the config's model with random weights (bf16 parameters, as a
serving copy would hold them), and for each (batch, prompt length) runs
``parallax_jax.inference.generate`` on random prompt tokens: prefill, then ``--new-tokens``
greedy decode steps (no EOS, every row runs to the end). Reports prefill tokens/s and decode
tokens/s (``GenerationResult``: compiled calls only, compilation excluded; decode time runs
from dispatch of each chunk to the host read of its tokens), the best of ``--repeats`` runs.

  python -m experiments.bench_generate --config configs/lm_0p6b.py \
      --batches 1,32 --prompt-lens 1024,4096 --new-tokens 256 --out-dir experiments/results
  python -m experiments.bench_generate --smoke        # tiny model on CPU (a test runs it)

Writes ``<out-dir>/bench_generate_<config>_<date>[_N].{json,md}`` (never overwrites).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from parallax_jax.benchmarking import cli_checks, result_files
from parallax_jax.benchmarking.run_info import run_info
from parallax_jax.inference.generate import generate
from parallax_jax.model import ModelConfig, Transformer

SMOKE_MODEL = dict(
  vocab_size=256,
  d_model=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=16,
  mlp_dim=128,
  compute_dtype="float32",
)

# The full run's and --smoke's --batches, --prompt-lens, --new-tokens and --repeats.
SHAPES = dict(batches="1,32", prompt_lens="1024,4096", new_tokens=256, repeats=2)
SMOKE_SHAPES = dict(batches="2", prompt_lens="16", new_tokens=8, repeats=1)


def build_model(cfg: ModelConfig, seed: int = 0):
  """``(graphdef, params)`` of a model with random weights, built leaf by leaf.

  The model's own initialisers, jitted as one program, took ~112 s per 0.6B model on the H200
  (compiling 0.6B random draws); a benchmark needs only weights of a realistic scale. So the
  parameter tree comes from ``nnx.eval_shape`` and each leaf is drawn by one small jitted
  normal (compiled once per distinct shape): ``N(0, 1/fan_in)`` for matrices (fan-in: the
  first axis; embeddings, whose first axis is the vocabulary, ``N(0, 0.02^2)``), ones for
  1-D leaves (norm scales)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0))))
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(seed), len(leaves))

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def normal(key, shape, dtype, std):
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

  def draw(key, leaf):
    shape, dtype = leaf.shape, leaf.dtype
    if len(shape) < 2:
      return jnp.ones(shape, dtype)
    std = 0.02 if shape[0] == cfg.vocab_size else shape[0] ** -0.5
    return normal(key, shape, dtype, std)

  return graphdef, jax.tree.unflatten(
    treedef, [draw(k, x) for k, x in zip(keys, leaves, strict=True)]
  )


def bench_one(model, cfg: ModelConfig, batch: int, prompt_len: int, args) -> dict:
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
  best = None
  compile_s = 0.0
  for _ in range(args.repeats + 1):  # the first run compiles
    res = generate(
      model,
      prompts,
      max_new_tokens=args.new_tokens,
      eos_id=None,
      chunk_tokens=args.chunk_tokens,
      prefill_chunk=args.prefill_chunk,
    )
    compile_s = max(compile_s, res.compile_s)
    if res.compile_s:
      continue
    if best is None or res.decode_s < best.decode_s:
      best = res
  assert best is not None
  return {
    "batch": batch,
    "prompt_len": prompt_len,
    "new_tokens": args.new_tokens,
    "prefill_s": best.prefill_s,
    "prefill_tokens_per_s": best.prefill_tokens_per_s,
    "decode_s": best.decode_s,
    "decode_tokens": best.decode_tokens,
    "decode_tokens_per_s": best.decode_tokens_per_s,
    "decode_ms_per_step": 1e3 * best.decode_s / max(args.new_tokens - 1, 1),
    "compile_s": compile_s,
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/lm_0p6b.py")
  p.add_argument("--attention", default="parallax,softmax")
  # None: not given, so --smoke's value or the full run's (an explicit flag wins over either)
  p.add_argument("--batches", default=None, help=f"default {SHAPES['batches']!r}")
  p.add_argument("--prompt-lens", default=None, help=f"default {SHAPES['prompt_lens']!r}")
  p.add_argument("--new-tokens", type=int, default=None, help=f"default {SHAPES['new_tokens']}")
  p.add_argument("--chunk-tokens", type=int, default=64, help="decode steps per jitted call")
  p.add_argument("--prefill-chunk", type=int, default=None)
  p.add_argument(
    "--repeats",
    type=int,
    default=None,
    help=f"timed runs after the compiling one (default {SHAPES['repeats']})",
  )
  p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
  p.add_argument(
    "--smoke",
    action="store_true",
    help="tiny CPU model; unless given, --batches 2 --prompt-lens 16 --new-tokens 8 --repeats 1",
  )
  p.add_argument("--out-dir", default=None)
  args = p.parse_args(argv)
  kinds = [cli_checks.attention_kind(p, "--attention", k) for k in args.attention.split(",")]
  for key, value in (SMOKE_SHAPES if args.smoke else SHAPES).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  cli_checks.at_least(
    p, args, 1, "new_tokens", "chunk_tokens", "prefill_chunk", "repeats", "layers"
  )
  batches = cli_checks.positive_ints(p, "--batches", args.batches)
  prompt_lens = cli_checks.positive_ints(p, "--prompt-lens", args.prompt_lens)
  if args.smoke:
    base = ModelConfig(**SMOKE_MODEL)
  else:
    cfg = cli_checks.config(p, args.config)
    base = ModelConfig.from_dict(cfg.model.to_dict())
    # A serving copy: bf16 weights (no per-token f32 -> bf16 weight casts), no remat.
    base = dataclasses.replace(base, param_dtype="bfloat16", remat="none")
  if args.layers:
    base = dataclasses.replace(base, num_layers=args.layers)
  rows = []
  stem = _new_stem(args) if args.out_dir else None
  # Every kind's model is built up front and the kinds alternate inside each (batch, prompt),
  # so a run cut short still holds Parallax and softmax side by side.
  models = {}
  for kind in kinds:
    t0 = time.perf_counter()
    models[kind] = build_model(base.with_attention(kind))
    print(f"built the {kind} model in {time.perf_counter() - t0:.1f} s", flush=True)
  for b in batches:
    for n in prompt_lens:
      for kind in kinds:
        mcfg = base.with_attention(kind)
        try:
          row = bench_one(models[kind], mcfg, b, n, args)
        except Exception as e:  # recorded; the run goes on
          traceback.print_exc()
          row = {"batch": b, "prompt_len": n, "error": repr(e)[:500]}
        row["attention"] = kind
        rows.append(row)
        print(json.dumps(row), flush=True)
        _report(args, argv, base, rows, stem)  # after every row: a run cut short keeps it
  return _report(args, argv, base, rows, stem, final=True)


def _ratios(rows):
  ok = {(r["attention"], r["batch"], r["prompt_len"]): r for r in rows if "error" not in r}
  out = []
  for (kind, b, n), r in ok.items():
    s = ok.get(("softmax", b, n))
    if kind == "parallax" and s:
      out.append(
        {
          "batch": b,
          "prompt_len": n,
          "prefill": r["prefill_tokens_per_s"] / s["prefill_tokens_per_s"],
          "decode": r["decode_tokens_per_s"] / s["decode_tokens_per_s"],
        }
      )
  return out


def _new_stem(args) -> Path:
  layers = f"_{args.layers}layers" if args.layers else ""
  config = "smoke" if args.smoke else Path(args.config).stem
  name = f"bench_generate_{config}{layers}_{datetime.date.today().isoformat()}"
  return result_files.new_stem(args.out_dir, name)


def _report(args, argv, base: ModelConfig, rows, stem: Path | None, final=False) -> dict:
  record = {
    "what": "generation: prefill and decode tokens/s, Parallax beside softmax",
    **run_info("experiments.bench_generate", argv),
    "model": dataclasses.asdict(base),
    "parallax_over_softmax": _ratios(rows),
    "rows": rows,
  }
  if stem is None:
    return record
  m = base
  lines = [
    f"# {record['what']}",
    "",
    f"- date: {record['date']}; device: {record['device']}; jax {record['jax']}",
    f"- command: `{record['command']}`",
    f"- model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads}/{m.num_kv_heads} heads "
    f"of {m.head_dim}, vocab {m.vocab_size}, {m.param_dtype} weights, {m.compute_dtype} "
    f"compute; random weights and prompt tokens; greedy, {args.new_tokens} new tokens per row, "
    f"{args.chunk_tokens} decode steps per jitted call; best of {args.repeats} runs",
    "",
    "| attention | batch | prompt | prefill tokens/s | decode tokens/s | ms / decode step |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['attention']} | {r['batch']} | {r['prompt_len']} | error: {r['error'][:60]} | | |"
      )
      continue
    lines.append(
      f"| {r['attention']} | {r['batch']} | {r['prompt_len']} | "
      f"{r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.0f} | "
      f"{r['decode_ms_per_step']:.2f} |"
    )
  if record["parallax_over_softmax"]:
    lines += [
      "",
      "| batch | prompt | Parallax / softmax prefill | decode |",
      "|---:|---:|---:|---:|",
    ]
    for q in record["parallax_over_softmax"]:
      lines.append(
        f"| {q['batch']} | {q['prompt_len']} | {q['prefill']:.2f}x | {q['decode']:.2f}x |"
      )
  result_files.write(stem, record, "\n".join(lines))
  if final:
    print(f"wrote {stem}.json and .md")
  return record


if __name__ == "__main__":
  main()
