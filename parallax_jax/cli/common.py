"""What the subcommands share: the ``--config.*`` overrides' help and parsing, and loading a
config file with ``jax.distributed`` started."""

from __future__ import annotations

CONFIG_HELP = """\
config keys: --config.SECTION.KEY=VALUE (or --config.SECTION.KEY VALUE) overrides a key of the
config file, typed like its current value (None, true/false, numbers, Python literals).
  parallax-jax config --config C [overrides]     every key: value, resume rule, meaning; validates
  parallax-jax train --dry-run --config C ...    + parameters, FLOPs/token, mesh, memory/device
The table of keys is parallax_jax/train/config_keys.py.
"""


def local_path(text: str) -> str:
  """argparse ``type`` of every path argument (``--workdir``, ``--out``, ``--config``, ``--from``,
  ...): a path of this machine's file system.
  Runs, their locks, logs and plots are written with ordinary file calls, so a URL
  (``gs://bucket/run``) would become a local directory named ``gs:`` instead. An empty path
  (the current directory, silently; or, for an optional --config, no file) and one under an
  existing file (no directory can be made there) are refused too. A directory argument takes
  ``local_dir``."""
  import argparse
  import re
  from pathlib import Path

  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
    raise argparse.ArgumentTypeError(
      f"{text!r} is a URL; give a path of this machine's file system (for several hosts, one "
      "every host mounts, e.g. NFS / Filestore, or a bucket through gcsfuse)"
    )
  if not text.strip():
    raise argparse.ArgumentTypeError(
      f"{text!r} is an empty path; name one ('.' for the current directory)"
    )
  for parent in Path(text).parents:
    if parent.exists() and not parent.is_dir():
      raise argparse.ArgumentTypeError(
        f"{text!r} lies under {str(parent)!r}, which is a file, not a directory; give a path "
        "outside it"
      )
  return text


def local_dir(text: str) -> str:
  """argparse ``type`` of a directory argument (``--workdir``, a directory ``--out``):
  ``local_path``, and not an existing file."""
  import argparse
  import os

  text = local_path(text)
  if os.path.exists(text) and not os.path.isdir(text):
    raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory; give a directory")
  return text


def split_overrides(argv):
  """``--config.a.b=value`` / ``--config.a.b value`` arguments (for the config loader), and the
  rest. A space-form value is the next argument unless that starts with ``--``."""
  overrides, rest, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        arg, i = f"{arg}={argv[i + 1]}", i + 1
      overrides.append(arg)
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def load_and_initialize(path, overrides):
  """Loads the config, then starts jax.distributed (before any backend is touched)."""
  from parallax_jax.train.config import load_config

  cfg = load_config(path, overrides)
  initialize(cfg)
  return cfg


def initialize(cfg):
  """Starts jax.distributed as ``cfg.distributed`` and the environment say (before any backend
  is touched): every process of a multi-process job runs the same command."""
  from parallax_jax import distributed
  from parallax_jax.train import config_keys
  from parallax_jax.train.config import distributed_config

  if distributed.initialize(distributed_config(cfg)):
    distributed.check_same_config(config_keys.flatten(cfg.to_dict()))
