"""Errors in what the user gave (config, data, paths, workdir): the CLI prints them as one line.

``parallax-jax`` prints a ``UserError`` as ``parallax-jax: error: <message>`` and exits 2 (the
traceback only with ``--debug`` or ``PARALLAX_JAX_DEBUG=1``); any other exception is a bug and
keeps its traceback. Raise one where input is validated, with a message that names the
argument and the fix. They subclass the built-in types callers already catch.
"""

from __future__ import annotations


class UserError(ValueError):
  """A mistake in the input that the message explains how to fix."""


class UserFileNotFoundError(UserError, FileNotFoundError):
  """A path the user named does not exist."""


class UserPermissionError(UserError, PermissionError):
  """A path the user named cannot be read."""
