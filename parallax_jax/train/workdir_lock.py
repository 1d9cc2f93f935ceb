"""One training process per run: an exclusive ``flock`` on ``<workdir>/.lock`` while it trains.

Two processes training one workdir (a rerun started while an earlier one still runs, e.g. a
sweep point orphaned by a killed sweep) would interleave their metrics and delete each other's
checkpoints under keep-last-K. The second is refused in one line instead. The lock is the
kernel's: it ends with the process however that ends (no stale lock to clean up), and the file
holds the holder's pid and host for the message. Readers (eval, generate, export) take no lock
and write nothing. Within one process the lock is re-entrant (a test may build a ``Trainer``
and then train the same workdir); only process 0 of a multi-process job takes it. On a file
system without ``flock`` (some FUSE mounts of object stores) the run goes on unlocked, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")

LOCK = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: dict[str, list] = {}  # real path of the workdir -> [open lock file, count]


def acquire(workdir: str | Path) -> None:
  """Takes the workdir's lock (the directory must exist); ``UserError`` if another process
  holds it."""
  key = os.path.realpath(workdir)
  if key in _held:
    _held[key][1] += 1
    return
  f = open(os.path.join(key, LOCK), "a+")  # noqa: SIM115 - held open while training
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise UserError(
      f"--workdir {str(workdir)!r} is being trained by {holder} (it holds {LOCK} there); "
      "wait for it to finish or stop it, or pass another --workdir"
    ) from None
  except OSError as e:
    if e.errno not in _UNSUPPORTED:
      raise
    log.warning(
      "--workdir %s: its file system does not support flock (%s); training without the "
      "one-trainer lock: do not start a second trainer of this run",
      workdir,
      os.strerror(e.errno),
    )
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  _held[key] = [f, 1]


def release(workdir: str | Path) -> None:
  """Gives back one ``acquire``; the last one unlocks."""
  key = os.path.realpath(workdir)
  entry = _held.get(key)
  if entry is None:
    return
  entry[1] -= 1
  if entry[1] == 0:
    with contextlib.suppress(OSError):  # closing the file unlocks it anyway
      fcntl.flock(entry[0], fcntl.LOCK_UN)
    entry[0].close()
    del _held[key]
