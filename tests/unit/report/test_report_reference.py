"""The report stage's float reference (issue #8): a warm engine runs the float model on the report
sample once per (optimized model, sample), never serves it for a changed model or sample, keeps
at most `REFERENCE_BYTES`, and every table it writes equals a cold engine's, number for number.

Float runs are counted by wrapping `engine.similarity.run_model` (tests.pipeline.test_incremental_memos);
the cold engine runs a copy of the project with no cache at all.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from engine.pipeline import Engine
from engine.stages import report
from tests.conftest import conv_relu_model
from tests.pipeline.test_incremental import CONFIG, run_ok, write_samples
from tests.pipeline.test_incremental_memos import float_runs


@pytest.fixture
def tiny(project):
    project.samples = write_samples(project.root / "cal", n=4)  # s00 is the report's (first) sample
    project.cfg = project.config(CONFIG)
    return project


def cold_rows(project, tmp_path_factory) -> dict:
    """The report rows of the project's current files from a new engine in a copy without any cache."""
    copy = tmp_path_factory.mktemp("cold")
    for name in ("model.onnx", "config.yaml"):
        shutil.copy(project.root / name, copy / name)
    shutil.copytree(project.root / "cal", copy / "cal")
    return run_ok(Engine(), copy / "config.yaml").results["report"]


def written(project) -> tuple[str, dict]:
    out = project.root / "model_output"
    return (out / "tiny_node_info.csv").read_text(), json.loads((out / "tiny_quant_info.json").read_text())


def change(path, offset: float = 7.0) -> None:
    np.save(path, np.load(path) * 0.5 + offset)


def test_a_calibration_change_keeping_the_first_sample_reuses_the_float_run(tiny, monkeypatch, tmp_path_factory):
    engine = Engine()
    run_ok(engine, tiny.cfg)
    calls = float_runs(monkeypatch)
    change(tiny.samples[2])
    again = run_ok(engine, tiny.cfg)
    assert again.stage("calibrate").status == "ran" and again.stage("report").status == "ran"
    assert calls == ["calibrated"]  # the float model did not run again
    rows = again.results["report"]
    assert rows == cold_rows(tiny, tmp_path_factory)
    assert all(r["calibrated_cosine"] is not None for r in rows["nodes"])
    assert any(r["quantized_cosine"] is not None for r in rows["nodes"])


def test_a_changed_first_sample_runs_the_float_model_again(tiny, monkeypatch, tmp_path_factory):
    engine = Engine()
    before = run_ok(engine, tiny.cfg).results["report"]
    calls = float_runs(monkeypatch)
    change(tiny.samples[0])
    after = run_ok(engine, tiny.cfg).results["report"]
    assert calls == ["float", "calibrated"]
    assert after == cold_rows(tiny, tmp_path_factory)
    assert [o["cosine"] for o in after["outputs"]] != [o["cosine"] for o in before["outputs"]]


def test_a_changed_model_runs_the_float_model_again(tiny, monkeypatch, tmp_path_factory):
    engine = Engine()
    run_ok(engine, tiny.cfg)
    calls = float_runs(monkeypatch)
    tiny.model(conv_relu_model(seed=5))  # same graph and names, other weights
    after = run_ok(engine, tiny.cfg)
    assert after.stage("report").status == "ran" and calls == ["float", "calibrated"]
    assert after.results["report"] == cold_rows(tiny, tmp_path_factory)
    assert len(engine.warm["float_references"]) == 2  # both fit: the first model's stays for an undo


def test_the_tables_written_equal_a_cold_engines(tiny, monkeypatch, tmp_path_factory):
    """node_info.csv and quant_info.json after a warm re-run are the cold engine's, byte for byte."""
    engine = Engine()
    run_ok(engine, tiny.cfg)
    change(tiny.samples[3], 11.0)
    run_ok(engine, tiny.cfg)
    warm = written(tiny)
    cold_rows(tiny, tmp_path_factory)
    cold_dir = sorted(tmp_path_factory.getbasetemp().glob("cold*"))[-1] / "model_output"
    assert warm == ((cold_dir / "tiny_node_info.csv").read_text(),
                    json.loads((cold_dir / "tiny_quant_info.json").read_text()))


def test_references_beyond_the_budget_are_not_kept(tiny, monkeypatch):
    engine = Engine()
    run_ok(engine, tiny.cfg)
    kept = engine.warm["float_references"]
    (only,) = kept.values()
    assert 0 < only.nbytes < report.REFERENCE_BYTES
    monkeypatch.setattr(report, "REFERENCE_BYTES", only.nbytes - 1)
    calls = float_runs(monkeypatch)
    change(tiny.samples[1])
    run_ok(engine, tiny.cfg)
    assert calls == ["calibrated"] and not kept  # served this run (it was kept before), then dropped
    change(tiny.samples[2])
    run_ok(engine, tiny.cfg)
    assert calls == ["calibrated", "float", "calibrated"] and not kept


def test_a_kept_reference_is_read_only(tiny):
    engine = Engine()
    run_ok(engine, tiny.cfg)
    (reference,) = engine.warm["float_references"].values()
    assert reference and reference.squares  # x·x of the rows, summed once
    for value in reference.values():
        with pytest.raises(ValueError):
            value.reshape(-1)[0] = 1.0


def test_an_optimized_model_changed_in_place_is_not_served(tiny, monkeypatch):
    """The key is the optimized model file's content, not its cache path: a file rewritten in
    place (other weights, same path) is run again."""
    engine = Engine()
    run_ok(engine, tiny.cfg)
    entry = next((tiny.root / "model_output" / ".hb_cache" / "optimize").iterdir())
    model = onnx.load(str(entry / "model.onnx"))
    weight = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 4)
    weight.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(entry / "model.onnx"))
    calls = float_runs(monkeypatch)
    change(tiny.samples[2])  # calibrate re-runs on the rewritten model, so does the report
    run_ok(engine, tiny.cfg)
    assert calls == ["float", "calibrated"]


def test_a_reference_over_the_budget_evicts_no_smaller_one(tiny, monkeypatch, tmp_path):
    """Two configs in one engine: the 8×8 model's reference stays when the 16×16 model's is too
    large to keep, and it is evicted (oldest first) when the larger one fits but both do not."""
    big = tmp_path / "big"
    big.mkdir()
    onnx.save(conv_relu_model(shape=(1, 3, 16, 16)), str(big / "model.onnx"))
    rng = np.random.default_rng(3)
    (big / "cal").mkdir()
    for i in range(3):
        np.save(big / "cal" / f"s{i:02d}.npy", rng.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32))
    big_cfg = big / "config.yaml"
    big_cfg.write_text(CONFIG.replace("1x3x8x8", "1x3x16x16"))
    engine = Engine()
    run_ok(engine, tiny.cfg)
    kept = engine.warm["float_references"]
    (small,) = kept.values()
    monkeypatch.setattr(report, "REFERENCE_BYTES", 2 * small.nbytes)  # the 16×16 one is ~4× as large
    run_ok(engine, big_cfg)
    assert list(kept.values()) == [small]
    calls = float_runs(monkeypatch)
    change(tiny.samples[2])
    run_ok(engine, tiny.cfg)
    assert calls == ["calibrated"]
    monkeypatch.setattr(report, "REFERENCE_BYTES", int(4.5 * small.nbytes))  # one of each does not fit
    change(big / "cal" / "s00.npy")  # the first sample: a new reference, kept; the small one goes
    run_ok(engine, big_cfg)
    (large,) = kept.values()
    assert 2 * small.nbytes < large.nbytes <= 4.5 * small.nbytes
