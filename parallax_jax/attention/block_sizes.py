"""``BlockSizes``: the one block-size shape every path takes (docs/design.md §6.2).

A call has three passes, each with its own tile: the forward (query rows x keys per tile), the
dq/dr pass (loops over key blocks per query block) and the dk/dv pass (loops over query blocks
per key block). ``Tile`` holds one pass's ``block_q x block_k`` and, for the Triton GPU kernels
only, their launch parameters. Each path validates what it can run (``check_for``) and raises
``NotImplementedError`` naming the field otherwise:

* "xla": any positive blocks; its backward is one loop over (query block, key block) tiles,
  so ``dkv`` must equal ``dq``; no launch parameters.
* "pallas_gpu": powers of two >= 16 (Triton tiles); ``num_warps`` a power of two in [1, 16],
  ``num_stages`` in [1, 8], both required.
* "pallas_tpu": multiples of 128 (the TPU lane width); no launch parameters.

Blocks are upper bounds: each path clips them to the sequence lengths of the call.
"""

from __future__ import annotations

import dataclasses

PASSES = ("fwd", "dq", "dkv")


@dataclasses.dataclass(frozen=True)
class Tile:
  """One pass's tile: ``block_q`` query rows by ``block_k`` keys (+ GPU launch parameters)."""

  block_q: int
  block_k: int
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if value is None and f.name.startswith("num_"):
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Tile.{f.name} must be a positive int, got {value!r}.")

  def clipped(self, block_q: int, block_k: int) -> Tile:
    """This tile with its blocks capped at ``block_q``/``block_k`` (e.g. short sequences)."""
    return dataclasses.replace(
      self, block_q=min(self.block_q, block_q), block_k=min(self.block_k, block_k)
    )


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """The tiles of the forward, the dq/dr pass and the dk/dv pass."""

  fwd: Tile
  dq: Tile
  dkv: Tile

  def __post_init__(self):
    for name in PASSES:
      if not isinstance(getattr(self, name), Tile):
        raise TypeError(f"BlockSizes.{name} must be a Tile, got {getattr(self, name)!r}.")

  @classmethod
  def uniform(cls, block_q: int, block_k: int | None = None, **launch) -> BlockSizes:
    """The same ``block_q x block_k`` tile (``block_k`` defaults to ``block_q``) everywhere."""
    tile = Tile(block_q, block_q if block_k is None else block_k, **launch)
    return cls(tile, tile, tile)

  def tiles(self):
    """``(name, Tile)`` of the three passes."""
    return tuple((name, getattr(self, name)) for name in PASSES)


def check_for(
  path: str,
  block_sizes,
  *,
  multiple_of: int = 1,
  power_of_two_min: int = 0,
  launch: bool = False,
  fused_backward: bool = False,
) -> None:
  """Raises ``NotImplementedError`` when ``block_sizes`` is not a ``BlockSizes`` that ``path``
  can run (see the module docstring for each path's rules)."""
  where = f"implementation={path!r}"
  if not isinstance(block_sizes, BlockSizes):
    raise NotImplementedError(
      f"{where} takes block_sizes=BlockSizes(...) (parallax_jax.BlockSizes), got "
      f"{type(block_sizes).__name__}."
    )
  for name, tile in block_sizes.tiles():
    for field in ("block_q", "block_k"):
      value = getattr(tile, field)
      if value % multiple_of:
        raise NotImplementedError(
          f"{where}: block_sizes.{name}.{field}={value} must be a multiple of {multiple_of}."
        )
      if power_of_two_min and (value < power_of_two_min or value & (value - 1)):
        raise NotImplementedError(
          f"{where}: block_sizes.{name}.{field}={value} must be a power of two >= "
          f"{power_of_two_min}."
        )
    if launch:
      if tile.num_warps is None or tile.num_warps > 16 or tile.num_warps & (tile.num_warps - 1):
        raise NotImplementedError(
          f"{where}: block_sizes.{name}.num_warps must be a power of two in [1, 16], got "
          f"{tile.num_warps!r}."
        )
      if tile.num_stages is None or tile.num_stages > 8:
        raise NotImplementedError(
          f"{where}: block_sizes.{name}.num_stages must be in [1, 8], got {tile.num_stages!r}."
        )
    elif tile.num_warps is not None or tile.num_stages is not None:
      raise NotImplementedError(
        f"{where} has no launch parameters: leave block_sizes.{name}.num_warps/num_stages None."
      )
  if fused_backward and block_sizes.dkv != block_sizes.dq:
    raise NotImplementedError(
      f"{where} runs dq/dr and dk/dv in one loop: block_sizes.dkv must equal block_sizes.dq."
    )
