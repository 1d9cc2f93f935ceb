"""Orbax checkpoints of the train state plus the data iterator's state.

Saves are atomic (Orbax writes to a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest) and optionally async.
Each checkpoint holds ``state`` (step, params, optimizer state, rng) and ``data`` (the Grain
iterator state as JSON, taken after exactly ``step`` batches were drawn).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from parallax_jax.train.config import CheckpointConfig
from parallax_jax.train.step import TrainState

log = logging.getLogger("parallax_jax")


class Checkpointer:
  """Keep-last-K checkpoints under ``<workdir>/checkpoints``."""

  def __init__(self, directory: str | Path, cfg: CheckpointConfig):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data")
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_state: dict | None) -> None:
    items = {"state": ocp.args.StandardSave(state._asdict())}
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: TrainState, step: int | None = None):
    """``(state, data_state)`` of ``step`` (default: latest), restored with the shardings
    of ``abstract_state`` (a TrainState of ``jax.ShapeDtypeStruct``)."""
    step = self.latest_step() if step is None else step
    args = {"state": ocp.args.StandardRestore(abstract_state._asdict())}
    if "data" in self._items(step):
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return TrainState(**restored["state"]), restored.get("data") if "data" in args else None

  def _items(self, step: int) -> set[str]:
    return {p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(path: str | Path, params: dict) -> None:
  """A params-only checkpoint (``checkpoint.init_from`` reads it)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(Path(path).absolute(), params)


def load_params(path: str | Path, abstract_params: dict) -> dict:
  path = Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint.init_from={str(path)!r} does not exist")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_params)


def abstract_like(tree, shardings=None):
  """``jax.ShapeDtypeStruct`` tree (with shardings) for restoring."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
