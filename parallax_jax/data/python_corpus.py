"""`PythonCorpus`: the text files of the running Python installation, one document per file.

`DataConfig(source="python_corpus")`: every `.py`, `.md`, `.rst` and `.txt` file under the
interpreter's stdlib and site-packages roots (`sysconfig.get_paths()`: "stdlib", "purelib",
"platlib"; a root nested in another is walked once, as itself). No download: on the H200
image this is 319 MiB in 22.7k files after deduplication, large enough that a ~100M-token
study does not repeat it (docs/design.md §15).

Conventions:
- A file is named by a stable relative path "<root label>/<path under the root>" with '/'
  separators, e.g. "stdlib/json/decoder.py", "purelib/numpy/linalg/linalg.py"; documents come
  in sorted order of that name.
- Test directories (`test`, `tests`, `idle_test`), `__pycache__`, and `site-packages` /
  `dist-packages` directories that are not roots themselves are skipped, like `BuiltinCorpus`.
- Duplicated contents (vendored copies, licence texts) are kept once, by the first name in
  sorted order, so a content is in one split only.
- Held-out files: a file is "eval" iff a hash of its name maps below `eval_fraction`, a pure
  function of the name (independent of seeds, other files and the machine), so a held-out
  file never reaches training and the split is the same wherever the file exists.
- Indexing reads every file once (content hashes for the deduplication and the
  fingerprint; ~7 s for 163 MiB on a 2-core CPU); documents are read lazily afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator

import numpy as np

from parallax_jax.errors import UserError

log = logging.getLogger("parallax_jax")

EXTENSIONS = (".py", ".md", ".rst", ".txt")
# As `BuiltinCorpus`: test directories hold deliberately malformed or data-like files; a
# site-packages inside the stdlib is walked only where it is a root itself.
EXCLUDED_DIRS = frozenset(
  {"__pycache__", "test", "tests", "idle_test", "site-packages", "dist-packages"}
)
_SPLIT_SALT = b"parallax-jax python_corpus split v1\0"  # fixed: the held-out files never move


def default_roots() -> dict[str, str]:
  """{label: directory} of the running interpreter: stdlib, purelib, platlib (deduplicated)."""
  paths = sysconfig.get_paths()
  roots: dict[str, str] = {}
  for label in ("stdlib", "purelib", "platlib"):
    path = paths.get(label)
    if (
      path
      and os.path.isdir(path)
      and os.path.realpath(path) not in map(os.path.realpath, roots.values())
    ):
      roots[label] = path
  return roots


def _unit_hash(name: str, salt: bytes) -> float:
  """A uniform number in [0, 1) from sha256(salt + name): the same on every machine."""
  digest = hashlib.sha256(salt + name.encode("utf-8", "surrogateescape")).digest()
  return int.from_bytes(digest[:8], "little") / 2.0**64


class PythonCorpus:
  """The installation's `.py`/`.md`/`.rst`/`.txt` files, deduplicated, split by name hash.

  Args:
    roots: {label: directory} to walk; default `default_roots()` (tests pass a fake tree).
      A root inside another is skipped while walking the outer one and walked as itself.
    eval_fraction: share of files held out (`DataConfig.eval_fraction`), in [0, 1).

  Attributes:
    names: the kept files' stable names, sorted ("<label>/<relative path>").
    is_eval: bool [num_files], True for held-out files.
    sizes: int64 [num_files], bytes per file.
  """

  def __init__(self, roots: dict[str, str] | None = None, eval_fraction: float = 0.01):
    self.roots = dict(default_roots() if roots is None else roots)
    if not self.roots:
      raise UserError("python_corpus: no root directory to read (sysconfig gave none)")
    for label, root in self.roots.items():
      if "/" in label or not label:
        raise UserError(f"python_corpus: root label {label!r} must be a non-empty name")
      if not os.path.isdir(root):
        raise UserError(f"python_corpus: root {label}={root!r} is not a directory")
    if not 0.0 <= eval_fraction < 1.0:
      raise UserError(f"python_corpus: eval_fraction={eval_fraction!r} must be in [0, 1)")
    self.eval_fraction = float(eval_fraction)
    self._index()

  # ------------------------------------------------------------------------------- indexing

  def _walk(self) -> Iterator[tuple[str, str]]:
    """(name, absolute path) of every candidate file, nested roots walked once as themselves."""
    real_roots = {os.path.realpath(r) for r in self.roots.values()}
    for label, root in self.roots.items():
      this = os.path.realpath(root)
      for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
          d
          for d in dirnames
          if d not in EXCLUDED_DIRS
          and os.path.realpath(os.path.join(dirpath, d)) not in real_roots - {this}
        ]
        rel_dir = os.path.relpath(dirpath, root)
        for n in filenames:
          if n.endswith(EXTENSIONS):
            rel = os.path.normpath(os.path.join(rel_dir, n)).replace(os.sep, "/")
            yield f"{label}/{rel}", os.path.join(dirpath, n)

  def _index(self) -> None:
    candidates = sorted(self._walk())
    seen: set[bytes] = set()
    names, paths, sizes, digests = [], [], [], []
    self.num_duplicates = self.num_unreadable = 0
    for name, path in candidates:
      try:
        with open(path, "rb") as f:
          data = f.read()
      except OSError:  # a dangling link or a root-only file: not part of the corpus
        self.num_unreadable += 1
        continue
      digest = hashlib.sha256(data).digest()
      if digest in seen:
        self.num_duplicates += 1
        continue
      seen.add(digest)
      names.append(name), paths.append(path), sizes.append(len(data)), digests.append(digest)
    if not names:
      raise UserError(
        f"python_corpus: no {'/'.join(EXTENSIONS)} files under {sorted(self.roots.values())}"
      )
    self.names, self._paths = names, paths
    self.sizes = np.asarray(sizes, np.int64)
    self.is_eval = self._split(self.eval_fraction)
    h = hashlib.sha256()
    for name, size, digest in zip(names, sizes, digests, strict=True):
      h.update(name.encode("utf-8", "surrogateescape") + b"\0" + size.to_bytes(8, "little"))
      h.update(digest)
    self._sha256 = h.hexdigest()
    log.info("python_corpus: %s", self.summary())

  def _split(self, eval_fraction: float) -> np.ndarray:
    u = np.asarray([_unit_hash(n, _SPLIT_SALT) for n in self.names])
    is_eval = u < eval_fraction
    # Only a tiny corpus meets these: never an empty eval split (if asked for) nor train one.
    if eval_fraction > 0 and len(u) >= 2 and not is_eval.any():
      is_eval[np.argmin(u)] = True
    if is_eval.all():
      is_eval[np.argmax(u)] = False
    return is_eval

  # ------------------------------------------------------------------------------- access

  def __len__(self) -> int:
    return len(self.names)

  def read_bytes(self, index: int) -> bytes:
    with open(self._paths[index], "rb") as f:
      return f.read()

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self.names):  # IndexError lets `list(src)` stop
      raise IndexError(f"document {index} out of range [0, {len(self.names)})")
    return self.read_bytes(index).decode("utf-8", errors="replace")

  def split_indices(self, eval_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) sorted int64 document indices, by the hash of each file's name.

    The pipeline calls this instead of its index-hash split. `eval_fraction` must be the one
    the corpus was built with (its fingerprint records that split)."""
    if eval_fraction is not None and eval_fraction != self.eval_fraction:
      raise UserError(
        f"python_corpus: split asked for eval_fraction={eval_fraction!r} but the corpus was "
        f"built with {self.eval_fraction!r}; build it with make_source(cfg, ...)"
      )
    return np.flatnonzero(~self.is_eval), np.flatnonzero(self.is_eval)

  # ---------------------------------------------------------------------------- reporting

  def split_sizes(self) -> dict:
    ev = self.is_eval
    return {
      "train_files": int((~ev).sum()),
      "train_bytes": int(self.sizes[~ev].sum()),
      "eval_files": int(ev.sum()),
      "eval_bytes": int(self.sizes[ev].sum()),
    }

  def fingerprint(self) -> dict:
    """sha256 over (name, size, content sha256) of every kept file, with counts and split
    sizes: two runs with the same fingerprint trained and evaluated on the same files."""
    return {
      "sha256": self._sha256,
      "num_files": len(self.names),
      "num_bytes": int(self.sizes.sum()),
      "num_duplicates_dropped": self.num_duplicates,
      "num_unreadable_skipped": self.num_unreadable,
      "eval_fraction": self.eval_fraction,
      **self.split_sizes(),
      "extensions": list(EXTENSIONS),
      "python": sys.version.split()[0],
      "roots": self.roots,
    }

  def summary(self) -> str:
    """One line: files and MiB in all and per split."""
    s, mib = self.split_sizes(), 2.0**20
    return (
      f"{len(self.names)} files, {self.sizes.sum() / mib:.1f} MiB "
      f"(train {s['train_files']} files {s['train_bytes'] / mib:.1f} MiB, eval "
      f"{s['eval_files']} files {s['eval_bytes'] / mib:.1f} MiB; {self.num_duplicates} "
      f"duplicates dropped) from {sorted(self.roots)}"
    )

  def describe(self) -> dict:
    return {"kind": "python_corpus", **self.fingerprint()}
