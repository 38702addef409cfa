"""Incremental re-runs (issue #8): work a stage re-runs only when what it depends on changed.

The report stage reuses its calibrated comparison when only what quantize reads changed; the
compile stage measures a program's latency once. Each is checked by making the reused work impossible (the
function that would redo it raises) or by the value a re-measurement could not reproduce.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.pipeline import Engine

CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tiny
input_parameters:
  input_name: data
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: nv12
  input_shape: 1x3x8x8
  mean_value: 128 128 128
  scale_value: 0.0078125
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
compiler_parameters:
  compile_mode: latency
  optimize_level: O2
"""


def write_samples(folder, n: int = 4, seed: int = 0) -> list:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"s{i:02d}.npy"
        np.save(path, rng.uniform(0, 255, (1, 3, 8, 8)).astype(np.float32))
        paths.append(path)
    return paths


@pytest.fixture
def tiny(project):
    write_samples(project.root / "cal")
    return project


def run_ok(engine: Engine, cfg):
    report = engine.run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    return report


def memo(project, name: str) -> list:
    folder = project.root / "model_output" / ".hb_cache" / "memo" / name
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_quantize_only_change_reuses_the_calibrated_comparison(tiny, monkeypatch):
    """input_batch is read by quantize (and later stages) only: the float and calibrated models,
    the thresholds and the first sample are unchanged, so they are not compared again."""
    cfg = tiny.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)

    def redone(*args, **kwargs):
        raise AssertionError("the float and calibrated models were compared again")

    monkeypatch.setattr("engine.similarity.compare", redone)
    tiny.config(CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n  input_batch: 2"))
    again = run_ok(engine, cfg)
    assert again.stage("calibrate").status == "reused" and again.stage("report").status == "ran"
    assert again.stage("quantize").status == "ran"
    rows = {r["node"]: r for r in first.results["report"]["nodes"]}
    for r in again.results["report"]["nodes"]:  # the calibrated side is the same numbers
        assert r["calibrated_cosine"] == rows[r["node"]]["calibrated_cosine"]
        assert r["threshold"] == rows[r["node"]]["threshold"]
    assert all(o["quantized_cosine"] is not None and o["quantized_cosine"] > 0.9
               for o in again.results["report"]["outputs"])
    assert len(memo(tiny, "calibrated_similarity")) == 1


def test_new_thresholds_are_compared_again_and_a_corrupt_entry_is_recomputed(tiny):
    cfg = tiny.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    samples = sorted((tiny.root / "cal").iterdir())
    np.save(samples[2], np.load(samples[2]) * 1.5)  # a larger range: new thresholds
    again = run_ok(engine, cfg)
    assert again.stage("calibrate").status == "ran" and len(memo(tiny, "calibrated_similarity")) == 2
    assert again.results["report"]["nodes"] != first.results["report"]["nodes"]
    folder = tiny.root / "model_output" / ".hb_cache" / "memo" / "calibrated_similarity"
    for p in folder.glob("*.json"):
        p.write_text('{"nodes": [{"node": 1}]')  # torn
    tiny.config(CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n  input_batch: 2"))
    third = run_ok(engine, cfg)
    assert [r["calibrated_cosine"] for r in third.results["report"]["nodes"]] == \
        [r["calibrated_cosine"] for r in again.results["report"]["nodes"]]


def measured(project) -> dict:
    perf = json.loads((project.root / "model_output" / "tiny.json").read_text())
    return perf["summary"]["measured on this machine"]


def test_same_program_is_measured_once(tiny):
    cfg = tiny.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    before = measured(tiny)
    tiny.config(CONFIG.replace("compile_mode: latency", "compile_mode: bandwidth"))
    again = run_ok(engine, cfg)
    assert again.ran == ["config", "compile"]
    perf = json.loads((tiny.root / "model_output" / "tiny.json").read_text())
    assert perf["summary"]["compile_mode"] == "bandwidth"  # re-estimated ...
    assert measured(tiny) == before  # ... not re-measured (a new median would differ in its last digits)
    assert len(memo(tiny, "latency")) == 1
    tiny.config(CONFIG.replace("optimize_level: O2", "optimize_level: O0"))  # another program
    run_ok(engine, cfg)
    assert len(memo(tiny, "latency")) == 2


def test_runs_and_stages_report_their_cpu_time(tiny):
    cfg = tiny.config(CONFIG)
    report = run_ok(Engine(), cfg)
    ran = [s for s in report.stages if s.status == "ran" and s.name != "config"]
    assert ran and all(s.cpu_seconds > 0 for s in ran)
    assert sum(s.cpu_seconds for s in ran) <= report.cpu_seconds
    assert report.to_json()["cpu_seconds"] == round(report.cpu_seconds, 4)


def test_a_hash_taken_right_after_a_write_is_taken_again(tmp_path, monkeypatch):
    """Timestamps are coarse: a file rewritten with the same size in the same tick keeps its
    (size, mtime). A hash taken that close to the file's last change is not trusted; a settled
    one is, until the stat stamp (size, mtime, ctime, inode) changes."""
    import os
    import time

    import engine.pipeline.hashing as hashing
    from engine.pipeline.hashing import HashMemo, sha256_file

    memo = HashMemo()
    path = tmp_path / "sample.bin"
    path.write_bytes(b"a" * 64)
    st = path.stat()
    first = memo.file(path)
    path.write_bytes(b"b" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: one tick
    assert memo.file(path) == sha256_file(path) != first

    monkeypatch.setattr(hashing, "RACY_NS", 1_000_000)  # 1 ms: settle without sleeping for seconds
    monkeypatch.setattr(hashing, "CTIME_RACY_NS", 1_000_000)
    settled = time.time_ns() - 60_000_000_000
    os.utime(path, ns=(settled, settled))
    time.sleep(0.01)
    before = memo.file(path)
    reads: list[object] = []
    monkeypatch.setattr(hashing, "sha256_file", lambda p: reads.append(p) or sha256_file(p))
    assert memo.file(path) == before and reads == []  # a settled entry is trusted: the memo saves the reads


def test_new_bytes_under_the_old_size_and_mtime_are_hashed_again(tmp_path, monkeypatch):
    """`cp -p` / `rsync -t` of a retrained checkpoint, or an archive with normalised timestamps:
    same size, same mtime, other weights. ctime (which no user call can set) tells them apart."""
    import os
    import time

    import engine.pipeline.hashing as hashing
    from engine.pipeline.hashing import HashMemo, sha256_file

    monkeypatch.setattr(hashing, "CTIME_RACY_NS", 1_000_000)
    memo = HashMemo()
    path = tmp_path / "model.onnx"
    old_time = 315_532_800_000_000_000  # 1980-01-01, zip's epoch
    path.write_bytes(b"old weights.")
    os.utime(path, ns=(old_time, old_time))
    time.sleep(0.01)
    first = memo.file(path)
    assert memo.file(path) == first
    time.sleep(0.01)
    path.write_bytes(b"new weights.")
    os.utime(path, ns=(old_time, old_time))
    assert memo.file(path) == sha256_file(path) != first
    replacement = tmp_path / "model.onnx.tmp"  # replaced by rename: a new inode under the old stamp
    replacement.write_bytes(b"2nd weights.")
    os.utime(replacement, ns=(old_time, old_time))
    os.replace(replacement, path)
    assert memo.file(path) == sha256_file(path)


def test_a_file_copied_with_its_old_mtime_is_trusted_after_a_tick_and_not_before(tmp_path, monkeypatch):
    """copytree / cp -p: old mtime, fresh ctime. Trusted once its ctime is CTIME_RACY_NS old (not 2 s:
    a warm engine would re-read every calibration file of a freshly copied project on each run), and
    not while the ctime is that fresh (a second copy in the same tick would keep the whole stamp)."""
    import os
    import time

    import engine.pipeline.hashing as hashing
    from engine.pipeline.hashing import HashMemo, sha256_file

    reads: list[object] = []
    monkeypatch.setattr(hashing, "sha256_file", lambda p: reads.append(p) or sha256_file(p))
    monkeypatch.setattr(hashing, "CTIME_RACY_NS", 200_000_000)
    memo = HashMemo()
    path = tmp_path / "sample.bin"
    path.write_bytes(b"x" * 64)
    old = time.time_ns() - 3_600_000_000_000
    os.utime(path, ns=(old, old))
    memo.file(path)
    memo.file(path)
    assert len(reads) == 2  # ctime fresh: racy, read again
    time.sleep(0.25)
    memo.file(path)
    memo.file(path)
    assert len(reads) == 3  # settled: one read, then trusted
