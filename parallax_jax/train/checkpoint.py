"""Orbax checkpoints of the train state plus the data iterator's state.

Saves are atomic (Orbax writes to a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest) and optionally async.
Each checkpoint holds ``state`` (step, params, optimizer state), ``data`` (the Grain
iterator state as JSON, taken after exactly ``step`` batches were drawn; every process's, by
``data_states.py``) and ``checksums`` (``checksums.py``: one per array and one of the data
state, so bytes changed on disk after the save are caught on restore). To resume training, a
step other than 0 without its ``data`` is unreadable: it would restart the data stream
(``import-hf``'s step 0 has none; readers need none). Checkpoints written before 2026-12-04 have
no ``checksums`` and restore unchecked; a later one that lost its ``checksums`` is unreadable.

Checkpoints written before 2026-12-02 also hold ``state.rng``, a raw key split every step that
no layer ever read; ``restore`` leaves such retired fields (``RETIRED_STATE_FIELDS``) on disk,
so those runs resume exactly. Any other field the current ``TrainState`` lacks still fails the
restore: nothing is dropped that could have mattered.

``restore_latest`` tries the newest step first; an unreadable one (truncated files, missing
metadata, a checksum that differs, no data state) is logged with the reason and, once an older
step has restored, moved aside to ``<workdir>/checkpoints_corrupt/`` (never deleted) so that
new saves and keep-last-K do not meet it again.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from parallax_jax.errors import UserError, UserFileNotFoundError
from parallax_jax.train import checksums, data_states, run_record
from parallax_jax.train.config import CheckpointConfig
from parallax_jax.train.step import TrainState, model_graphdef

log = logging.getLogger("parallax_jax")

# Fields older checkpoints hold that TrainState no longer has, and why dropping them is exact.
RETIRED_STATE_FIELDS = {
  "rng": "a raw PRNG key split every step that no layer read (TrainState lost it 2026-12-02)",
}


class _ReadOnlyNotice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


_READ_ONLY_NOTICE = _ReadOnlyNotice()


class _ItemMetadataProbe(logging.Filter):
  """The item-level metadata read (``_saved_state_fields``) looks for a step-level file Orbax
  writes one folder up: its "does not exist" warning on every resume is noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Metadata file does not exist")


_ITEM_METADATA_PROBE = _ItemMetadataProbe()
_STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step record: its "item_handlers" by name


class Checkpointer:
  """Keep-last-K checkpoints under ``<workdir>/checkpoints``."""

  def __init__(self, directory: str | Path, cfg: CheckpointConfig, *, read_only: bool = False):
    self.directory = Path(directory).absolute()
    self.read_only = read_only
    if read_only:  # reading a run is what we mean: Orbax's warning about it is noise
      logging.getLogger("absl").addFilter(_READ_ONLY_NOTICE)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else cfg.keep,
      save_interval_steps=0 if read_only else 1,
      enable_async_checkpointing=cfg.async_save,
      create=not read_only,
      read_only=read_only,
      # A save killed before its rename leaves <step>.orbax-checkpoint-tmp*: never a step, and
      # the next training start deletes it (a reader never does: a run may be saving now).
      cleanup_tmp_directories=not read_only,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "checksums")
    )
    # Orbax deletes those in a thread its close() does not wait for (only its save does): a
    # process ending first, e.g. on a one-line error, printed that thread's traceback "cannot
    # schedule new futures after interpreter shutdown". Wait here, before any step is read.
    # (Private, in Orbax 0.12.4 to 0.12.8: a later Orbax without it only brings the traceback
    # back, which tests/test_checkpoint.py catches; a no-op without the cleanup.)
    wait_for_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
    if wait_for_cleanup is not None:
      wait_for_cleanup()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_state: dict | None) -> None:
    """Saves ``step`` (async if configured). ``data_state`` None: a state-only checkpoint
    (``import-hf``'s step 0, experiments); training resumes only from step 0 of those."""
    tree = state._asdict()
    # every process's (data_states.py): Orbax writes on one
    data = None if data_state is None else data_states.gather(data_state)
    items = {
      "state": ocp.args.StandardSave(tree),
      "checksums": ocp.args.JsonSave(checksums.record(tree, data)),
    }
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: TrainState, step: int | None = None):
    """``(state, data_state)`` of ``step`` (default: latest), restored with the shardings
    of ``abstract_state`` (a TrainState of ``jax.ShapeDtypeStruct``)."""
    step = self.latest_step() if step is None else step
    target = abstract_state._asdict()
    retired = (self._saved_state_fields(step) or set()) - set(target)
    if retired and retired <= set(RETIRED_STATE_FIELDS):
      log.info("checkpoint step %d: leaving retired fields %s on disk", step, sorted(retired))
      state = ocp.args.PyTreeRestore(  # partial: the retired fields are not read
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      )
    else:  # exact match required: any other extra or missing field fails here
      state = ocp.args.StandardRestore(target)
    items = self._items(step)
    if "data" not in items and step != 0 and not self.read_only:  # a reader needs no stream
      raise MissingDataState(
        f"no data/ (the data iterator's state): resuming from step {step} would restart "
        "the data stream"
      )
    # A reader (eval, export) takes no data state, so it reads under any process count.
    json_items = ("checksums",) if self.read_only else ("data", "checksums")
    args = {"state": state, **self._json_items(items, *json_items)}
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    if "checksums" in args:
      checksums.verify(restored["state"], restored["checksums"], partial=bool(retired))
      if "data" in args:
        checksums.verify_data(restored["data"], restored["checksums"])
    try:
      data = data_states.own(restored["data"]) if "data" in args else None
    except data_states.ProcessCountChanged as e:
      raise data_states.ProcessCountChanged(
        f"checkpoint step {step} in {self.directory}: {e}"
      ) from None
    return TrainState(**restored["state"]), data

  def restore_latest(self, abstract_state: TrainState):
    """``(step, state, data_state)`` of the newest readable step, or None with no steps.

    Unreadable steps newer than it are moved aside (not in read-only mode); if no step is
    readable, nothing is moved and ``CheckpointError`` names the directory and each reason."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    found, failures = self._first_readable(steps, lambda s: self.restore(abstract_state, s))
    if found is None:
      if failures:
        raise CheckpointError(
          f"no readable checkpoint in {self.directory} ({_listed(failures)}). Nothing was moved; "
          "to start over, use a new --workdir (or move the checkpoints directory away)."
        )
      return None
    step, (state, data_state) = found
    for bad, _ in failures:
      self._move_aside(bad)
    if failures:
      self.manager.reload()
      log.warning("resuming from step %d, the newest readable checkpoint", step)
    return step, state, data_state

  def restore_params(self, abstract_params: dict, step: int | None = None) -> tuple[int, dict]:
    """``(step, params)`` of ``step`` (default: the newest readable one) as a partial restore:
    the optimizer and data states stay on disk. ``abstract_params`` is the params pure dict of
    ``jax.ShapeDtypeStruct`` (with the target shardings). Moves nothing: an unreadable newer
    step is logged and skipped. No steps, or no ``step`` among them: a ``UserError``."""
    held = sorted(self.manager.all_steps(), reverse=True)
    if not held:
      raise UserFileNotFoundError(
        f"no checkpoint in {self.directory}: train the run first (`parallax-jax train`)"
      )
    if step is not None and step not in held:
      raise UserError(
        f"--step {step}: {self.directory} holds no checkpoint of that step; it holds steps "
        f"{sorted(held)} (omit --step for the latest)"
      )
    steps = [step] if step is not None else held
    item = {"params": abstract_params}

    def read(s):
      restore = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
      )
      args = {"state": restore, **self._json_items(self._items(s), "checksums")}
      restored = self.manager.restore(s, args=ocp.args.Composite(**args))
      if "checksums" in args:
        checksums.verify(restored["state"], restored["checksums"], partial=True)
      return restored["state"]["params"]

    # A given step's failure is the error itself; only a fallback needs the log line.
    found, failures = self._first_readable(steps, read, log_failures=step is None)
    if found is None and step is not None:  # other steps may read: not "no readable checkpoint"
      raise CheckpointError(
        f"checkpoint step {step} in {self.directory} is unreadable ({failures[0][1]}); nothing "
        "was changed: give another --step, or none for the newest readable step"
      )
    if found is None:
      raise CheckpointError(
        f"no readable checkpoint in {self.directory} ({_listed(failures) or 'no steps'}); "
        "nothing was changed"
      )
    if failures:
      log.warning("reading the params of step %d, the newest readable checkpoint", found[0])
    return found

  def _first_readable(self, steps, read, *, log_failures: bool = True):
    """``((step, read(step)) or None, [(step, reason) of the unreadable ones before it])``
    over ``steps`` in order; each unreadable step is logged with its reason."""
    failures: list[tuple[int, str]] = []
    for step in steps:
      try:
        with _abandoned_reads_quiet():
          return (step, read(step)), failures
      except data_states.ProcessCountChanged:  # a readable step of another job shape
        raise
      except Exception as e:  # Orbax/TensorStore raise many kinds for damaged files
        reason = _one_line(e)
        if log_failures:
          log.error("checkpoint step %d in %s is unreadable: %s", step, self.directory, reason)
        failures.append((step, reason))
    return None, failures

  def _move_aside(self, step: int) -> None:
    if self.read_only:
      return
    target = self.directory.parent / f"{self.directory.name}_corrupt"
    target = target / f"{step}.{time.strftime('%Y%m%dT%H%M%S')}"
    if jax.process_index() == 0:  # one process moves; the others wait for it
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
      log.warning("moved unreadable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"parallax_jax_move_aside_{step}")

  def reached_preemption(self, step: int) -> bool:
    """Have all processes reached the step at which to save for a preemption (multi-process,
    JAX's preemption service; see ``preemption.py``)?"""
    return self.manager.reached_preemption(step)

  def _saved_state_fields(self, step: int) -> set[str] | None:
    """The top-level fields of the saved ``state`` item; None where its metadata is unreadable
    (the restore then reports the damage)."""
    absl = logging.getLogger("absl")
    absl.addFilter(_ITEM_METADATA_PROBE)
    try:
      with ocp.PyTreeCheckpointer() as reader:
        meta = reader.metadata(self.directory / str(step) / "state")
      tree = getattr(meta, "item_metadata", meta)  # StepMetadata (newer Orbax) or the tree
      return set(getattr(tree, "tree", tree).keys())
    except Exception:  # noqa: BLE001 - damaged or foreign metadata: StandardRestore says why
      return None
    finally:
      absl.removeFilter(_ITEM_METADATA_PROBE)

  def _items(self, step: int) -> set[str]:
    """The items ``step`` holds. One that lost the ``checksums`` its save wrote (Orbax's step
    metadata names the items saved) is damaged, not an older step to restore unchecked; so is
    one without them after a step that has them (code that wrote checksums wrote this step too:
    that catches it where the metadata is lost as well)."""
    items = {p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()}
    if "checksums" not in items and "checksums" in self._saved_items(step):
      raise checksums.ChecksumMismatch(
        "checksums/ is missing, though the step was saved with it: its arrays cannot be checked"
      )
    if "checksums" not in items and (older := self._older_step_with_checksums(step)) is not None:
      raise checksums.ChecksumMismatch(
        f"checksums/ is missing, though the older step {older} has it: its arrays cannot be checked"
      )
    return items

  def _older_step_with_checksums(self, step: int) -> int | None:
    """The newest step before ``step`` that holds ``checksums/``, or None."""
    older = [s for s in self.manager.all_steps() if s < step]
    return next((s for s in sorted(older, reverse=True) if self._has_checksums(s)), None)

  def _has_checksums(self, step: int) -> bool:
    return (self.directory / str(step) / "checksums").is_dir()

  def _saved_items(self, step: int) -> set[str]:
    """The item names Orbax recorded when it saved ``step``; empty where that is unreadable."""
    try:
      meta = json.loads((self.directory / str(step) / _STEP_METADATA).read_text())
      return set(meta.get("item_handlers") or ())
    except (OSError, ValueError, AttributeError, TypeError):  # no file, not JSON, another shape
      return set()

  @staticmethod
  def _json_items(items: set[str], *names: str) -> dict:
    """Restore args of the JSON items among ``names`` that the step holds."""
    return {name: ocp.args.JsonRestore() for name in names if name in items}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


@contextlib.contextmanager
def _abandoned_reads_quiet():
  """A failed restore leaves Orbax's other array reads to fail later, each printing its error
  and TensorStore spec (hundreds of lines for one bad file) through ``sys.unraisablehook``, the
  ``asyncio`` logger or a never-awaited warning. The first error is the one reported; these
  go to the debug log. Reads still in flight in TensorStore's threads finish later, on the
  restore's closed event loop ("Event loop is closed" each): those go there too."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: log.debug("after a failed restore: %r", u.exc_value)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    asyncio_log = logging.getLogger("asyncio")
    disabled, asyncio_log.disabled = asyncio_log.disabled, True
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      gc.collect()  # abandoned reads report now, while the hooks are ours
    asyncio_log.disabled = disabled
    late = failed and not isinstance(previous, _LateAbandonedReads)
    sys.unraisablehook = _LateAbandonedReads(previous) if late else previous


class _LateAbandonedReads:
  """``sys.unraisablehook`` after a failed restore: its reads that finish later, on the closed
  event loop, go to the debug log (they printed a traceback each after the one-line error);
  everything else goes to the hook it replaced."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      log.debug("a read of a failed restore finished late: %r", e)
    else:
      self.previous(unraisable)


def check_step(step) -> None:
  """A ``UserError`` unless ``step`` (a reader's ``--step``) is None (the latest) or an int >= 0,
  checked before anything is read or written."""
  if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
    raise UserError(f"--step must be an int >= 0 (a saved checkpoint's step), got {step!r}")


class MissingDataState(ValueError):
  """A checkpoint after step 0 without the data iterator's state (its step is unreadable)."""


class CheckpointError(UserError):
  """No checkpoint of a run could be read (the CLI prints it as one line)."""


def _listed(failures: list[tuple[int, str]]) -> str:
  return "; ".join(f"step {s}: {r}" for s, r in failures)


def _one_line(e: Exception, limit: int = 300) -> str:
  first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
  text = f"{type(e).__name__}: {first}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def restore_run_params(workdir: Path, exp, step: int | None) -> tuple[int, dict]:
  """``(step, params)`` of the run in ``workdir`` (its resolved ``Experiment``): the params pure
  dict on one device, from ``step`` or the newest readable checkpoint; nothing moved on disk."""
  _, abstract = model_graphdef(exp.model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nnx.to_pure_dict(abstract)
  )
  return restore_params(Path(workdir) / "checkpoints", exp.checkpoint, abstract, step)


def restore_params(directory: Path, cfg, abstract: dict, step: int | None):
  """``(step, params)``: the given step, else the newest one that restores (nothing moved)."""
  with Checkpointer(directory, cfg, read_only=True) as ckpt:
    return ckpt.restore_params(abstract, step)


def save_params(path: str | Path, params: dict) -> None:
  """A params-only checkpoint (``checkpoint.init_from`` reads it)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(Path(path).absolute(), params)


def check_init_from(path: str | Path, abstract_params: dict) -> None:
  """Refuses, naming ``checkpoint.init_from``, a path that is not a params-only checkpoint
  holding exactly the arrays of ``abstract_params`` with their shapes (reads its metadata
  only: checked before a run's workdir is written)."""
  path, key = Path(path).absolute(), "checkpoint.init_from"
  if not path.exists():
    raise UserFileNotFoundError(f"{key}={str(path)!r} does not exist")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      saved = ckptr.metadata(path).item_metadata.tree
  except Exception as e:  # a run's workdir, a checkpoint step, any other directory
    raise UserError(
      f"{key}={str(path)!r} is not a params-only checkpoint ({_one_line(e, 150)}): give the "
      "directory written by `convert-softmax --out`, `import-hf` (<workdir>/params) or "
      "`checkpoint.save_params`"
    ) from None
  want, got = _shapes(abstract_params), _shapes(saved)
  if want != got:
    both = sorted(want.keys() & got.keys())
    wrong = [f"{k} {got[k]} (model: {want[k]})" for k in both if want[k] != got[k]]
    parts = [
      ("missing", sorted(want.keys() - got.keys())),
      ("not in the model", sorted(got.keys() - want.keys())),
      ("other shapes", wrong),
    ]
    listed = "; ".join(f"{name}: {', '.join(ks[:4])}" for name, ks in parts if ks)
    raise UserError(
      f"{key}={str(path)!r} does not hold this model's params ({listed}): give params of the "
      "same model config"
    )


def check_init_from_at_start(
  init_from: str | None, workdir: str | Path | None, abstract_params: dict
) -> None:
  """``check_init_from`` where ``train`` reads ``checkpoint.init_from``: only when it starts a
  new run (a workdir that holds one resumes from its own checkpoints; None: no workdir yet).
  ``train`` and ``train --dry-run`` ask here before anything is written."""
  if init_from and (workdir is None or not run_record.holds_run(workdir)):
    check_init_from(init_from, abstract_params)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{"blocks/0/attn/q_proj/kernel": shape}``: list indices and the saved metadata's string
  keys for them ("0") name the same array."""

  def name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

  return {name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(path: str | Path, abstract_params: dict) -> dict:
  check_init_from(path, abstract_params)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(Path(path).absolute(), abstract_params)


def abstract_like(tree, shardings=None):
  """``jax.ShapeDtypeStruct`` tree (with shardings) for restoring."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
