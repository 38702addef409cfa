"""The calibrate stage in a warm engine (issue #8): after one calibration file changes, the stage
reruns that sample's forward pass only, and builds nothing it already has: no observation session
for a small model, no decode of the unchanged samples' statistics. Thresholds equal a cold run's."""

from __future__ import annotations

import json

import numpy as np

from engine.calibration import Observer, SampleStats
from engine.pipeline import Engine
from tests.pipeline.test_calibrate_stage import CONFIG, write_samples


def thresholds(root, working_dir: str) -> dict:
    runs = (root / working_dir / ".hb_cache" / "calibrate").glob("*/thresholds.json")
    return json.loads(max(runs, key=lambda p: p.stat().st_mtime_ns).read_text())


def test_one_changed_file_builds_no_session_and_decodes_no_kept_sample(project, monkeypatch):
    cal = write_samples(project.root, n=6)
    cfg = project.config(CONFIG)
    engine = Engine()
    assert engine.run(cfg, until="calibrate").ok
    sessions, decoded = [], []
    real_session, real_decode = Observer._session, SampleStats.from_bytes
    monkeypatch.setattr(Observer, "_session", lambda self, *a, **k: sessions.append(1) or real_session(self, *a, **k))
    monkeypatch.setattr(SampleStats, "from_bytes", classmethod(lambda cls, b: decoded.append(1) or real_decode(b)))
    np.full((1, 3, 8, 8), 7, np.uint8).tofile(cal / "s03.rgb")
    warm = engine.run(cfg, until="calibrate")
    assert warm.ok and warm.results["calibrate"]["computed"] == 1 and warm.results["calibrate"]["reused"] == 5
    assert sessions == [] and decoded == []
    # the same thresholds as a cold engine over the same files (which decodes and builds everything)
    cold_cfg = project.config(CONFIG.replace("working_dir: model_output", "working_dir: cold"), name="cold.yaml")
    assert Engine().run(cold_cfg, until="calibrate").ok
    assert sessions and thresholds(project.root, "cold") == thresholds(project.root, "model_output")


def test_a_large_model_observer_is_not_kept(project, monkeypatch):
    """A model whose observed tensors exceed the budget gets a new observer per run (its session's
    memory arena would stay at one sample's observed size)."""
    import engine.stages.calibrate as calibrate

    monkeypatch.setattr(calibrate, "WARM_OBSERVER_VALUES", 10)
    write_samples(project.root, n=3)
    engine = Engine()
    assert engine.run(project.config(CONFIG), until="calibrate").ok
    assert "calibration_observer" not in engine.warm
