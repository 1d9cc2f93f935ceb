"""Running ``parallax-jax`` in the test process: exit code and output, and the one-line error."""

from __future__ import annotations

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
