"""Artefacts are written whole or not at all: a reader never sees a half-written file, a failure
leaves the old file and no temporary behind (the rule "earlier good artefacts kept")."""

from __future__ import annotations

import os

import pytest

from engine.pipeline import cache
from engine.pipeline.cache import atomic_copy, atomic_write_bytes
from engine.pipeline.publish import replace_folder


@pytest.mark.parametrize("write", ["bytes", "copy"])
def test_a_reader_keeps_the_old_file_and_the_new_one_replaces_it_whole(tmp_path, write):
    dest = tmp_path / "m.hbm"
    dest.write_bytes(b"old" * 1000)
    reader = open(dest, "rb")  # opened before the write: must go on reading the old bytes
    inode = os.stat(dest).st_ino
    src = tmp_path / "src.bin"
    src.write_bytes(b"new" * 2000)
    if write == "bytes":
        atomic_write_bytes(dest, src.read_bytes())
    else:
        atomic_copy(src, dest)
    assert reader.read() == b"old" * 1000
    reader.close()
    assert dest.read_bytes() == b"new" * 2000
    assert os.stat(dest).st_ino != inode  # a new file renamed over it, not the old one rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hbm", "src.bin"]


@pytest.mark.parametrize("write", ["bytes", "copy"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, write):
    dest = tmp_path / "m.hbm"
    dest.write_bytes(b"good")
    src = tmp_path / "src.bin"
    src.write_bytes(b"new")

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", disk_full)
    with pytest.raises(OSError):
        atomic_write_bytes(dest, b"new") if write == "bytes" else atomic_copy(src, dest)
    assert dest.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hbm", "src.bin"]


def test_a_folder_is_replaced_whole(tmp_path):
    old = tmp_path / "calibration_data"
    (old / "x").mkdir(parents=True)
    (old / "x" / "0.npy").write_bytes(b"old")
    (old / "x" / "9.npy").write_bytes(b"stale")
    new = tmp_path / "entry"
    (new / "x").mkdir(parents=True)
    (new / "x" / "0.npy").write_bytes(b"new")
    replace_folder(new, old)
    assert sorted(p.name for p in (old / "x").iterdir()) == ["0.npy"]
    assert (old / "x" / "0.npy").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration_data", "entry"]
