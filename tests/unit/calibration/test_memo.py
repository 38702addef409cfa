"""The per-sample statistics memo: one pack per folder, entries by digest, torn entries computed again."""

from __future__ import annotations

import os

import numpy as np

from engine.calibration import SampleStats, tensor_stats
from engine.calibration.memo import PACK_SUFFIX, StatsMemo, pack_header, read_pack


def sample(seed: int) -> SampleStats:
    rng = np.random.default_rng(seed)
    return SampleStats({"a": tensor_stats(rng.laplace(size=(1, 4, 8, 8)).astype(np.float32)),
                        "b": tensor_stats(rng.normal(size=(1, 16)).astype(np.float32), channel_axis=None)})


def packs(folder) -> list:
    return sorted(p for p in folder.iterdir() if p.name.endswith(PACK_SUFFIX))


def test_entries_read_back_equal_and_one_pack_holds_exactly_the_kept_samples(tmp_path):
    memo = StatsMemo(tmp_path)
    for k in range(4):
        memo.put(f"d{k}", sample(k))
    written = memo.save(["d0", "d1", "d2", "d3"])
    assert packs(tmp_path) == [written]
    again = StatsMemo(tmp_path)
    assert [again.get(f"d{k}").tensors == sample(k).tensors for k in range(4)] == [True] * 4
    assert again.get("d9") is None
    assert again.save(["d0", "d1", "d2", "d3"]) is None and packs(tmp_path) == [written]  # nothing new: no write
    # one sample replaced: a new pack of the current four, the old one removed, reused bytes unchanged
    again.put("d4", sample(4))
    newer = again.save(["d0", "d1", "d4", "d3"])
    assert packs(tmp_path) == [newer] and newer != written
    entries = read_pack(newer.read_bytes())
    assert list(entries) == ["d0", "d1", "d4", "d3"]
    blob = sample(0).to_bytes()  # a pack of one, made by hand: header, then the archive
    assert entries["d0"] == read_pack(pack_header({"d0": len(blob)}) + blob)["d0"]


def test_a_torn_entry_is_missing_and_a_torn_pack_is_empty(tmp_path):
    memo = StatsMemo(tmp_path)
    memo.put("d0", sample(0))
    memo.put("d1", sample(1))
    path = memo.save(["d0", "d1"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last entry (d1)
    path.write_bytes(bytes(data))
    torn = StatsMemo(tmp_path)
    assert torn.get("d0") is not None and torn.get("d1") is None
    torn.put("d1", sample(1))  # computed again: the pack is rewritten whole
    assert StatsMemo(tmp_path).get("d1") is None and torn.save(["d0", "d1"]) is not None
    assert StatsMemo(tmp_path).get("d1").tensors == sample(1).tensors
    [path] = packs(tmp_path)
    path.write_bytes(path.read_bytes()[:20])  # header cut: nothing reads, nothing raises
    assert StatsMemo(tmp_path).get("d0") is None


def test_save_removes_strays_but_not_another_process_fresh_temp_file(tmp_path):
    (tmp_path / "0123.hbstats").write_bytes(b"an older per-sample file")
    (tmp_path / f".x{PACK_SUFFIX}.99999.tmp").write_bytes(b"another process writing")
    old = tmp_path / f".y{PACK_SUFFIX}.99998.tmp"
    old.write_bytes(b"left by a dead process")
    os.utime(old, (0, 0))
    memo = StatsMemo(tmp_path)
    memo.put("d0", sample(0))
    memo.save(["d0"])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(PACK_SUFFIX)) == [
        f".x{PACK_SUFFIX}.99999.tmp"]
    assert StatsMemo(tmp_path).save([]) is None and list(tmp_path.iterdir()) == [tmp_path / f".x{PACK_SUFFIX}.99999.tmp"]


def test_a_missing_folder_is_an_empty_memo(tmp_path):
    memo = StatsMemo(tmp_path / "not-yet")
    assert memo.get("d0") is None
    memo.put("d0", sample(0))
    assert memo.save(["d0"]).parent == tmp_path / "not-yet"


def test_new_entries_are_not_held_in_memory(tmp_path, monkeypatch):
    """A run's statistics memo must not grow with the number of samples (issue #3's RSS target): put()
    spools each archive to disk once a run's new archives take `MEMORY_BYTES` (here two archives),
    save() streams them into the pack."""
    import tracemalloc

    import engine.pipeline.cache  # noqa: F401 - `save` imports it on first use: 4 MB of modules, not the memo's memory
    from engine.calibration import memo as memo_module

    big = SampleStats({f"t{k}": tensor_stats(np.random.default_rng(k).laplace(size=(1, 16, 32, 32))
                                             .astype(np.float32)) for k in range(8)})
    one = len(big.to_bytes())
    monkeypatch.setattr(memo_module, "MEMORY_BYTES", 2 * one)
    memo = StatsMemo(tmp_path)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(40):
            memo.put(f"d{k}", big)
        held = tracemalloc.get_traced_memory()[0] - base
        path = memo.save([f"d{k}" for k in range(40)])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert held < 4 * one and peak < 8 * one, (held, peak, one)  # 40 archives held would be 40 × one
    assert list(read_pack(path.read_bytes())) == [f"d{k}" for k in range(40)]
    assert StatsMemo(tmp_path).get("d39").tensors == big.tensors


def test_a_small_run_keeps_its_archives_in_memory_and_saves_the_same_pack(tmp_path):
    """Below `MEMORY_BYTES` no spool file is made (digits' 32 samples: 1.5 MB); the pack and what reads
    back are those of spooled archives."""
    from engine.calibration import memo as memo_module

    entries = {f"d{k}": sample(k) for k in range(6)}
    memo = StatsMemo(tmp_path / "kept")
    for digest, stats in entries.items():
        memo.put(digest, stats)
    assert memo._spool is None and sum(len(s.to_bytes()) for s in entries.values()) <= memo_module.MEMORY_BYTES
    assert memo.get("d3").tensors == entries["d3"].tensors
    kept = memo.save(list(entries)).read_bytes()
    spooled = StatsMemo(tmp_path / "spooled")
    spooled._in_memory = memo_module.MEMORY_BYTES  # as if the run's budget were taken: every archive spooled
    for digest, stats in entries.items():
        spooled.put(digest, stats)
    assert spooled._spool is not None
    assert read_pack(spooled.save(list(entries)).read_bytes()) == read_pack(kept)
    assert StatsMemo(tmp_path / "kept").get("d5").tensors == entries["d5"].tensors


def test_a_warm_memo_serves_what_it_decoded_while_the_pack_holds_the_same_archive(tmp_path, monkeypatch):
    """issue #8: a warm engine does not decode the unchanged samples' archives again; an entry whose
    archive changed on disk is decoded (and, when torn, computed again) exactly as without the cache."""
    from engine.calibration.memo import DecodedStats

    decoded = DecodedStats()
    memo = StatsMemo(tmp_path, decoded=decoded)
    for k in range(3):
        memo.put(f"d{k}", sample(k))
        memo.remember(f"d{k}", sample(k).compact())
    memo.save(["d0", "d1", "d2"])
    reads = []
    real = SampleStats.from_bytes
    monkeypatch.setattr(SampleStats, "from_bytes", classmethod(lambda cls, b: reads.append(1) or real(b)))
    again = StatsMemo(tmp_path, decoded=decoded)
    assert [again.get(f"d{k}").tensors == sample(k).tensors for k in range(3)] == [True] * 3
    assert reads == []  # all three served decoded
    [pack] = packs(tmp_path)
    data = bytearray(pack.read_bytes())
    data[-5] ^= 0xFF  # the last entry (d2) altered on disk
    pack.write_bytes(bytes(data))
    torn = StatsMemo(tmp_path, decoded=decoded)
    assert torn.get("d0").tensors == sample(0).tensors and reads == []
    assert torn.get("d2") is None and reads == [1]  # decoded, its checksum fails: computed again
    assert "d2" not in decoded.entries
    StatsMemo(tmp_path / "other", decoded=decoded)  # another model's folder: the first one's entries go
    assert decoded.entries == {} and decoded.nbytes == 0


def test_decoded_statistics_stay_within_their_budget_and_follow_the_kept_samples(tmp_path):
    from engine.calibration.memo import DecodedStats

    one = sum(s.hist.nbytes for s in sample(0).compact().tensors.values())
    decoded = DecodedStats(budget=2 * one)
    memo = StatsMemo(tmp_path, decoded=decoded)
    for k in range(4):
        memo.put(f"d{k}", sample(k))
        memo.remember(f"d{k}", sample(k).compact())
    assert sorted(decoded.entries) == ["d0", "d1"] and decoded.nbytes == 2 * one
    memo.save(["d1", "d2", "d3"])  # d0 replaced
    assert sorted(decoded.entries) == ["d1"] and decoded.nbytes == one
