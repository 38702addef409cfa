"""A warm engine decodes each calibration sample the search and the accuracy steps read once per content."""

from __future__ import annotations

import numpy as np
import pytest

from engine.calibration import data
from engine.pipeline import Engine
from engine.stages.calibrate import LoadedSamples
from tests.pipeline.test_calibrate_stage import CONFIG, write_samples


def test_unchanged_samples_are_not_read_again(project, monkeypatch):
    cal = write_samples(project.root, n=10)
    cfg = project.config(CONFIG.replace("calibration_type: max", "calibration_type: default"))
    engine = Engine()
    assert engine.run(cfg, until="calibrate").ok
    reads = []
    real = data._read_bytes
    monkeypatch.setattr(data, "_read_bytes", lambda p, k: reads.append(p.name) or real(p, k))
    changed = sorted(cal.iterdir())[2]
    raw = np.fromfile(changed, np.uint8)
    np.roll(raw, 1).tofile(changed)
    run = engine.run(cfg, until="calibrate")
    assert run.ok and run.results["calibrate"]["computed"] == 1
    assert reads == [changed.name] * reads.count(changed.name) and reads  # only the changed file is read
    kept = engine.warm["calibration_loaded_samples"]
    assert all(not v.flags.writeable for s in kept._kept.values() for v in s.values())


def test_the_budget_keeps_the_newest_samples():
    kept = LoadedSamples(budget=3 * 400)
    for k in range(5):
        kept.put(f"s{k}", {"x": np.zeros(100, np.float32)})
    assert [kept.get(f"s{k}") is not None for k in range(5)] == [False, False, True, True, True]
    big = kept.put("big", {"x": np.zeros(1000, np.float32)})  # larger than the budget: served, not kept
    assert kept.get("big") is None and big["x"].size == 1000 and kept.get("s4") is not None
    with pytest.raises(ValueError):
        kept.get("s4")["x"][0] = 1.0
