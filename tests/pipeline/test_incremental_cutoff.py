"""Early cutoff (issue #8): a stage that re-runs and writes the same outputs re-runs nothing after it.

Later stages key on what an earlier stage wrote (`StageCache.outputs`), not on its key. A changed
calibration file that moves no threshold (`max`, its values inside the ranges the other samples
already span) and is none of the samples later stages read (the report's first sample, the
accuracy steps' first `accuracy_samples`) leaves ptq, quantize, report and compile as they were —
and what they published equals a cold run on the new files.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from engine.pipeline import Engine
from engine.pipeline.cache import StageCache, content_digest
from tests.pipeline.test_incremental import CONFIG, run_ok

LATER = ("ptq", "quantize", "report", "compile")
ARTEFACTS = ("tiny_calibrated_model.onnx", "tiny_ptq_model.onnx", "tiny_quantized_model.bc", "tiny_node_info.csv",
             "tiny_quant_info.json")


def samples(folder, n: int = 10) -> list:
    """n files; the last is a copy of sample 5, so making it a copy of sample 6 adds no new values."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    paths = [folder / f"s{i:02d}.npy" for i in range(n)]
    for path in paths[:-1]:
        np.save(path, rng.uniform(0, 255, (1, 3, 8, 8)).astype(np.float32))
    shutil.copyfile(paths[5], paths[-1])
    return paths


def test_a_file_that_moves_no_threshold_reruns_nothing_after_calibrate(project):
    paths = samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    shutil.copyfile(paths[6], paths[-1])  # new bytes in one file, no value outside the others' ranges
    again = run_ok(engine, cfg)
    assert again.stage("calibrate").status == "ran"
    assert again.stage("calibrate").reason == "1 of 10 calibration files changed"
    assert [again.stage(s).status for s in LATER] == ["reused"] * 4
    assert [again.stage(s).key for s in LATER] == [first.stage(s).key for s in LATER]
    published = {name: (project.root / "model_output" / name).read_bytes() for name in ARTEFACTS}

    shutil.rmtree(project.root / "model_output")  # a cold run on the same files gives the same artefacts
    fresh = run_ok(Engine(), cfg)
    assert fresh.ran == ["config", "parse", "optimize", "calibrate", *LATER]
    assert json.loads(json.dumps(fresh.results["report"])) == again.results["report"]
    for name in ARTEFACTS:
        assert (project.root / "model_output" / name).read_bytes() == published[name], name


def test_a_file_that_moves_a_threshold_reruns_the_later_stages(project):
    paths = samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    np.save(paths[-1], np.load(paths[-1]) * 1.5)  # a wider range: new thresholds
    again = run_ok(engine, cfg)
    assert [again.stage(s).status for s in ("calibrate", *LATER)] == ["ran"] * 5
    assert again.stage("ptq").reason == "upstream calibrate changed"
    assert again.results["report"]["nodes"] != first.results["report"]["nodes"]


def test_an_entry_written_without_an_output_digest_gets_one(tmp_path):
    """Entries committed before output digests existed: the digest is taken from their files."""
    cache = StageCache(tmp_path)
    tmp = cache.new_temp("parse")
    (tmp / "model.onnx").write_text("m")
    entry = cache.commit("parse", "k" * 64, tmp, {"x": 1})
    stored = cache.outputs(entry)
    meta = json.loads((entry / "meta.json").read_text())
    del meta["outputs"]
    (entry / "meta.json").write_text(json.dumps(meta))
    assert StageCache(tmp_path).outputs(entry) == stored == content_digest(entry, ["model.onnx"])


def test_output_digest_of_json_leaves_out_timings(tmp_path):
    """accuracy.json records how long mixed precision searched: not something a later stage reads."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "accuracy.json").write_text(json.dumps({"node_info": {}, "mixed_precision": {"seconds": 0.01, "met": True}}))
    (b / "accuracy.json").write_text(json.dumps({"mixed_precision": {"met": True, "seconds": 0.03}, "node_info": {}},
                                                indent=1))
    assert content_digest(a, ["accuracy.json"]) == content_digest(b, ["accuracy.json"])
    (b / "accuracy.json").write_text(json.dumps({"node_info": {"n": "int16"}, "mixed_precision": {"met": True}}))
    assert content_digest(a, ["accuracy.json"]) != content_digest(b, ["accuracy.json"])


def test_only_stages_read_by_later_ones_record_an_output_digest(project):
    """compile's outputs feed no stage: no digest is taken of its .hbm and reports at commit."""
    samples(project.root / "cal")
    report = run_ok(Engine(), project.config(CONFIG))
    cache = project.root / "model_output" / ".hb_cache"
    metas = {s: json.loads((cache / s / report.stage(s).key / "meta.json").read_text())
             for s in ("calibrate", "report", "compile")}
    assert "outputs" in metas["calibrate"] and "outputs" in metas["report"] and "outputs" not in metas["compile"]
    entry = cache / "compile" / report.stage("compile").key
    assert StageCache(cache).outputs(entry) == content_digest(entry, metas["compile"]["files"])


def test_an_artefact_changed_in_working_dir_is_published_again(project):
    """Publishing skips files this engine copied and nobody touched since; an edited one is restored."""
    samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    csv = project.root / "model_output" / "tiny_node_info.csv"
    published = csv.read_bytes()
    csv.write_bytes(b"edited by hand\n")
    run_ok(engine, cfg)
    assert csv.read_bytes() == published
