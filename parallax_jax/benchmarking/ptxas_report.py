"""Registers and spills per kernel from ptxas' verbose output (``ptxas -v``).

Mosaic GPU prints that output for every kernel it compiles when ``MOSAIC_GPU_DUMP_PTXAS`` is set
(Mosaic runs ptxas itself); ``experiments/kernel_registers.py`` collects it per kernel variant.
The lines this reads (CUDA 12, one block per entry function)::

  ptxas info    : Compiling entry function 'name' for 'sm_90a'
  ptxas info    : Function properties for name
      8 bytes stack frame, 16 bytes spill stores, 24 bytes spill loads
  ptxas info    : Used 168 registers, used 1 barriers, 472 bytes cmem[0]

Spill bytes are per thread and static (code size, not traffic): a kernel with any spill
stores keeps values in local memory somewhere, and ncu's spill requests say how often.
"""

from __future__ import annotations

import re

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


def parse(text: str) -> list[dict]:
  """One dict per entry function, in order: ``kernel``, ``registers``, ``stack_bytes``,
  ``spill_store_bytes``, ``spill_load_bytes`` (None where ptxas printed no such line)."""
  out = []
  for line in text.splitlines():
    if m := _ENTRY.search(line):
      out.append(
        dict(
          kernel=m.group(1),
          registers=None,
          stack_bytes=None,
          spill_store_bytes=None,
          spill_load_bytes=None,
        )
      )
    elif not out:
      continue
    elif m := _PROPS.search(line):
      out[-1].update(
        stack_bytes=int(m.group(1)),
        spill_store_bytes=int(m.group(2)),
        spill_load_bytes=int(m.group(3)),
      )
    elif m := _USED.search(line):
      out[-1]["registers"] = int(m.group(1))
  return out
