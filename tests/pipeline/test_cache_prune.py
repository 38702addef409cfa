"""Memo pruning happens when an entry goes (and once per cache), not on every commit."""

from __future__ import annotations

import os
import time

from engine.pipeline.cache import KEEP_PER_STAGE, StageCache, _deleter, memo_name


def commit(cache: StageCache, key: str, n: int):
    tmp = cache.new_temp("compile")
    (tmp / "model.hbm").write_bytes(b"x" * 10)
    entry = cache.commit("compile", key, tmp, {})
    os.utime(entry, (time.time() - 100 + n, time.time() - 100 + n))  # committed in this order
    return entry


def test_memos_are_listed_once_per_cache_and_after_each_prune(tmp_path, monkeypatch):
    cache = StageCache(tmp_path)
    listed = []
    real = StageCache.prune_memos
    monkeypatch.setattr(StageCache, "prune_memos", lambda self: listed.append(1) or real(self))
    keys = [f"{i:x}" * 64 for i in range(KEEP_PER_STAGE + 2)]
    owned = tmp_path / "memo" / "latency" / memo_name(keys[0], "m")
    owned.parent.mkdir(parents=True)
    owned.write_text("{}")
    stray = tmp_path / "memo" / "latency" / memo_name("f" * 64, "left")  # its owner entry never existed
    stray.write_text("{}")
    for n, key in enumerate(keys[:KEEP_PER_STAGE]):
        commit(cache, key, n)
    assert len(listed) == 1  # the cache's first commit: a memo left by another process goes then
    assert not stray.exists() and owned.exists()
    commit(cache, keys[KEEP_PER_STAGE], KEEP_PER_STAGE)  # one too many: the oldest entry goes, its memo too
    assert len(listed) == 2 and not owned.exists()
    assert sorted(p.name for p in (tmp_path / "compile").iterdir()) == sorted(keys[1:KEEP_PER_STAGE + 1])
    commit(cache, keys[KEEP_PER_STAGE + 1], KEEP_PER_STAGE + 1)
    assert len(listed) == 3
    assert _deleter.drain()


def test_a_temporary_entry_is_made_also_after_its_stage_folder_went(tmp_path):
    import shutil

    cache = StageCache(tmp_path)
    first = cache.new_temp("ptq")
    assert first.parent == tmp_path / "ptq" and first.is_dir()
    shutil.rmtree(tmp_path / "ptq")  # a user cleaning up .hb_cache while a warm engine lives
    again = cache.new_temp("ptq")
    assert again.parent == tmp_path / "ptq" and again.is_dir() and again.name.startswith(".tmp-")


def test_peak_rss_is_the_status_files_vmhwm():
    from engine.pipeline.engine import peak_rss_mb

    before = peak_rss_mb()
    line = next(x for x in open("/proc/self/status", encoding="ascii") if x.startswith("VmHWM:"))
    assert before <= int(line.split()[1]) / 1024.0 <= peak_rss_mb()
    assert peak_rss_mb() > 1.0
