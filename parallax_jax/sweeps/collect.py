"""Brings finished points of a sweep from other workdirs into one results folder.

A study that runs one point per device call ends up with many small workdirs (each call's
returned files, each holding ``points/<name>/``). ``collect_points`` copies each point's run
record (``RECORD_FILES``: enough for the sweep's table and curves, no checkpoints) into the
results folder, after checking that it is a finished point of *this* sweep, trained with the
config the sweep gives it now (the fingerprint ``runner.is_finished`` compares) and, where the
sweep pins its corpus (``data.source_sha256``), that it read that corpus. It trains
nothing, never writes to a source, and never replaces a point the folder already holds with
different files: such a point is refused with the reason, and the others go on.

CLI: ``parallax-jax sweep --config C --workdir W --collect SRC [SRC ...]`` (then W's tables
and plots are rebuilt from every point W holds).
"""

from __future__ import annotations

import contextlib
import filecmp
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from parallax_jax.errors import UserError
from parallax_jax.sweeps.config import Sweep
from parallax_jax.sweeps.report import corpus_mismatch
from parallax_jax.sweeps.runner import is_finished, point_dir, read_status

RECORD_FILES = ("status.json", "config.json", "metrics.jsonl")
STAGING = ".collecting"  # under the results folder, beside points/: where a point is assembled


def _why_not(source: Path, known: dict, name: str) -> str | None:
  """Why ``source/points/<name>`` cannot be collected into this sweep, or None."""
  point = known.get(name)
  if point is None:
    return "not a point of this sweep"
  try:
    status = read_status(source, point)
  except UserError as e:
    return str(e)
  if status is None:
    return "no status.json"
  if not is_finished(status, point):
    if status.get("fingerprint") not in (None, point.fingerprint()):
      return (
        f"trained with a different config (fingerprint {status.get('fingerprint')} != "
        f"{point.fingerprint()})"
      )
    return f"not finished (status {status.get('status')!r}, step {status.get('final_step')})"
  missing = [f for f in RECORD_FILES if not (source / "points" / name / f).is_file()]
  if missing:
    return f"missing {', '.join(missing)}"
  return corpus_mismatch(source / "points" / name, point)


def collect_points(
  sweep: Sweep,
  workdir: str | Path,
  sources: Iterable[str | Path],
  only: Iterable[str] | None = None,
  log: Callable[[str], None] = print,
) -> tuple[list[str], list[str]]:
  """Copies the finished points of ``sweep`` found in each source's ``points/`` into
  ``workdir/points/``; ``only``: just these point names (``--points``), the sweep's others
  are skipped. Returns ``(collected names, refused "<source point>: <why>")``; a point
  ``workdir`` already holds with the same files is skipped (neither)."""
  workdir = Path(workdir)
  known = {p.name: p for p in sweep.points}
  only = None if only is None else set(only)
  collected, refused = [], []
  sources = [Path(s) for s in sources]
  for source in sources:  # every source before anything is copied: a refusal writes nothing
    if not (source / "points").is_dir():
      raise UserError(
        f"--collect {source}: no points/ folder there; pass a sweep workdir (the folder "
        "that holds points/<name>/)"
      )
  for source in sources:
    for src in sorted(d for d in (source / "points").iterdir() if d.is_dir()):
      if only is not None and src.name in known and src.name not in only:
        log(f"[collect] {src.name}: not among --points, skipped")
        continue
      why = _why_not(source, known, src.name)
      if why is not None:
        refused.append(f"{src}: {why}")
        continue
      dest = point_dir(workdir, known[src.name])
      if dest.exists():
        same = all(
          (dest / f).is_file() and filecmp.cmp(src / f, dest / f, shallow=False)
          for f in RECORD_FILES
        )
        if not same:
          refused.append(f"{src}: {dest} already holds another run; delete it to replace it")
        else:
          log(f"[collect] {src.name}: already here, skipped")
        continue
      # Whole or not at all, assembled outside points/: an interrupted collect leaves nothing
      # there for the readers (report, recall, pairs) to take for a point.
      tmp = workdir / STAGING / dest.name
      shutil.rmtree(tmp, ignore_errors=True)
      tmp.mkdir(parents=True)
      for f in RECORD_FILES:
        shutil.copy2(src / f, tmp / f)
      dest.parent.mkdir(parents=True, exist_ok=True)
      tmp.replace(dest)
      collected.append(src.name)
      log(f"[collect] {src.name}: collected from {source}")
  with contextlib.suppress(OSError):  # gone once empty; a cut collect's leftovers stay
    (workdir / STAGING).rmdir()
  return collected, refused


__all__ = ["RECORD_FILES", "collect_points"]
