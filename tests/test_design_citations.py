"""Every ``docs/design.md §N[.M]`` citation in the repo names a section that exists, and no file
cites design notes that live outside the repo. Pure file reading: no JAX, runs in well under a
second."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SCAN_DIRS = ("parallax_jax", "pallas_kernels", "tests", "experiments", "configs", "docs", ".ci")
SCAN_FILES = ("README.md", "pyproject.toml")
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".txt", ""}
EXCLUDED = (ROOT / "experiments" / "results",)  # historical records, kept verbatim

# "design.md §3", "design.md §5.2, §5.4", "design.md §2.3 / §2.4": every § of the run counts.
_CITATION = re.compile(r"design\.md((?:\s*(?:,|;|/|and|or)?\s*§\s*\d+(?:\.\d+)*)+)")
_SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^(##|###) (\d+(?:\.\d+)?)\.? \S")
# Built by concatenation so that this file does not match itself.
_OUTSIDE = (
  "PARALLAX" + ".md",
  "JAX_" + "NOTES",
  "ANCHORS" + ".md",
  "../" + "shared",
  "/work/" + "shared",
)


def _files():
  paths = [ROOT / f for f in SCAN_FILES if (ROOT / f).is_file()]
  for d in SCAN_DIRS:
    for p in sorted((ROOT / d).rglob("*")):
      if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts:
        if not any(p.is_relative_to(x) for x in EXCLUDED):
          paths.append(p)
  return paths


def _lines(path):
  try:
    return path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError:
    return []


def design_sections() -> list[str]:
  """Section numbers of the headings ``## N. Title`` and ``### N.M Title``, in order."""
  out = []
  for line in _lines(DESIGN):
    m = _HEADING.match(line)
    if m:
      level, number = m.groups()
      if (level == "##") == ("." not in number):
        out.append(number)
  return out


def citations():
  """``(file:line, section)`` of every design-doc citation (and every § inside the doc)."""
  for path in _files():
    rel = path.relative_to(ROOT)
    for i, line in enumerate(_lines(path), 1):
      if path == DESIGN:
        found = _SECTION.findall(line)
      else:
        found = [s for run in _CITATION.findall(line) for s in _SECTION.findall(run)]
      for section in found:
        yield f"{rel}:{i}", section


def test_design_doc_has_numbered_sections():
  sections = design_sections()
  assert len(sections) >= 10, f"{DESIGN} has too few numbered sections: {sections}"
  dupes = sorted({s for s in sections if sections.count(s) > 1})
  assert not dupes, f"duplicate section numbers in docs/design.md: {dupes}"


def test_every_citation_resolves():
  sections = set(design_sections())
  found = list(citations())
  assert found, "no design.md citations found: the scan is broken"
  bad = [f"{where}: §{s}" for where, s in found if s not in sections]
  assert not bad, "citations of missing docs/design.md sections:\n" + "\n".join(bad)


def test_no_citations_outside_the_repo():
  bad = []
  for path in _files():
    for i, line in enumerate(_lines(path), 1):
      for needle in _OUTSIDE:
        if needle in line:
          bad.append(f"{path.relative_to(ROOT)}:{i}: {needle}")
  assert not bad, (
    "files cite notes outside the repo (cite docs/design.md §N instead):\n" + "\n".join(bad)
  )
