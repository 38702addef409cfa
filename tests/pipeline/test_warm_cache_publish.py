"""What a warm engine keeps between runs about its stage cache and its published artefacts is only a
speed-up: a cache entry whose files went away, a meta.json or last_run.json written by another process,
a published file replaced by a link to an input or by other bytes of the same size — each is seen."""

from __future__ import annotations

import json
import os
import stat

import pytest

from engine.pipeline.cache import StageCache, atomic_write_bytes
from engine.pipeline.hashing import HashMemo
from engine.pipeline.publish import ArtefactCollisionError, Publisher

KEY = "k" * 64


def committed(cache: StageCache, result: dict) -> os.PathLike:
    tmp = cache.new_temp("compile")
    (tmp / "model.hbm").write_bytes(b"program")
    (tmp / "perf.json").write_text("{}")
    return cache.commit("compile", KEY, tmp, result)


def test_an_entry_read_before_is_still_checked_for_its_files(tmp_path):
    cache = StageCache(tmp_path)
    entry = committed(cache, {"n": 1})
    assert cache.lookup("compile", KEY) == entry and cache.lookup("compile", KEY) == entry  # the second from memory
    (entry / "perf.json").unlink()
    assert cache.lookup("compile", KEY) is None  # a file missing: corrupt, removed, recomputed
    assert not entry.exists()


def test_an_entry_rewritten_by_another_process_is_read_again(tmp_path):
    cache = StageCache(tmp_path)
    entry = committed(cache, {"measured": 1})
    assert cache.lookup("compile", KEY) == entry and cache.result(entry) == {"measured": 1}
    meta = json.loads((entry / "meta.json").read_text())
    meta["result"] = {"measured": 2, "by": "another process"}
    atomic_write_bytes(entry / "meta.json", json.dumps(meta).encode())  # a new file (inode) in its place
    assert cache.lookup("compile", KEY) == entry and cache.result(entry) == {"measured": 2, "by": "another process"}


def test_last_parts_follow_the_file(tmp_path):
    cache = StageCache(tmp_path)
    assert cache.last_parts() == {}
    cache.save_parts({"compile": {"slice": {"compile_mode": "latency"}}})
    assert cache.last_parts() == {"compile": {"slice": {"compile_mode": "latency"}}}
    other = StageCache(tmp_path)  # another engine on the same working_dir
    other.save_parts({"compile": {"slice": {"compile_mode": "bandwidth"}}}, other.last_parts())
    assert cache.last_parts() == {"compile": {"slice": {"compile_mode": "bandwidth"}}}


@pytest.fixture
def published(tmp_path):
    """A working_dir with `tiny.hbm` published from one entry, an input model beside it, and the publisher."""
    wd, root = tmp_path / "wd", tmp_path / "wd" / ".hb_cache"
    (root / "compile" / "a").mkdir(parents=True)
    (root / "compile" / "b").mkdir(parents=True)
    (root / "compile" / "a" / "model.hbm").write_bytes(b"AAAA")
    (root / "compile" / "b" / "model.hbm").write_bytes(b"BBBB")  # the same size, other bytes
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the user's model")
    publisher = Publisher(HashMemo())
    publisher.publish(wd, root, [("tiny.hbm", root / "compile" / "a" / "model.hbm")], [model])
    return publisher, wd, root, model


def test_other_bytes_of_the_same_size_are_published(published):
    publisher, wd, root, model = published
    assert (wd / "tiny.hbm").read_bytes() == b"AAAA"
    publisher.publish(wd, root, [("tiny.hbm", root / "compile" / "b" / "model.hbm")], [model])
    assert (wd / "tiny.hbm").read_bytes() == b"BBBB"
    record = json.loads((root / "published.json").read_text())
    assert record["tiny.hbm"] == HashMemo().file(root / "compile" / "b" / "model.hbm")


def test_an_artefact_changed_in_place_with_its_mtime_put_back_is_published_again(published):
    """The copy is remembered by size, mtime, ctime and inode: bytes written in place at the same size with the
    mtime put back (review r2: a warm engine left them, a cold one restored the entry's bytes) change the ctime."""
    publisher, wd, root, model = published
    art = wd / "tiny.hbm"
    before = os.stat(art)
    with open(art, "r+b") as fh:
        fh.write(b"XX")
    os.utime(art, ns=(before.st_atime_ns, before.st_mtime_ns))
    publisher.publish(wd, root, [("tiny.hbm", root / "compile" / "a" / "model.hbm")], [model])
    assert art.read_bytes() == b"AAAA"


def test_a_copy_is_remembered_as_it_stands_after_its_rename(published, monkeypatch):
    """Publishing the same entry again trusts the remembered stamp (no hashing of the published file)."""
    publisher, wd, root, model = published
    hashed = []
    real = publisher.hashes.file
    monkeypatch.setattr(publisher.hashes, "file", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    publisher.publish(wd, root, [("tiny.hbm", root / "compile" / "a" / "model.hbm")], [model])
    assert wd / "tiny.hbm" not in hashed


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_an_artefact_name_that_is_an_input_is_refused(published, how):
    """The input is known by its file (device, inode), whatever path leads to it."""
    publisher, wd, root, model = published
    (wd / "tiny.hbm").unlink()
    (os.symlink if how == "symlink" else os.link)(model, wd / "tiny.hbm")
    with pytest.raises(ArtefactCollisionError, match="an input of this run"):
        publisher.publish(wd, root, [("tiny.hbm", root / "compile" / "b" / "model.hbm")], [model])
    assert model.read_bytes() == b"the user's model"


def test_a_record_another_process_wrote_is_read_again(published):
    """The record is kept by its stat stamp: another engine's publish (a file it removed from the record)
    is what this one's next publish starts from."""
    publisher, wd, root, model = published
    other = Publisher(HashMemo())
    other.publish(wd, root, [("tiny.hbm", None)], [model])  # `--skip compile` in another process: unpublished
    assert not (wd / "tiny.hbm").exists() and "tiny.hbm" not in json.loads((root / "published.json").read_text())
    (wd / "tiny.hbm").write_bytes(b"AAAA")  # the user's copy of the old model: no longer published, stays
    publisher.publish(wd, root, [("tiny.hbm", None)], [model])
    assert (wd / "tiny.hbm").read_bytes() == b"AAAA"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_pruned_entries_leave_their_stage_folder_at_once_and_the_disk_soon(tmp_path):
    """Pruning moves an entry into `.trash` (one rename) and a background thread deletes it; an owned memo
    goes with it, and what a dead process left in `.trash` is deleted by the next pruning cache."""
    import time

    from engine.pipeline.cache import KEEP_PER_STAGE, TRASH, _deleter, memo_name

    left = tmp_path / TRASH / "compile-deadbeef-1-0"
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "model.hbm").write_bytes(b"left by a process that died")
    cache = StageCache(tmp_path)
    keys = [f"{i:x}" * 64 for i in range(KEEP_PER_STAGE + 1)]
    for n, key in enumerate(keys):
        tmp = cache.new_temp("compile")
        (tmp / "model.hbm").write_bytes(b"x" * 10)
        entry = cache.commit("compile", key[:64], tmp, {})
        os.utime(entry, (time.time() - 100 + n, time.time() - 100 + n))  # committed in this order
        if n == 0:
            owned = tmp_path / "memo" / "latency" / memo_name(key, "m")
            owned.parent.mkdir(parents=True)
            owned.write_text("{}")
    names = sorted(p.name for p in (tmp_path / "compile").iterdir())
    assert names == sorted(k[:64] for k in keys[1:])  # the oldest left its stage folder with the commit
    assert not owned.exists()  # and its memo went with it
    assert _deleter.drain()
    assert list((tmp_path / TRASH).iterdir()) == []  # both deleted: the pruned entry and the dead process's


def test_a_long_lived_engine_keeps_a_bounded_number_of_stage_caches(tmp_path):
    """A daemon serving many working_dirs (review r2: 13 folders, 13 StageCaches kept for ever)."""
    from types import SimpleNamespace

    from engine.pipeline.engine import CACHES_KEPT, Engine

    engine = Engine()
    first = engine.stage_cache(SimpleNamespace(working_dir=tmp_path / "wd0"))
    assert engine.stage_cache(SimpleNamespace(working_dir=tmp_path / "wd0")) is first  # kept warm
    for i in range(1, CACHES_KEPT + 4):
        engine.stage_cache(SimpleNamespace(working_dir=tmp_path / f"wd{i}"))
    assert len(engine.caches) == CACHES_KEPT
    assert engine.stage_cache(SimpleNamespace(working_dir=tmp_path / "wd0")) is not first  # the oldest went


def test_a_publisher_serving_many_working_dirs_forgets_its_oldest_records(tmp_path, monkeypatch):
    import engine.pipeline.publish as publish

    monkeypatch.setattr(publish, "RECORDS_KEEP", 3)
    publisher = Publisher(HashMemo())
    for i in range(5):
        wd, root = tmp_path / f"wd{i}", tmp_path / f"wd{i}" / ".hb_cache"
        (root / "e").mkdir(parents=True)
        (root / "e" / "a.bin").write_bytes(b"A")
        publisher.publish(wd, root, [("a.bin", root / "e" / "a.bin")], [])
        assert len(publisher._records) <= 3
        assert (wd / "a.bin").read_bytes() == b"A"
