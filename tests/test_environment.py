"""What a run ran on: the code's git revision, and the hardware column of a sweep's table."""

import json
import subprocess
from pathlib import Path

import pytest

from parallax_jax import environment
from parallax_jax.sweeps import report


def _git(repo: Path, *args: str) -> str:
  out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
  return out.stdout.strip()


def test_code_revision_is_the_checkouts_commit_and_says_when_tracked_files_differ(tmp_path):
  repo = tmp_path / "repo"
  repo.mkdir()
  _git(repo, "init", "-q")
  (repo / "a.py").write_text("x = 1\n")
  _git(repo, "add", "a.py")
  _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
  head = _git(repo, "rev-parse", "HEAD")
  assert environment.code_revision(repo) == {"commit": head, "dirty": False}
  (repo / "new.py").write_text("untracked\n")  # untracked files do not change the code run
  assert environment.code_revision(repo) == {"commit": head, "dirty": False}
  (repo / "a.py").write_text("x = 2\n")
  assert environment.code_revision(repo) == {"commit": head, "dirty": True}
  assert environment.code_revision(tmp_path / "elsewhere") is None  # not a checkout


def _record(count: int, kind: str) -> dict:
  return {"devices": {"count": count, "kind": kind}}


@pytest.mark.parametrize(
  "start, resumes, shown",
  [
    (_record(1, "NVIDIA H200"), [], "1x NVIDIA H200"),
    (_record(1, "NVIDIA H200"), [_record(1, "NVIDIA H200")], "1x NVIDIA H200"),
    (
      _record(1, "NVIDIA H200"),
      [_record(1, "NVIDIA H100 80GB HBM3")],
      "1x NVIDIA H200; 1x NVIDIA H100 80GB HBM3",
    ),
    (None, [_record(8, "TPU v5 lite")], "8x TPU v5 lite"),  # started before records
    (None, [], None),
  ],
)
def test_a_sweep_row_names_every_starts_hardware_once(tmp_path, start, resumes, shown):
  point = tmp_path / "point"
  point.mkdir()
  record = {"config": {}} if start is None else {"config": {}, "environment": start}
  (point / "config.json").write_text(json.dumps(record))
  (point / "config_history.jsonl").write_text(
    "".join(json.dumps({"environment": r}) + "\n" for r in resumes)
  )
  assert report._hardware(point) == shown


def test_a_pending_point_has_no_hardware(tmp_path):
  assert report._hardware(tmp_path / "never_started") is None
