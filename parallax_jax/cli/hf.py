"""``import-hf`` and ``export-hf``: Hugging Face checkpoints in and out."""

from __future__ import annotations

import argparse

from parallax_jax.cli.common import CONFIG_HELP, local_dir, local_path
from parallax_jax.errors import UserError


def _import_hf(args) -> int:
  from parallax_jax.interop.import_hf import import_hf
  from parallax_jax.train.config import load_config

  if args.r_init is not None and args.attention != "parallax":  # it would change nothing
    raise UserError(
      f"--r-init {args.r_init} initialises Parallax's W_R, and --attention {args.attention} has "
      "none; drop --r-init, or pass --attention parallax"
    )
  base = load_config(args.config) if args.config else None
  result = import_hf(
    args.src,
    args.workdir,
    attention=args.attention,
    r_init=args.r_init or "zeros",
    base=base,
    overrides=args.overrides,
    byte_tokenizer=args.byte_tokenizer,
  )
  w = result.workdir
  print(f"imported {args.src} into {w}: {result.model.attention} model, step 0")
  print(
    f"next: `parallax-jax generate --workdir {w} --prompt TEXT`, `parallax-jax train --config "
    f"{result.config_path} --workdir {w}`, or another run with "
    f"--config.checkpoint.init_from={result.params_path}"
  )
  return 0


def _export_hf(args) -> int:
  from parallax_jax.interop.export_hf import export_hf

  result = export_hf(
    args.workdir,
    args.out,
    fmt=args.format,
    step=args.step,
    dtype=args.dtype,
    allow_qk_norm_eps_change=args.allow_qk_norm_eps_change,
  )
  names = ", ".join(f.name for f in result.files)
  print(
    f"wrote {result.out} ({result.fmt}, step {result.step}, tensors in {result.dtype}): {names}"
  )
  for note in result.notes:
    print(f"note: {note}")
  return 0


def add_import_hf(sub, common):
  ih = sub.add_parser(
    "import-hf",
    parents=[common],
    help="Hugging Face Qwen3 checkpoint -> a run workdir (step-0 checkpoint, config, tokenizer)",
    description="Reads config.json, the safetensors (one file or a sharded set with its index) "
    "and tokenizer.json of a Qwen3 directory, tensor by tensor, and writes a new run in "
    "--workdir: a step-0 checkpoint (train / eval / generate run on it), W/params (for "
    "--config.checkpoint.init_from) and W/hf_import_config.py (train --config). The model "
    "section comes from config.json; the other sections from --config (default: the "
    "defaults) and --config.* overrides.",
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ih.add_argument(
    "--from", dest="src", type=local_dir, required=True, help="Hugging Face model directory"
  )
  ih.add_argument("--workdir", type=local_dir, required=True, help="new (or empty) run directory")
  ih.add_argument(
    "--attention",
    choices=("parallax", "softmax"),
    default="parallax",
    help="parallax (default; adds r_proj, r_norm) or softmax (Qwen3 as is)",
  )
  ih.add_argument(
    "--r-init",
    choices=("zeros", "like_q"),
    default=None,
    help="parallax: zeros (default; W_R = 0, exactly the softmax function) or like_q (copies "
    "q_proj and q_norm)",
  )
  ih.add_argument(
    "--byte-tokenizer",
    action="store_true",
    help="the directory has no tokenizer.json and its ids are UTF-8 bytes (export-hf of a "
    "byte-tokenizer run, e.g. configs/tiny.py's, writes none)",
  )
  ih.add_argument(
    "--config", type=local_path, default=None, help="config file for the non-model sections"
  )
  ih.set_defaults(fn=_import_hf, takes_overrides=True)


def add_export_hf(sub, common):
  eh = sub.add_parser(
    "export-hf",
    parents=[common],
    help="a run's params -> a Hugging Face directory (Qwen3, or fla's parallax model type)",
    description="Reads the run's params (read-only; latest readable checkpoint or --step) and "
    "writes config.json, model.safetensors and the run's tokenizer file (none for the byte "
    "tokenizer) into --out, a new or empty directory. qwen3: softmax models (a Parallax model "
    "only when W_R = 0 exactly). fla-parallax: fla's ParallaxForCausalLM (needs num_heads * "
    "head_dim = d_model; its q/r/k norms use eps 1e-5).",
  )
  eh.add_argument(
    "--workdir", type=local_dir, required=True, help="run directory (train or import-hf)"
  )
  eh.add_argument("--out", type=local_dir, required=True, help="new or empty directory to write")
  eh.add_argument(
    "--format", choices=("qwen3", "fla-parallax"), default="qwen3", help="default: qwen3"
  )
  eh.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  eh.add_argument(
    "--dtype",
    choices=("param", "float32", "bfloat16", "float16"),
    default="param",
    help="tensor dtype (default: the run's model.param_dtype)",
  )
  eh.add_argument(
    "--allow-qk-norm-eps-change",
    action="store_true",
    help="fla-parallax: export although fla's q/r/k norm eps (1e-5) differs from model.norm_eps",
  )
  eh.set_defaults(fn=_export_hf)
