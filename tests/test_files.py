"""``parallax_jax.files``: records written whole and made durable (``write_text_atomic``)."""

from __future__ import annotations

import os
import stat

from parallax_jax import files


def test_write_text_atomic_syncs_the_data_before_the_rename_and_the_rename_after(
  tmp_path, monkeypatch
):
  """The order a power loss needs: the new file's bytes reach the disk, then the rename
  replaces the old record, then the folder (which holds the rename) is synced. Without the
  first sync a machine may come back with the rename and an empty file."""
  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
    events.append(("fsync", kind))
    real_fsync(fd)

  def replace(src, dst):
    events.append(("replace", os.path.basename(dst)))
    real_replace(src, dst)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(os, "replace", replace)
  path = tmp_path / "config.json"
  path.write_text("old")
  files.write_text_atomic(path, "new record\n")
  assert events == [("fsync", "file"), ("replace", "config.json"), ("fsync", "folder")]
  assert path.read_text() == "new record\n"
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_a_folder_that_refuses_fsync_still_gets_its_record(tmp_path, monkeypatch):
  """Some filesystems refuse ``fsync`` on a folder: the record is written all the same."""
  real_fsync = os.fsync

  def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
      raise OSError(22, "Invalid argument")
    real_fsync(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  files.write_text_atomic(tmp_path / "status.json", "{}")
  assert (tmp_path / "status.json").read_text() == "{}"
