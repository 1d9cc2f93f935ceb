"""Running ``parallax-jax`` (and the experiment scripts) in the test process: exit code and
output, and the one-line error."""

from __future__ import annotations

import pytest

from parallax_jax import cli


def run_cli(capsys, *argv):
  """``(exit code, stdout, stderr)`` of ``parallax-jax argv`` in this process."""
  try:
    code = cli.main(list(argv))
  except SystemExit as e:  # argparse
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def one_line_error(err: str) -> str:
  """The single ``parallax-jax: error: ...`` line of ``err`` (log lines aside), no traceback."""
  lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
  assert len(lines) == 1 and lines[0].startswith("parallax-jax: error: "), err
  assert "Traceback" not in err
  return lines[0]


def script_error(capsys, main, argv) -> str:
  """The last stderr line of an experiment script's ``main(argv)`` refusing its arguments with
  argparse's ``p.error`` (``<prog>: error: ...``, exit 2, no traceback)."""
  with pytest.raises(SystemExit) as exit_:
    main(argv)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err, err
  return err.strip().splitlines()[-1]
