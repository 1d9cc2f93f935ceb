"""The run's record in its workdir, and the check of a new config against it.

``W/config.json`` is written once, by the start that creates the run: its config and what it
ran on (data description, parameter count, devices). It is never rewritten. Every later start
(a resume) appends one line to ``W/config_history.jsonl``: when, the checkpoint step it resumed
from, the keys it changed (``[old, new]``) and its full config. The run's current config is the
last entry's (else config.json's).

Before anything is written, a config for a workdir that holds a run is compared with the
current config: a change to a key that ``config_keys`` marks FIXED (the checkpoint's tree, the
function trained, the data position's meaning) is refused with one ``UserError`` listing
every such key; other changes are allowed and go into the history. Readers (``eval``,
analysis) use ``load_run_config`` and ``check`` and write nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import ml_collections

from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.files import write_text_atomic
from parallax_jax.train import config_keys

log = logging.getLogger("parallax_jax")

CONFIG = "config.json"
HISTORY = "config_history.jsonl"


class ConfigMismatchError(UserError):
  """A config changes keys that a run in the workdir cannot change."""


def _plain(value):
  """JSON-normal form (tuples -> lists, unknown objects -> str), as config.json stores it."""
  return json.loads(json.dumps(value, default=str))


SWEEP = "sweep.json"  # what `parallax-jax sweep` writes at the top of its workdir


def holds_run(workdir: str | Path) -> bool:
  return (Path(workdir) / CONFIG).is_file()


def check_holds_no_other_kind(workdir: str | Path, kind: str) -> None:
  """Refuses a ``kind`` ("run" or "sweep") in a workdir that holds the other kind: a run
  trained into a sweep's directory (or a sweep into a run's) mixes their files."""
  w = Path(workdir)
  if kind == "run" and (w / SWEEP).is_file():
    raise UserError(
      f"--workdir {str(w)!r} holds a sweep ({SWEEP}), not a run: its runs are "
      f"{w / 'points'}/<name>; give one of those, or a new --workdir"
    )
  if kind == "sweep" and holds_run(w):
    raise UserError(
      f"--workdir {str(w)!r} holds a run ({CONFIG}), not a sweep: give a new --workdir"
    )


def read_record(workdir: str | Path) -> dict:
  """``W/config.json`` (of a workdir that ``holds_run``) as ``record_start`` wrote it: a
  ``UserError`` naming the file where it is not (edited or damaged outside parallax-jax)."""
  path = Path(workdir) / CONFIG
  try:
    record = json.loads(path.read_text())
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    problem = f"is not JSON ({type(e).__name__}: {e})"
  else:
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
      return record
    problem = "is not a run record (a JSON object whose 'config' is the run's config)"
  raise UserError(
    f"{str(path)!r} {problem}: the run's record is damaged; restore the file (it is written "
    "once, by the run's first start), or train in a new --workdir"
  )


def read_history(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / HISTORY
  if not path.exists():
    return []
  # A start killed mid-append leaves a cut line (it may end in an inner "}"): skip it, and any
  # line that is not an object (readers look keys up in each entry).
  entries = []
  for line in path.read_text().splitlines():
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(entry, dict):
      entries.append(entry)
  return entries


def environments(workdir: str | Path) -> list[dict | None]:
  """What each start of the run ran on (``parallax_jax.environment.describe``): the first
  start's, then each resume's; None for a start recorded before environments were (2026-12-05).
  Empty where the workdir holds no run. A damaged record gives None for its start: a sweep's
  table reads this for every point, and one damaged point must not cost it the table."""
  if not holds_run(workdir):
    return []
  try:
    first = read_record(workdir).get("environment")
  except UserError:
    first = None
  return [first, *(entry.get("environment") for entry in read_history(workdir))]


def current_config(workdir: str | Path) -> dict:
  """The config of the run's latest start (plain dict); a key added to the code since it was
  recorded holds the value the code then used (``config_keys.ADDED_KEYS``)."""
  config = read_record(workdir)["config"]
  # A history line edited outside parallax-jax may lack a config: the latest one that has one.
  for entry in reversed(read_history(workdir)):
    if isinstance(entry.get("config"), dict):
      config = entry["config"]
      break
  return config_keys.with_added_defaults(config)


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The run's current config; a ``UserError`` if ``workdir`` holds no run."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise UserFileNotFoundError(f"--workdir {str(workdir)!r} does not exist")
  check_holds_no_other_kind(workdir, "run")
  if not holds_run(workdir):
    raise UserFileNotFoundError(
      f"--workdir {str(workdir)!r} holds no run (no {CONFIG}); train one there with "
      "`parallax-jax train --config C --workdir W`"
    )
  return ml_collections.ConfigDict(current_config(workdir))


def changes(old: dict, new: dict) -> dict[str, tuple]:
  """``{key: (old, new)}`` over flattened keys. A key the old config lacks (added to the code
  since) ran at its default, and is compared with that: leaving it out let a resume change a
  fixed key unchecked and unrecorded. (A key whose default may change is in
  ``config_keys.ADDED_KEYS``; ``current_config`` fills in the value the run used.)"""
  from parallax_jax.train.defaults import base_config

  defaults = config_keys.flatten(_plain(base_config().to_dict()))
  old, new = config_keys.flatten(_plain(old)), config_keys.flatten(_plain(new))
  old = {k: old[k] if k in old else defaults.get(k, new[k]) for k in new}
  return {k: (old[k], new[k]) for k in new if old[k] != new[k]}


def check(workdir: str | Path, new: dict, *, reading: bool = False) -> dict[str, tuple]:
  """The keys ``new`` changes against the run in ``workdir`` ({} when it holds none).

  Raises ``ConfigMismatchError`` listing every refused change (``reading``: the message is
  about reading the run with this config rather than resuming it).
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {str(workdir)!r} is a file, not a directory")
  check_holds_no_other_kind(workdir, "run")
  if not holds_run(workdir):
    return {}
  diff = changes(current_config(workdir), new)
  refused = {k: v for k, v in diff.items() if config_keys.refused_on_resume(k, *v)}
  if refused:
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
    if reading:
      fix = "drop these overrides (the run's own config is used without --config)"
    else:
      # (a default changed since the run started shows up here too: the overrides restore it)
      restore = " ".join(f"--config.{k}={old}" for k, (old, _) in refused.items())
      fix = (
        f"resume it without these changes ({restore} restores the run's values), or pass a "
        "new --workdir to start a new run with this config"
      )
    raise ConfigMismatchError(
      f"--workdir {str(workdir)!r} holds a run that cannot take these config changes (they "
      f"change its checkpoint or its data stream; see parallax_jax/train/config_keys.py): "
      f"{listed}; {fix}"
    )
  return diff


def latest_step(workdir: Path) -> int | None:
  steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
  return max(steps, default=None)


def record_start(workdir: str | Path, config: dict, extra: dict) -> None:
  """Creates the workdir and its config.json (atomically) for a new run. Only process 0
  writes."""
  import jax

  if jax.process_index() != 0:
    return
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  record = _plain({"config": config, **extra})
  write_text_atomic(workdir / CONFIG, json.dumps(record, indent=2) + "\n")


def record_resume(
  workdir: str | Path, config: dict, extra: dict, diff: dict, *, resumed_from_step: int
) -> None:
  """Appends a history entry for a resumed start: the step it restored (after any damaged
  newer step was passed over), the config changes ``check`` returned (``diff``), the devices
  and the environment (``parallax_jax.environment.describe``).
  Only process 0 writes."""
  import jax

  if jax.process_index() != 0:
    return
  workdir = Path(workdir)
  entry = {
    "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "resumed_from_step": resumed_from_step,
    "changes": {k: list(v) for k, v in diff.items()},
  }
  stored_data = read_record(workdir).get("data")
  if (
    "data" in extra
    and stored_data is not None
    and not _same_data(_plain(extra["data"]), stored_data)
  ):
    log.warning(
      "the data source differs from the one %s records (now %s); the run continues on it",
      workdir / CONFIG,
      extra["data"],
    )
    entry["data"] = extra["data"]
  entry["devices"] = extra.get("devices")
  entry["environment"] = extra.get("environment")
  entry["config"] = config
  if diff:
    log.info(
      "config changes recorded in %s: %s",
      workdir / HISTORY,
      ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()),
    )
  # After a start killed mid-append (a cut last line), this entry starts a line of its own.
  with open(workdir / HISTORY, "a+b") as f:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(size - 1, 0))
    cut = size > 0 and f.read(1) != b"\n"  # ("a" mode: the write goes to the end regardless)
    f.write(("\n" * cut + json.dumps(_plain(entry)) + "\n").encode())


def _same_data(now: dict, stored) -> bool:
  """Whether two data records (``TrainData.describe``) say the same data. A tokenizer file is
  compared by its bytes where both records hold their sha256: its path is where one start
  read it, which moves with a moved run. A record from before the sha256 was kept is
  compared without it."""
  if not isinstance(stored, dict):
    return False
  if "tokenizer_sha256" not in stored:
    now = {k: v for k, v in now.items() if k != "tokenizer_sha256"}
  elif now.get("tokenizer_sha256"):
    now, stored = ({k: v for k, v in d.items() if k != "tokenizer"} for d in (now, stored))
  return now == stored


def require_checkpoints(workdir: str | Path) -> None:
  """A ``UserError`` unless ``workdir`` has a checkpoints directory (for readers)."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise UserFileNotFoundError(f"--workdir {str(workdir)!r} does not exist")
  if not (workdir / "checkpoints").is_dir():
    raise UserFileNotFoundError(
      f"--workdir {str(workdir)!r} holds no checkpoints (no {workdir / 'checkpoints'}): train "
      f"the run first (`parallax-jax train --workdir {workdir}` with its config)"
    )
