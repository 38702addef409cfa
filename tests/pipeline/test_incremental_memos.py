"""Incremental re-runs, part 2 (issue #8): each model runs once per report, and the calibration-data
check is memoised per sample by content (engine.accuracy.checks).

Runs are counted by wrapping the function that would run the model again.
"""

from __future__ import annotations

import shutil

import onnx
import pytest

from engine.pipeline import Engine
from tests.pipeline.test_incremental import CONFIG, memo, run_ok, write_samples

BATCH2 = CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n  input_batch: 2")
BATCH1 = CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n  input_batch: 1")


@pytest.fixture
def tiny(project):
    write_samples(project.root / "cal")
    return project


def float_runs(monkeypatch) -> list[str]:
    """Records 'float' / 'calibrated' for every engine.similarity.run_model call the report stage
    makes from now on (other stages run models too: the `.bc` check, the input conversion's)."""
    import traceback

    import engine.similarity as similarity

    calls: list[str] = []
    real = similarity.run_model

    def counting(model: onnx.ModelProto, *args, **kwargs):
        if any(f.filename.endswith("engine/stages/report.py") for f in traceback.extract_stack()):
            fake_quant = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            calls.append("calibrated" if fake_quant else "float")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(similarity, "run_model", counting)
    return calls


def test_report_runs_the_float_model_at_most_once_with_or_without_the_comparison_memo(tiny, monkeypatch):
    cfg = tiny.config(CONFIG)
    engine = Engine()
    first = run_ok(engine, cfg)
    shutil.rmtree(tiny.root / "model_output" / ".hb_cache" / "memo" / "calibrated_similarity")
    calls = float_runs(monkeypatch)
    tiny.config(BATCH2)  # quantize, compile and report re-run; calibrate is reused
    missed = run_ok(engine, cfg)
    assert missed.stage("calibrate").status == "reused" and missed.stage("report").status == "ran"
    # the comparison was computed again from the warm engine: the float tensors of the report sample (same
    # optimized model, same sample) and every calibrated row (same graph above each tensor: RowMemo), so
    # neither model ran
    assert calls == []
    assert len(memo(tiny, "calibrated_similarity")) == 1
    calibrate = [e.name[:16] for e in (tiny.root / "model_output" / ".hb_cache" / "calibrate").iterdir()]
    assert memo(tiny, "calibrated_similarity")[0][:16] in calibrate  # pruned with the calibrate entry
    calls.clear()
    tiny.config(BATCH1)
    hit = run_ok(engine, cfg)
    assert hit.stage("report").status == "ran" and calls == []
    calls.clear()
    shutil.rmtree(tiny.root / "model_output" / ".hb_cache" / "report")
    cold = run_ok(Engine(), cfg)  # a fresh engine keeps no tensors: the float model runs once, the comparison is a memo hit
    assert cold.stage("report").status == "ran" and calls == ["float"]
    for a, b, c in zip(first.results["report"]["nodes"], missed.results["report"]["nodes"],
                       hit.results["report"]["nodes"], strict=True):
        assert a["calibrated_cosine"] == b["calibrated_cosine"] == c["calibrated_cosine"]
        assert a["quantized_cosine"] == pytest.approx(c["quantized_cosine"], abs=1e-6)
    assert all(o["quantized_cosine"] is not None and o["quantized_cosine"] > 0.9
               for o in hit.results["report"]["outputs"])


def test_report_opens_one_integer_session(tiny, monkeypatch):
    import engine.quantize.integer as integer

    cfg = tiny.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    opened: list[str] = []
    real = integer.open_session

    def counting(program, *args, **kwargs):
        opened.append(kwargs.get("what") or (args[1] if len(args) > 1 else ""))
        return real(program, *args, **kwargs)

    monkeypatch.setattr(integer, "open_session", counting)
    monkeypatch.setattr("engine.runtime.session.open_session", counting)
    tiny.config(BATCH2)
    again = run_ok(engine, cfg)
    assert again.stage("report").status == "ran"
    assert opened.count("the integer program") == 1


def test_data_check_runs_again_on_the_changed_sample_only(project, monkeypatch):
    """6 files, the check reads the first 4: a change to the 6th runs no check, a change to the 2nd
    runs that sample's readings; the check after the 6th changed is the first run's, number for number."""
    import json
    import traceback

    import numpy as np

    import engine.accuracy.sessions as sessions

    paths = write_samples(project.root / "cal", n=6)
    cfg = project.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    assert len(memo(project, "data_checks")) == 4
    optimize = [e.name[:16] for e in (project.root / "model_output" / ".hb_cache" / "optimize").iterdir()]
    assert all(name[:16] in optimize for name in memo(project, "data_checks"))  # pruned with the optimize entry
    readings: list[int] = []
    real = sessions.run_outputs

    def counting(*args, **kwargs):
        if any(f.filename.endswith("engine/accuracy/checks.py") for f in traceback.extract_stack()):
            readings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "run_outputs", counting)
    np.save(paths[5], np.load(paths[5])[..., ::-1].copy())
    again = run_ok(engine, cfg)
    assert again.stage("calibrate").status == "ran" and readings == []
    np.save(paths[1], np.load(paths[1])[..., ::-1].copy())
    third = run_ok(engine, cfg)
    assert third.stage("calibrate").status == "ran"
    # channels swapped only: the sample as given is mixed precision's float reference, passed to the check
    # (normalized twice is skipped: samples not in its range)
    assert len(readings) == 1
    assert len(memo(project, "data_checks")) == 5
    written = [json.loads(p.read_text())["checks"] for p in (project.root / "model_output" / ".hb_cache").rglob(
        "accuracy.json")]
    assert len(written) == 3 and len({json.dumps(c) for c in written}) == 2  # the 6th file's run = the first's
    assert [c["variant"] for c in written[0]] == ["channels swapped"]
