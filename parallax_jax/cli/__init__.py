"""``parallax-jax``: train, eval, generate, config, plot, sweep, import-hf, export-hf, demo, ...

Errors in what the user gave (``parallax_jax.errors.UserError``: config, data, paths, workdir)
print one line ``parallax-jax: error: ...`` and exit 2; ``--debug`` (or PARALLAX_JAX_DEBUG=1)
shows their traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from parallax_jax.cli import compare, demo, generate, hf, sweep, training
from parallax_jax.cli.common import CONFIG_HELP, split_overrides
from parallax_jax.errors import UserError

# The subcommands, in --help order: each adds its parser to ``sub`` (with ``parents=[common]``
# for --debug) and sets ``fn`` (and ``takes_overrides=True`` if it reads --config.* overrides).
COMMANDS = [
  training.add_train,
  training.add_eval,
  generate.add_generate,
  training.add_config,
  training.add_plot,
  sweep.add_sweep,
  training.add_convert,
  hf.add_import_hf,
  hf.add_export_hf,
  compare.add_compare,
  demo.add_demo,
]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="parallax-jax",
    description=__doc__,
    epilog=CONFIG_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  debug_help = "show the traceback of user errors too (also: PARALLAX_JAX_DEBUG=1)"
  parser.add_argument("--debug", action="store_true", help=debug_help)
  common = argparse.ArgumentParser(add_help=False)  # --debug after the subcommand too
  common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
  sub = parser.add_subparsers(dest="command", required=True)
  for add in COMMANDS:
    add(sub, common)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides, argv = split_overrides(argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  args.overrides = overrides
  if overrides and not getattr(args, "takes_overrides", False):
    parser.error(f"--config.* overrides do not apply to {args.command}, got {overrides}")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "absl"):  # backend probing and Orbax's per-save chatter
    logging.getLogger(noisy).setLevel(logging.WARNING)
  debug = args.debug or os.environ.get("PARALLAX_JAX_DEBUG", "") not in ("", "0")
  try:
    return args.fn(args)
  except UserError as e:
    if debug:
      raise
    print(f"parallax-jax: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
    return 2
