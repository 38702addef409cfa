"""A warm engine's compiler_parameters edits (issue #8) give what a cold engine gives on the same config.

The compile stage and the pipeline around it keep what an edit would read or derive again: the
parsed upstream inputs (`engine.stages.compile.upstream_inputs`), the estimate's candidate plans, the
`.bc`'s runtime I/O specs, each stage entry's meta.json (`StageCache`), the publisher's record and entry
hashes. After every edit of a sequence, and after a calibration change that gives a new `.bc`, the warm
engine's artefacts are compared with those of a fresh engine (process-wide memos cleared, no stage
cache) on the same folder: byte for byte but the `.hbm`'s build timestamp. The latency measurement is
replaced by a fixed answer in both, so its numbers (which no two measurements share) cannot hide a
difference in the perf report.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from engine.compile.hbm import read_hbm
from engine.pipeline import Engine
from engine.pipeline.recent import Recent
from tests.pipeline.test_incremental import CONFIG, run_ok, write_samples

ARTEFACTS = ("tiny.hbm", "tiny_advice.json", "tiny.json", "tiny.html", "tiny_quantized_model.bc")
MEASURED = {"latency (ms)": 1.25, "min latency (ms)": 1.0, "FPS": 800.0, "runs": 3, "threads": 1,
            "machine": "test", "processor": "test", "onnxruntime": "test"}
EDITS = [("optimize_level: O2", "optimize_level: O1"), ("compile_mode: latency", "compile_mode: bandwidth"),
         ("optimize_level: O1", "optimize_level: O0"),
         ("compile_mode: bandwidth", "compile_mode: balance\n  balance_factor: 30\n  advice: 0.001")]


def clear_process_memos() -> int:
    """Empty every module-level `Recent` of the engine's loaded modules (what a new process starts without)."""
    cleared = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("engine."):
            for value in list(vars(module).values()):
                if isinstance(value, Recent):
                    value.clear()
                    cleared += 1
    return cleared


def snapshot(out) -> dict[str, object]:
    """The compile artefacts' bytes; the `.hbm` as (manifest without its build timestamp, program bytes)."""
    got: dict[str, object] = {n: (out / n).read_bytes() for n in ARTEFACTS if n != "tiny.hbm"}
    hbm = read_hbm(out / "tiny.hbm")
    manifest = json.loads(json.dumps(hbm.manifest))
    manifest["build"].pop("timestamp")
    got["tiny.hbm"] = (manifest, hbm.program)
    return got


def cold_snapshot(project, cfg) -> dict[str, object]:
    """The artefacts a fresh engine writes for `cfg` (process memos cleared, working_dir moved aside and
    put back afterwards, so the warm engine's cache is as it was)."""
    out = project.root / "model_output"
    aside = project.root / "model_output.warm"
    out.rename(aside)
    try:
        assert clear_process_memos() >= 5
        report = run_ok(Engine(), cfg)
        assert "compile" in report.ran
        return snapshot(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        aside.rename(out)


@pytest.fixture
def fixed_latency(monkeypatch):
    measured = []

    def measure(program, threads=1, runs=20, **kwargs):
        measured.append(1)
        return dict(MEASURED, threads=threads)

    monkeypatch.setattr("engine.compile.perf.measure_latency", measure)
    return measured


def test_every_compiler_edit_of_a_warm_engine_gives_the_cold_artefacts(project, fixed_latency):
    samples = write_samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    out = project.root / "model_output"
    text = CONFIG
    seen = set()
    for old, new in EDITS:
        text = text.replace(old, new)
        project.config(text)
        warm = run_ok(engine, cfg)
        assert warm.ran == ["config", "compile"], warm.ran
        got = snapshot(out)
        assert got == cold_snapshot(project, cfg), f"after {new!r}"
        seen.add(got["tiny.hbm"][0]["program"]["sha256"])
    assert len(seen) == 2  # the O1 and the O0 program: the edits between them build the same one again

    import numpy as np  # a calibration change that moves thresholds: a new `.bc`, read again by compile

    np.save(samples[0], np.full((1, 3, 8, 8), 255.0, np.float32))
    moved = run_ok(engine, cfg)
    assert {"quantize", "compile"} <= set(moved.ran)
    after = snapshot(out)
    assert after["tiny_quantized_model.bc"] != got["tiny_quantized_model.bc"]
    assert after == cold_snapshot(project, cfg)


def test_the_compile_stage_parses_its_inputs_once_per_upstream_entry(project, fixed_latency, monkeypatch):
    """A compiler edit reads the same optimize / quantize / calibrate files: they are not parsed again;
    a new `.bc` (calibration moved a threshold) is."""
    import numpy as np

    import engine.stages.compile as compile_stage

    samples = write_samples(project.root / "cal")
    cfg = project.config(CONFIG)
    engine = Engine()
    run_ok(engine, cfg)
    parsed = []
    real = compile_stage.UpstreamInputs

    def counted(*args):
        parsed.append(args[2])  # the .bc's sha256
        return real(*args)

    monkeypatch.setattr(compile_stage, "UpstreamInputs", counted)
    project.config(CONFIG.replace("compile_mode: latency", "compile_mode: bandwidth"))
    assert run_ok(engine, cfg).ran == ["config", "compile"]
    assert parsed == []
    np.save(samples[0], np.full((1, 3, 8, 8), 255.0, np.float32))
    assert "compile" in run_ok(engine, cfg).ran
    assert len(parsed) == 1
    bc = (project.root / "model_output" / "tiny_quantized_model.bc").read_bytes()
    import hashlib

    assert parsed[0] == hashlib.sha256(bc).hexdigest()
