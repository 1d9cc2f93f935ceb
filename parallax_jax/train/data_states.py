"""Every process's data-iterator state as one JSON checkpoint item.

Each process reads its own share of the documents (``data.pipeline``: ``[process_index::
process_count]``) and packs its own rows, so each holds its own iterator state. Orbax's JSON
item is written by the primary process alone, so a multi-process checkpoint holds
``{BY_PROCESS: [state of process 0, ..., state of process n-1]}``, gathered from all processes
at the save (a collective: every process saves at the same step). A single process saves its
state as it is, the format of every checkpoint before 2026-12-05 (docs/design.md §16).

On resume each process takes its own entry. A checkpoint saved by another number of processes
cannot continue its data stream (the documents are split differently), so that is an error, not
a silent restart.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from parallax_jax.errors import UserError

BY_PROCESS = "data_state_by_process"


class ProcessCountChanged(UserError):
  """The data state was saved by another number of processes than resume it: the user's
  mistake (the job's process count), not damage, so restore raises it instead of passing the
  step over."""


def gather(state: dict) -> dict:
  """This process's iterator ``state`` -> the ``data`` item to save (collective)."""
  count = jax.process_count()
  if count == 1:
    return state
  from jax.experimental import multihost_utils

  raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
  longest = int(np.max(multihost_utils.process_allgather(np.array([raw.size], np.int64))))
  padded = np.zeros(longest, np.uint8)  # JSON text holds no NUL byte: the padding strips off
  padded[: raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(count, longest)
  return {BY_PROCESS: [json.loads(bytes(row).rstrip(b"\0")) for row in rows]}


def own(saved: dict) -> dict:
  """The saved ``data`` item -> this process's iterator state.

  Raises ``ProcessCountChanged`` when the item was saved by another number of processes."""
  states = saved.get(BY_PROCESS) if isinstance(saved, dict) else None
  saved_by = 1 if states is None else len(states)
  count = jax.process_count()
  if saved_by != count:
    raise ProcessCountChanged(
      f"its data state was saved by {saved_by} process(es)"
      + (" (or, before 2026-12-05, by several: then only process 0's was kept)" * (states is None))
      + f" and this run has {count}: each process reads its own share of the documents, so the "
      f"data stream cannot continue; resume with {saved_by} process(es) (reading the params, as "
      "eval and export-hf do, works under any count)"
    )
  return saved if states is None else states[jax.process_index()]
