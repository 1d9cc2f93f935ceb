"""Checkpoint interop against the PyTorch implementations (issue 14; docs/design.md §14.1).

Three parts, each timed and recorded on its own (a failing part records the last line of its
traceback and the run goes on with the next):

1. ``qwen3``: a random-weight ``transformers.Qwen3ForCausalLM`` of ``configs/lm_0p6b.py``'s
   shape (``--layers`` to shrink; norm weights perturbed so a misplaced norm shows), saved with
   ``save_pretrained`` (sharded), imported here as softmax (``import_hf``); the logits of the
   same random tokens compared in float32 (TF32 off, matmul precision "highest", XLA attention
   here) and bfloat16 (both sides; their default attention paths). Without torch the float64
   NumPy Qwen3 oracle (``testing/qwen3_oracle.py``) of a fixture checkpoint stands in.
2. ``fla``: a random Qwen3 of a Qwen3-1.7B-like shape (``head_dim = hidden / heads``, as fla
   requires; ``rms_norm_eps`` 1e-5, fla's fixed q/r/k norm eps, so the function is exact)
   imported as Parallax, then ``r_proj`` and ``r_norm`` replaced by independent random values
   (r unlike q: a swapped q/r would show), exported with ``export_hf(fmt="fla-parallax")``
   and loaded with fla's ``ParallaxForCausalLM.from_pretrained``. Logits compared in float32
   (fla's Triton ``parallel_parallax`` takes bf16/fp16 only: its ``naive_parallax`` reference
   stands in, the refusal is recorded) and bfloat16 (fla's kernels: the training path, and the
   cached-prefill path that ``use_cache=True`` takes). Loading is checked (missing/unexpected
   keys, tied head, RoPE frequencies); a fix-up applied to continue is recorded.
3. ``uptrain``: the part-1 checkpoint (or a fixture) imported as softmax and as Parallax with
   W_R = 0, with ``configs/lm_0p6b.py``'s training settings; the first step's loss of both on
   the same batch (the repo's ``loss_fn`` in the run's bf16 compute and in float32; for the
   Parallax model in bf16 the first ``Program.train_step``'s own loss), then
   ``--train-steps`` steps of the Parallax model on that batch from its step-0 checkpoint
   (default attention paths; the loss must fall and W_R leave zero).

Metric: ``max_norm_rel = max|ours - theirs| / max|theirs|`` over all logits, plus the share of
positions whose argmax agrees.

  PYTHONPATH=/tmp/site:$PWD python3 experiments/hf_interop_check.py --out experiments/results
  python experiments/hf_interop_check.py --smoke --out /tmp/hfcheck     # tiny, CPU, seconds
Writes ``<out>/hf_interop_<date>_<device>.json`` and ``.md`` (never overwriting: a suffix
``_2``, ``_3``, ... is added), rewritten after every part.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

# torch shares the GPU with JAX here: keep JAX's preallocation below all of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from parallax_jax.benchmarking import cli_checks, result_files  # noqa: E402
from parallax_jax.benchmarking.run_info import run_info  # noqa: E402
from parallax_jax.environment import PACKAGES, package_versions  # noqa: E402

LM_CONFIG = REPO / "configs" / "lm_0p6b.py"
# Expected max-norm relative errors (the brief of issue 14): a row above its bound is flagged.
BOUNDS = {"float32": 1e-4, "bfloat16": 5e-2}
# fla's tied head in the {target: source} form of transformers 5's _tied_weights_keys.
FLA_TIED = {"lm_head.weight": "model.embeddings.weight"}
R_NORM_SCALE = 0.1  # part 2's r_norm: t = r.k then has a std of about 0.1 sqrt(head_dim)


class Skipped(Exception):
  """A comparison that cannot run here (its reason is recorded)."""


# Shapes ---------------------------------------------------------------------------------------
def qwen3_shape(args) -> dict:
  """Part 1 and 3's Qwen3 (HF config field names): lm_0p6b's model, or a tiny one."""
  if args.smoke:
    m = dict(vocab_size=384, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16)
    return {**m, "intermediate_size": 128, "num_layers": 2, "rms_norm_eps": 1e-6, "theta": 1e6}
  from parallax_jax.train.config import load_config

  m = load_config(LM_CONFIG).model
  return dict(
    vocab_size=m.vocab_size,
    hidden_size=m.d_model,
    num_heads=m.num_heads,
    num_kv_heads=m.num_kv_heads,
    head_dim=m.head_dim,
    intermediate_size=m.mlp_dim,
    num_layers=args.layers or m.num_layers,
    rms_norm_eps=m.norm_eps,
    theta=m.rope_theta,
  )


def fla_shape(args) -> dict:
  """Part 2's Qwen3-1.7B-like shape: fla needs ``head_dim = hidden_size / num_heads``."""
  from parallax_jax.interop.export_hf import FLA_QK_NORM_EPS

  if args.smoke:
    m = dict(vocab_size=384, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16)
    m.update(intermediate_size=128, num_layers=2)
  else:
    m = dict(vocab_size=151936, hidden_size=2048, num_heads=16, num_kv_heads=8, head_dim=128)
    m.update(intermediate_size=6144, num_layers=args.fla_layers)
  return {**m, "rms_norm_eps": FLA_QK_NORM_EPS, "theta": 1e6}


# Records --------------------------------------------------------------------------------------
def versions() -> dict:
  extra = ("safetensors", "torch", "transformers", "triton", "einops")
  return {"python": platform.python_version(), **package_versions(PACKAGES + extra)}


def output_stem(out_dir: str | Path, date: str, device: str) -> Path:
  """``<out_dir>/hf_interop_<date>_<device>``, with ``_2``, ``_3``, ... if that file exists."""
  tag = re.sub(r"[^a-z0-9]+", "", device.lower().replace("nvidia", "")) or "device"
  return result_files.new_stem(out_dir, f"hf_interop_{date}_{tag}")


def write_result(result: dict, stem: Path) -> None:
  result_files.write(stem, result, to_markdown(result))


def last_line(e: BaseException) -> str:
  """The last line of the exception's traceback (``Type: message``), at most 500 characters."""
  lines = traceback.format_exception_only(type(e), e)
  text = " ".join(line.strip() for line in lines if line.strip())
  return text if len(text) <= 500 else text[:497] + "..."


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
  """``max|ours - theirs| / max|theirs|`` and the share of positions with the same argmax."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    raise ValueError(f"logits shapes differ: ours {ours.shape}, theirs {theirs.shape}")
  scale = float(np.max(np.abs(theirs)))
  diff = float(np.max(np.abs(ours - theirs)))
  agree = float(np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1)))
  return {"max_norm_rel": diff / scale, "max_abs_diff": diff, "max_abs": scale, "top1": agree}


def add_row(part: dict, name: str, dtype: str, fn) -> None:
  """Appends ``{name, dtype, compare(...)}`` from ``fn() -> (ours, theirs)``, or its skip
  reason / error; ``ok`` flags the row against ``BOUNDS[dtype]`` (None: a context row)."""
  row: dict = {"name": name, "dtype": dtype}
  try:
    row.update(compare(*fn()))
    bound = BOUNDS.get(dtype)
    row["ok"] = None if bound is None else row["max_norm_rel"] <= bound
  except Skipped as e:
    row["skipped"] = str(e)
  except Exception as e:  # noqa: BLE001  one failing comparison must not end the part
    row["error"] = last_line(e)
    traceback.print_exc()
  part.setdefault("rows", []).append(row)
  print(f"  {json.dumps(row)}", flush=True)


# This side ------------------------------------------------------------------------------------
def load_imported(workdir: Path, step: int | None = None):
  """``(ModelConfig, params)`` of an imported run (params on one device)."""
  from parallax_jax.train import run_record
  from parallax_jax.train.checkpoint import restore_run_params
  from parallax_jax.train.config import resolve

  exp = resolve(run_record.load_run_config(workdir))
  return exp.model, restore_run_params(workdir, exp, step)[1]


def our_logits(model, params: dict, tokens_BT: np.ndarray, dtype: str) -> np.ndarray:
  """Float32 logits ``[B, T, V]`` of ``model`` computing in ``dtype``: float32 with matmul
  precision "highest" and the XLA attention paths; bfloat16 with the default (best) paths."""
  from flax import nnx

  from parallax_jax.train.step import model_graphdef

  f32 = dtype == "float32"
  cfg = dataclasses.replace(
    model, compute_dtype=dtype, attention_impl="xla" if f32 else None, remat="none"
  )
  graphdef, _ = model_graphdef(cfg)
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  precision = jax.default_matmul_precision("highest") if f32 else contextlib.nullcontext()
  with precision:  # traced inside: the precision is part of the compiled call
    return np.asarray(forward(params, jnp.asarray(tokens_BT, jnp.int32)))


class OurLogits(dict):
  """``ours[dtype]``: ``our_logits`` of the model, computed on first use (a skipped
  comparison costs no compile)."""

  def __init__(self, model, params: dict, tokens_BT: np.ndarray):
    super().__init__()
    self.inputs = (model, params, tokens_BT)

  def __missing__(self, dtype: str) -> np.ndarray:
    model, params, tokens_BT = self.inputs
    self[dtype] = value = our_logits(model, params, tokens_BT, dtype)
    return value


def random_tokens(vocab: int, batch: int, length: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, length), dtype=np.int32)


def lm_base():
  """``configs/lm_0p6b.py``'s config: the training settings of an imported run."""
  from parallax_jax.train.config import load_config

  return load_config(LM_CONFIG)


def write_fixture(directory: Path, shape: dict, seed: int) -> tuple[dict, dict]:
  """A random Qwen3 directory (``testing/hf_fixtures``: NumPy, no torch) of ``shape``;
  returns ``(config, tensors)``."""
  from parallax_jax.testing.hf_fixtures import tiny_qwen3_config, tiny_qwen3_tensors, write_hf_dir

  config = tiny_qwen3_config(
    tied=True,
    vocab_size=shape["vocab_size"],
    hidden_size=shape["hidden_size"],
    num_layers=shape["num_layers"],
    num_heads=shape["num_heads"],
    num_kv_heads=shape["num_kv_heads"],
    head_dim=shape["head_dim"],
    intermediate_size=shape["intermediate_size"],
    rms_norm_eps=shape["rms_norm_eps"],
    rope_theta=shape["theta"],
  )
  tensors = tiny_qwen3_tensors(config, seed)
  # The fixture's embedding has std 1: tied, each position's own token would then dominate its
  # logits (and the max-norm error). HF's initializer_range instead, as in part 1.
  tensors["model.embed_tokens.weight"] *= np.float32(config["initializer_range"])
  write_hf_dir(directory, config, tensors)
  return config, tensors


# Their side -----------------------------------------------------------------------------------
def need_torch():
  """``(torch, device)`` with TF32 off, or ``Skipped`` naming what is missing."""
  try:
    import torch
  except ImportError as e:
    raise Skipped("skipped: torch not installed") from e
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.set_float32_matmul_precision("highest")
  return torch, "cuda" if torch.cuda.is_available() else "cpu"


def need_transformers():
  try:
    import transformers
  except ImportError as e:
    raise Skipped("skipped: transformers not installed") from e
  return transformers


def torch_logits(model, tokens_BT: np.ndarray, device: str, **kwargs) -> np.ndarray:
  import torch

  with torch.no_grad():
    ids = torch.as_tensor(tokens_BT, dtype=torch.long, device=device)
    out = model(input_ids=ids, **kwargs)
  return out.logits.float().cpu().numpy()


def dtype_kwarg(transformers, torch_dtype) -> dict:
  """``from_pretrained``'s dtype argument: ``dtype`` in transformers 5, ``torch_dtype`` before."""
  major = int(transformers.__version__.split(".")[0])
  return {"dtype": torch_dtype} if major >= 5 else {"torch_dtype": torch_dtype}


def save_transformers_qwen3(src: Path, shape: dict, seed: int, part: dict):
  """Builds a random ``Qwen3ForCausalLM`` (fp32, norm weights ``1 + 0.2 N(0, 1)``), saves it
  into ``src`` with a tokenizer; returns ``(model, device)`` (the model stays loaded)."""
  from parallax_jax.testing.hf_fixtures import write_tokenizer

  torch, device = need_torch()
  transformers = need_transformers()
  theta, layers = shape["theta"], shape["num_layers"]
  rope = (
    {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    if int(transformers.__version__.split(".")[0]) >= 5
    else {"rope_theta": theta}
  )
  config = transformers.Qwen3Config(
    vocab_size=shape["vocab_size"],
    hidden_size=shape["hidden_size"],
    intermediate_size=shape["intermediate_size"],
    num_hidden_layers=layers,
    num_attention_heads=shape["num_heads"],
    num_key_value_heads=shape["num_kv_heads"],
    head_dim=shape["head_dim"],
    rms_norm_eps=shape["rms_norm_eps"],
    tie_word_embeddings=True,
    use_sliding_window=False,
    max_window_layers=layers,
    bos_token_id=0,
    eos_token_id=0,
    **rope,
  )
  torch.manual_seed(seed)
  with torch.device(device):
    model = transformers.Qwen3ForCausalLM(config)
  model.eval()
  with torch.no_grad():  # HF initialises norms to ones: perturb them so each one matters
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  model.save_pretrained(src, max_shard_size="1GB")  # sharded at full size, like real Qwen3
  write_tokenizer(src / "tokenizer.json")
  saved = json.loads((src / "config.json").read_text())
  part["source"] = {
    "kind": f"transformers {transformers.__version__} Qwen3ForCausalLM.save_pretrained",
    "device": device,
    "tied_in_torch": tied,
    "files": sorted(p.name for p in src.iterdir()),
    "attn_implementation": getattr(model.config, "_attn_implementation", None),
    "rope": saved.get("rope_parameters", saved.get("rope_theta")),
  }
  return model, device


# Part 1 ---------------------------------------------------------------------------------------
def part_qwen3(args, ctx: dict, part: dict) -> None:
  from parallax_jax.interop.import_hf import import_hf

  shape = qwen3_shape(args)
  part["shape"] = shape
  src = ctx["tmp"] / "qwen3_hf"
  tokens = random_tokens(shape["vocab_size"], args.batch, args.seq, seed=1)
  part["tokens"] = list(tokens.shape)
  try:
    hf_model, device = save_transformers_qwen3(src, shape, args.seed, part)
    reference = None
  except Skipped as e:  # the float64 NumPy oracle of a fixture checkpoint stands in
    from parallax_jax.testing.qwen3_oracle import qwen3_logits

    shutil.rmtree(src, ignore_errors=True)
    config, tensors = write_fixture(src, shape, args.seed)
    part["source"] = {"kind": "testing.hf_fixtures (NumPy)", "transformers": str(e)}
    reference, hf_model = qwen3_logits(tensors, config, tokens), None
  ctx["qwen3_src"] = src
  t0 = time.perf_counter()
  workdir = ctx["tmp"] / "qwen3_softmax"
  import_hf(src, workdir, attention="softmax", base=lm_base())
  part["import_s"] = round(time.perf_counter() - t0, 1)
  ctx["softmax_workdir"] = workdir
  model, params = load_imported(workdir)
  part["imported_model"] = _model_summary(model)
  ours = OurLogits(model, params, tokens)
  if hf_model is None:
    add_row(
      part, "ours vs float64 NumPy Qwen3 oracle", "float32", lambda: (ours["float32"], reference)
    )
    for dt in ("float32", "bfloat16"):
      add_row(part, "ours vs transformers Qwen3", dt, _skip(part["source"]["transformers"]))
    return
  torch, _ = need_torch()
  transformers = need_transformers()
  theirs = {"float32": torch_logits(hf_model, tokens, device, use_cache=False)}
  del hf_model
  _empty_cache(torch)
  add_row(
    part, "ours vs transformers Qwen3", "float32", lambda: (ours["float32"], theirs["float32"])
  )

  def bf16():
    hf = transformers.Qwen3ForCausalLM.from_pretrained(
      src, **dtype_kwarg(transformers, torch.bfloat16)
    ).to(device)
    part["torch_bf16_inv_freq_dtype"] = str(hf.model.rotary_emb.inv_freq.dtype)
    theirs["bfloat16"] = torch_logits(hf.eval(), tokens, device, use_cache=False)
    del hf
    _empty_cache(torch)
    return ours["bfloat16"], theirs["bfloat16"]

  add_row(part, "ours vs transformers Qwen3 (from_pretrained)", "bfloat16", bf16)
  # Context: each side's own bf16 error against its fp32 (the noise floor of the rows above).
  if "bfloat16" in theirs:
    add_row(
      part,
      "context: transformers bf16 vs fp32",
      "context",
      lambda: (theirs["bfloat16"], theirs["float32"]),
    )
  add_row(
    part,
    "context: ours bf16 vs transformers fp32",
    "context",
    lambda: (ours["bfloat16"], theirs["float32"]),
  )


def _skip(reason: str):
  def fn():
    raise Skipped(reason)

  return fn


def _empty_cache(torch) -> None:
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def _model_summary(model) -> dict:
  keys = ("attention", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim")
  keys += ("mlp_dim", "vocab_size", "tie_embeddings", "rope_theta", "norm_eps", "r_init")
  return {k: getattr(model, k) for k in keys}


# Part 2 ---------------------------------------------------------------------------------------
def perturb_r(workdir: Path, seed: int):
  """Saves step 1 of the imported Parallax run with independent random ``r_proj`` (std
  ``d**-0.5``) and ``r_norm`` (``R_NORM_SCALE * (1 + 0.2 N(0, 1))``); returns
  ``(ModelConfig, params)``."""
  from parallax_jax.train import run_record
  from parallax_jax.train.checkpoint import Checkpointer
  from parallax_jax.train.config import resolve
  from parallax_jax.train.optimizer import make_optimizer
  from parallax_jax.train.step import TrainState

  exp = resolve(run_record.load_run_config(workdir))
  _, params = load_imported(workdir, 0)
  rng = np.random.default_rng(seed + 1)
  for block in params["blocks"].values():
    attn = block["attn"]
    d, h, dh = attn["r_proj"]["kernel"].shape
    kernel = rng.standard_normal((d, h, dh), dtype=np.float32) * np.float32(d**-0.5)
    scale = R_NORM_SCALE * (1.0 + 0.2 * rng.standard_normal(dh))
    attn["r_proj"]["kernel"] = jnp.asarray(kernel)
    attn["r_norm"]["scale"] = jnp.asarray(scale, jnp.float32)
  tx, _ = make_optimizer(exp.optimizer, exp.train.steps)
  state = TrainState(jnp.ones((), jnp.int32), params, jax.jit(tx.init)(params))
  ckpt = Checkpointer(workdir / "checkpoints", exp.checkpoint)
  ckpt.save(1, state, None)
  ckpt.close()
  return exp.model, params


def part_fla(args, ctx: dict, part: dict) -> None:
  from parallax_jax.interop.export_hf import export_hf
  from parallax_jax.interop.import_hf import import_hf

  shape = fla_shape(args)
  part["shape"] = shape
  src, workdir, out = (ctx["tmp"] / n for n in ("fla_qwen3", "fla_parallax_run", "fla_export"))
  write_fixture(src, shape, args.seed + 7)
  import_hf(src, workdir, attention="parallax", r_init="like_q", base=lm_base())
  shutil.rmtree(src)
  model, params = perturb_r(workdir, args.seed)
  part["imported_model"] = _model_summary(model)
  tokens = random_tokens(shape["vocab_size"], args.batch, args.seq, seed=2)
  ours = OurLogits(model, params, tokens)
  exported = export_hf(workdir, out, fmt="fla-parallax", step=1, dtype="float32")
  part["notes"] = list(exported.notes)
  part["export"] = {"step": exported.step, "files": [f.name for f in exported.files]}
  shutil.rmtree(workdir)
  try:
    fla_compare(args, part, out, tokens, ours, shape)
  except Skipped as e:
    for name, dt in (("ours vs fla", "float32"), ("ours vs fla", "bfloat16")):
      add_row(part, name, dt, _skip(str(e)))
  finally:
    shutil.rmtree(out, ignore_errors=True)


def import_fla(args):
  """fla's ``ParallaxForCausalLM`` and its ``fla.layers.parallax`` module (from
  ``--fla-path``), or ``Skipped``."""
  need_torch()
  need_transformers()
  path = Path(args.fla_path).absolute()
  if not (path / "fla").is_dir():
    raise Skipped(f"skipped: no fla source folder at --fla-path {str(path)!r}")
  sys.path.insert(0, str(path))
  try:
    import fla.layers.parallax as fla_layer
    from fla.models.parallax import ParallaxForCausalLM
  except ImportError as e:
    raise Skipped(f"skipped: fla does not import: {last_line(e)}") from e
  return ParallaxForCausalLM, fla_layer


def load_fla(cls, out: Path, torch_dtype, device: str, theta: float, checks: list) -> object:
  """``cls.from_pretrained(out)`` on ``device``; records in ``checks`` what loading left
  missing or wrong (keys, the tied head, RoPE frequencies) and fixes the latter two."""
  import torch
  import transformers

  kwargs = dict(output_loading_info=True, **dtype_kwarg(transformers, torch_dtype))
  try:
    model, info = cls.from_pretrained(out, **kwargs)
  except AttributeError as e:
    # transformers 5 reads _tied_weights_keys as {target: source}; fla still lists targets
    # (the transformers 4 form) and the model cannot even be built. Give it the 5 form.
    if not isinstance(getattr(cls, "_tied_weights_keys", None), list):
      raise
    checks.append(
      f"fla's {cls.__name__}._tied_weights_keys = {cls._tied_weights_keys} (the transformers 4 "
      f"form) fails under transformers {transformers.__version__} ({last_line(e)}); set to "
      f"{FLA_TIED} to load"
    )
    cls._tied_weights_keys = dict(FLA_TIED)
    model, info = cls.from_pretrained(out, **kwargs)
  model = model.to(device).eval()
  tag = str(torch_dtype).removeprefix("torch.")
  for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    if info.get(key):
      checks.append(f"{tag}: from_pretrained {key}: {sorted(map(str, info[key]))[:8]}")
  embed, head = model.model.embeddings.weight, model.lm_head.weight
  if model.config.tie_word_embeddings and head.data_ptr() != embed.data_ptr():
    same = bool(torch.equal(head, embed))
    checks.append(f"{tag}: lm_head not tied to the embeddings after loading (equal: {same}); tied")
    model.lm_head.weight = embed
  for i, layer in enumerate(model.model.layers):
    rotary = layer.attn.rotary
    dim = rotary.inv_freq.numel() * 2
    want = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    if not torch.allclose(rotary.inv_freq.double(), want, rtol=1e-6, atol=0):
      checks.append(f"{tag}: layer {i} rotary inv_freq wrong after loading; recomputed")
      rotary.reset_parameters()
  return model


def fla_kernels_run(device: str) -> bool:
  """fla's Triton kernels (norms, RoPE, SwiGLU, attention) need a CUDA device."""
  return device == "cuda"


def fla_compare(args, part: dict, out: Path, tokens, ours: dict, shape: dict) -> None:
  cls, fla_layer = import_fla(args)
  torch, device = need_torch()
  part["fla_version"] = getattr(sys.modules.get("fla"), "__version__", None)
  from fla.ops.parallax import naive_parallax

  checks = part.setdefault("load_checks", [])
  load = lambda torch_dtype: load_fla(cls, out, torch_dtype, device, shape["theta"], checks)
  models = {"float32": load(torch.float32)}  # one loaded at a time (popped when done)
  if not fla_kernels_run(device):
    raise Skipped("skipped: fla's kernels (Triton) need CUDA; loading was checked")
  theirs: dict = {}
  try:  # fla's kernel takes bf16/fp16 only: expected to refuse float32
    torch_logits(models["float32"], tokens, device, use_cache=False)
    part["fla_fp32_with_its_kernel"] = "ran"
  except Exception as e:  # noqa: BLE001
    part["fla_fp32_with_its_kernel"] = last_line(e)

  def naive(q, r, k, v, scale=None, window_size=None, cu_seqlens=None, **kwargs):
    if cu_seqlens is not None:
      raise NotImplementedError("naive_parallax stand-in: cu_seqlens (packed rows) not supported")
    return naive_parallax(q, r, k, v, scale=scale, window_size=window_size)

  def fp32():
    kernel, fla_layer.parallel_parallax = fla_layer.parallel_parallax, naive
    try:
      theirs["float32"] = torch_logits(models["float32"], tokens, device, use_cache=False)
    finally:
      fla_layer.parallel_parallax = kernel
    return ours["float32"], theirs["float32"]

  add_row(part, "ours vs fla (naive_parallax op)", "float32", fp32)
  models.pop("float32")
  _empty_cache(torch)
  models["bfloat16"] = load(torch.bfloat16)

  def bf16(use_cache: bool):
    logits = torch_logits(models["bfloat16"], tokens, device, use_cache=use_cache)
    theirs.setdefault("bfloat16", logits)
    return ours["bfloat16"], logits

  add_row(part, "ours vs fla (parallel_parallax kernel)", "bfloat16", lambda: bf16(False))
  add_row(
    part, "ours vs fla (use_cache=True: cached-prefill kernel)", "bfloat16", lambda: bf16(True)
  )
  models.pop("bfloat16")
  _empty_cache(torch)
  if "float32" in theirs:
    if "bfloat16" in theirs:
      fla_noise = lambda: (theirs["bfloat16"], theirs["float32"])
      add_row(part, "context: fla bf16 vs fla fp32", "context", fla_noise)
    ours_vs = lambda: (ours["bfloat16"], theirs["float32"])
    add_row(part, "context: ours bf16 vs fla fp32", "context", ours_vs)


# Part 3 ---------------------------------------------------------------------------------------
def first_loss(model, params: dict, batch: dict, dtype: str) -> float:
  """The repo's ``loss_fn`` at ``params`` (the first step's training loss), computing in
  ``dtype``: float32 with matmul precision "highest" and XLA attention, else the model's own
  paths."""
  from parallax_jax.train.step import loss_fn, model_graphdef

  f32 = dtype == "float32"
  cfg = dataclasses.replace(
    model, compute_dtype=dtype, **({"attention_impl": "xla"} if f32 else {})
  )
  graphdef, _ = model_graphdef(cfg)
  loss = jax.jit(lambda p, b: loss_fn(p, graphdef, b)[0])
  with jax.default_matmul_precision("highest") if f32 else contextlib.nullcontext():
    return float(loss(params, batch))


def part_uptrain(args, ctx: dict, part: dict) -> None:
  from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
  from parallax_jax.interop.import_hf import import_hf
  from parallax_jax.train import run_record
  from parallax_jax.train.checkpoint import Checkpointer, abstract_like
  from parallax_jax.train.config import apply_overrides, resolve
  from parallax_jax.train.program import Program

  t0 = time.perf_counter()

  def stage(what):  # where the part's time goes (a device call's timeout shows the last one)
    print(f"  [uptrain] {what} ({time.perf_counter() - t0:.0f} s)", flush=True)

  src = ctx.get("qwen3_src")
  if src is None or not (src / "config.json").is_file():  # part 1 did not write one
    src = ctx["tmp"] / "uptrain_qwen3"
    write_fixture(src, qwen3_shape(args), args.seed)
    part["source"] = "testing.hf_fixtures (NumPy)"
  else:
    part["source"] = "part 1's checkpoint"
  stage(f"source: {part['source']}")
  runs = {"softmax": ctx.get("softmax_workdir"), "parallax": None}
  for kind in runs:
    if runs[kind] is None:
      runs[kind] = ctx["tmp"] / f"uptrain_{kind}"
      import_hf(src, runs[kind], attention=kind, r_init="zeros", base=lm_base())
      stage(f"imported as {kind}")
  overrides = [
    f"train.batch_size={args.train_batch}",
    f"train.seq_len={args.train_seq}",
    f"train.steps={args.train_steps}",
    "optimizer.warmup_steps=0",  # lm_0p6b warms up over 2000 steps: a few steps would not move
  ]
  part["overrides"] = overrides
  device = jax.devices()[:1]  # one device (the H200 has one; the test process fakes eight)
  exps = {
    kind: resolve(apply_overrides(run_record.load_run_config(w), overrides), 1)
    for kind, w in runs.items()
  }
  model = exps["parallax"].model
  batch = synthetic_batch(model, args.train_batch, args.train_seq, seed=3)  # one batch for all
  part["batch"] = {"B": args.train_batch, "T": args.train_seq, "tokens": "uniform random"}
  part["model"] = _model_summary(model) | {"compute_dtype": model.compute_dtype}
  part["optimizer"] = dataclasses.asdict(exps["parallax"].optimizer)
  # The first step's loss of both models: loss_fn at the imported params, in the run's
  # compute dtype (as the train step computes it) and in float32.
  # The Parallax model's in the compute dtype is the train step's first loss (below).
  losses: dict = {}
  for kind, workdir in runs.items():
    m, params = load_imported(workdir)
    dtypes = (m.compute_dtype, "float32") if kind == "softmax" else ("float32",)
    losses[kind] = {dt: first_loss(m, params, batch, dt) for dt in dtypes}
    del params
    stage(f"first loss of the {kind} import {losses[kind]}")
  part["first_loss"] = losses
  # Training: Program.train_step from the imported run's step-0 checkpoint (what `train`
  # restores), the same batch every step.
  exp = exps["parallax"]
  program = Program(exp, device)
  ckpt = Checkpointer(runs["parallax"] / "checkpoints", exp.checkpoint, read_only=True)
  state, _ = ckpt.restore(abstract_like(program.abstract_state, program.state_sharding), 0)
  ckpt.close()
  stage("restored the Parallax run's step-0 checkpoint")
  device_batch = program.device_batch(batch)
  train_losses, seconds = [], []
  for _ in range(args.train_steps):
    t0 = time.perf_counter()
    state, metrics = program.train_step(state, device_batch)
    train_losses.append(float(metrics["loss"]))
    seconds.append(round(time.perf_counter() - t0, 3))
  r_kernels = [b["attn"]["r_proj"]["kernel"] for b in state.params["blocks"].values()]
  part["parallax_train"] = {
    "losses": train_losses,
    "step_s": seconds,
    "max_abs_w_r_after": max(float(jnp.max(jnp.abs(k))) for k in r_kernels),
  }
  print(
    f"  parallax train losses {train_losses} (step s {seconds}; the first compiles)", flush=True
  )
  losses["parallax"][model.compute_dtype] = train_losses[0]
  for dt, soft in losses["softmax"].items():
    part[f"first_loss_rel_diff_{dt}"] = abs(losses["parallax"][dt] - soft) / abs(soft)
  part["loss_fell"] = train_losses[-1] < train_losses[0]


# Driver ---------------------------------------------------------------------------------------
PARTS = {"qwen3": part_qwen3, "fla": part_fla, "uptrain": part_uptrain}


def main(argv=None) -> tuple[dict, Path]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=str(REPO / "experiments" / "results"))
  p.add_argument("--smoke", action="store_true", help="tiny shapes: seconds on a CPU")
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {list(PARTS)}")
  p.add_argument("--layers", type=int, default=0, help="part 1/3 layers (0: lm_0p6b's 28)")
  p.add_argument("--fla-layers", type=int, default=4, help="part 2 layers")
  p.add_argument("--fla-path", default=".fla", help="folder holding fla's source (fla/)")
  p.add_argument("--batch", type=int, default=2, help="logits comparison rows")
  p.add_argument("--seq", type=int, default=256, help="logits comparison length")
  p.add_argument("--train-batch", type=int, default=2)
  p.add_argument("--train-seq", type=int, default=512)
  p.add_argument("--train-steps", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tmp", default=None, help="scratch folder (default: a new temporary one)")
  p.add_argument("--keep", action="store_true", help="keep the scratch folder")
  args = p.parse_args(argv)
  # below these, every part would end in an error row of a result file (exit 0)
  names = ("fla_layers", "batch", "seq", "train_batch", "train_seq", "train_steps")
  cli_checks.at_least(p, args, 1, *names)
  cli_checks.at_least(p, args, 0, "layers", "seed")  # --layers 0: lm_0p6b's
  if args.smoke:
    args.seq, args.train_seq = min(args.seq, 32), min(args.train_seq, 64)
  parts = [s for s in args.parts.split(",") if s]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown or not parts:
    p.error(f"--parts: unknown {unknown or repr(args.parts)}; known: {list(PARTS)}")
  info = run_info("experiments.hf_interop_check", argv)
  result = {
    "what": "checkpoint interop: transformers Qwen3 and fla Parallax against this package",
    **info,
    "versions": versions(),
    "config": vars(args) | {"bounds": BOUNDS, "r_norm_scale": R_NORM_SCALE},
    "parts": {},
  }
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = output_stem(out, info["date"][:10], info["device"])
  tmp = Path(args.tmp or tempfile.mkdtemp(prefix="hf_interop_"))
  tmp.mkdir(parents=True, exist_ok=True)
  ctx = {"tmp": tmp}
  print(json.dumps({k: result[k] for k in ("date", "device", "command", "versions")}), flush=True)
  t_all = time.perf_counter()
  try:
    for name in parts:
      print(f"[{name}] start ({time.perf_counter() - t_all:.0f} s)", flush=True)
      part: dict = {}
      result["parts"][name] = part
      t0 = time.perf_counter()
      try:
        PARTS[name](args, ctx, part)
      except Skipped as e:
        part["skipped"] = str(e)
      except Exception as e:  # noqa: BLE001  one failing part must not end the run
        part["error"] = last_line(e)
        traceback.print_exc()
      part["seconds"] = round(time.perf_counter() - t0, 1)
      print(f"[{name}] done in {part['seconds']} s", flush=True)
      write_result(result, stem)
  finally:
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)
  result["seconds"] = round(time.perf_counter() - t_all, 1)
  write_result(result, stem)
  print(f"wrote {stem}.json and {stem}.md ({result['seconds']} s)", flush=True)
  return result, stem


# Markdown -------------------------------------------------------------------------------------
def _num(x, fmt=".2e") -> str:
  return "-" if x is None else format(x, fmt)


def to_markdown(r: dict) -> str:
  v = r["versions"]
  lines = [
    f"# hf_interop_check {r['date']}",
    "",
    f"- device: {r['device']} ({r['backend']})",
    f"- versions: jax {v.get('jax')}, torch {v.get('torch')}, transformers "
    f"{v.get('transformers')}, triton {v.get('triton')}, safetensors {v.get('safetensors')}",
    f"- command: `{r['command']}`",
    "- err: max|ours - theirs| / max|theirs| over all logits; top-1: share of positions with "
    f"the same argmax; ok: err <= {BOUNDS} (context rows: each side's bf16 noise floor)",
    "",
    "| part | comparison | dtype | err | top-1 | ok | note |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, part in r["parts"].items():
    for row in part.get("rows", []):
      note = row.get("skipped") or row.get("error") or ""
      ok = {True: "yes", False: "NO", None: "-"}[row.get("ok")]
      lines.append(
        f"| {name} | {row['name']} | {row['dtype']} | {_num(row.get('max_norm_rel'))} | "
        f"{_num(row.get('top1'), '.4f')} | {ok} | {_md(note)} |"
      )
  lines.append("")
  for name, part in r["parts"].items():
    lines.append(f"## {name} ({part.get('seconds', '-')} s)")
    lines.append("")
    for key in ("skipped", "error"):
      if key in part:
        lines.append(f"- **{key}**: {_md(part[key])}")
    keys = ("shape", "source", "imported_model", "import_s", "export", "notes", "load_checks")
    for key in keys:
      if part.get(key) not in (None, [], {}):
        lines.append(f"- {key}: {_md(json.dumps(part[key], default=str))}")
    for key in ("fla_version", "fla_fp32_with_its_kernel", "torch_bf16_inv_freq_dtype"):
      if key in part:
        lines.append(f"- {key}: {_md(str(part[key]))}")
    if name == "uptrain" and "first_loss" in part:
      for kind, by_dtype in part["first_loss"].items():
        text = ", ".join(f"{dt} {x:.7f}" for dt, x in by_dtype.items())
        lines.append(f"- first-step loss, {kind}: {text}")
      diffs = {k.removeprefix("first_loss_rel_diff_"): v for k, v in part.items()}
      diffs = {k: v for k, v in diffs.items() if k in part["first_loss"]["softmax"]}
      text = ", ".join(f"{dt} {v:.2e}" for dt, v in diffs.items())
      lines.append(f"- |parallax - softmax| / softmax, first-step loss: {text}")
    if name == "uptrain" and "parallax_train" in part:
      t = part["parallax_train"]
      lines.append(
        f"- parallax train steps: losses {', '.join(f'{x:.5f}' for x in t['losses'])}; "
        f"step s {t['step_s']} (the first compiles); loss fell: {part['loss_fell']}; "
        f"max |W_R| after: {t['max_abs_w_r_after']:.3e}"
      )
    for key in ("overrides", "batch", "model"):
      if name == "uptrain" and key in part:
        lines.append(f"- {key}: {_md(json.dumps(part[key]))}")
    lines.append("")
  return "\n".join(lines)


def _md(text: str) -> str:
  return str(text).replace("|", "/").replace("\n", " ")


if __name__ == "__main__":
  main()
