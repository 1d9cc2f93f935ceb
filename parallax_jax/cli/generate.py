"""``generate``: continue prompts with a run's checkpoint (read-only)."""

from __future__ import annotations

import sys

from parallax_jax.cli.common import local_dir, local_path
from parallax_jax.errors import UserError


def _generate(args) -> int:
  from parallax_jax.inference.generate import check_seed
  from parallax_jax.inference.loading import load_run
  from parallax_jax.inference.sampling import SamplingConfig
  from parallax_jax.inference.text import generate_text, read_prompts

  # Everything checkable without the run first: a typo costs no checkpoint read.
  if args.max_new_tokens < 1:
    raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if args.chunk_tokens < 1:
    raise UserError(f"--chunk-tokens must be >= 1, got {args.chunk_tokens}")
  sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
  if sampling.greedy and (args.top_k is not None or args.top_p is not None):
    raise UserError(
      "--top-k/--top-p filter what is sampled, and --temperature 0 (the default) is greedy: "
      "they would change nothing; pass --temperature > 0 (e.g. 0.8) to sample"
    )
  if sampling.greedy and args.seed is not None:
    raise UserError(
      "--seed picks the samples, and --temperature 0 (the default) is greedy: it would change "
      "nothing; pass --temperature > 0 (e.g. 0.8) to sample, or drop --seed"
    )
  if args.seed is not None:
    check_seed(args.seed)
  texts = read_prompts(args.prompt, args.prompts_file)
  run = load_run(args.workdir, args.step, args.overrides)
  result = generate_text(
    run,
    texts,
    max_new_tokens=args.max_new_tokens,
    sampling=sampling,
    seed=0 if args.seed is None else args.seed,
    chunk_tokens=args.chunk_tokens,
    out=sys.stdout,
  )
  print(result.timing_line(), file=sys.stderr)
  return 0


def add_generate(sub, common):
  ge = sub.add_parser(
    "generate",
    parents=[common],
    help="continue prompts with a run's latest checkpoint (KV cache; writes nothing there)",
    description="Loads the run's config, tokenizer and checkpoint params (read-only) and "
    "continues each prompt. One prompt streams as it decodes; several print when done. Then "
    "one line on stderr: prefill and decode tokens/s (compilation excluded). Safe --config.* "
    "overrides apply to this read only, e.g. --config.model.attention_impl=None to let a run "
    "trained with an explicit GPU kernel generate on another backend.",
  )
  ge.add_argument(
    "--workdir", type=local_dir, required=True, help="run directory (parallax-jax train)"
  )
  ge.add_argument("--prompt", action="append", default=[], help="prompt text (repeat for a batch)")
  ge.add_argument(
    "--prompts-file", type=local_path, default=None, help="one prompt per non-empty line"
  )
  ge.add_argument("--max-new-tokens", type=int, default=200, help="per prompt (default 200)")
  ge.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
  ge.add_argument("--top-k", type=int, default=None, help="sample from the k most likely")
  ge.add_argument(
    "--top-p", type=float, default=None, help="nucleus: smallest set with probability >= p"
  )
  ge.add_argument(
    "--seed",
    type=int,
    default=None,
    help="sampling seed (default 0; with --temperature > 0): prompt b samples from stream b of "
    "it, so a prompt's text does not depend on the other prompts, and a repeated one draws anew",
  )
  ge.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ge.add_argument(
    "--chunk-tokens", type=int, default=16, help="decode steps per jitted call (default 16)"
  )
  ge.set_defaults(fn=_generate, takes_overrides=True)
