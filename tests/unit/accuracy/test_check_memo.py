"""The calibration-data check memoised per sample by content (issue #8): a hit runs nothing, one
changed sample re-runs that sample only, and the checks are the ones computed without a memo."""

from __future__ import annotations

import numpy as np
import pytest

import engine.accuracy.sessions as sessions
from engine.accuracy.checks import CheckMemo, check_calibration_data
from tests.unit.accuracy.test_checks import SPEC, red_detector, red_photos


def counted_runs(monkeypatch) -> list[int]:
    """Counts float runs (one per sample and reading) from now on."""
    calls: list[int] = []
    real = sessions.run_outputs

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "run_outputs", counting)
    return calls


def keys(n: int, changed: int | None = None) -> list[str]:
    return [f"sample-{i}{'-new' if i == changed else ''}" for i in range(n)]


def test_memo_gives_the_checks_computed_without_it_and_a_hit_runs_nothing(tmp_path, monkeypatch):
    model, photos = red_detector(), red_photos()
    bgr = [{"x": np.ascontiguousarray(p["x"][:, ::-1])} for p in photos]
    plain = check_calibration_data(model, bgr, [SPEC])
    assert any(c.suspicious for c in plain)  # a memo must keep a warning, not only silence
    memo = CheckMemo(tmp_path, "model-key", keys(4))
    assert check_calibration_data(model, bgr, [SPEC], memo=memo) == plain
    assert len(list(tmp_path.glob("*.json"))) == 4
    calls = counted_runs(monkeypatch)

    def no_session(*args, **kwargs):
        raise AssertionError("a session was opened although every sample was memoised")

    monkeypatch.setattr(sessions, "quiet_session", no_session)
    assert check_calibration_data(model, bgr, [SPEC], memo=memo) == plain
    assert calls == []


def test_one_changed_sample_is_run_again_alone(tmp_path, monkeypatch):
    model, photos = red_detector(), red_photos()
    check_calibration_data(model, photos, [SPEC], memo=CheckMemo(tmp_path, "model-key", keys(4)))
    photos[2] = red_photos(1, seed=7)[0]
    calls = counted_runs(monkeypatch)
    got = check_calibration_data(model, photos, [SPEC], memo=CheckMemo(tmp_path, "model-key", keys(4, changed=2)))
    readings = 1 + len([c for c in got])  # as given + each variant checked
    assert len(calls) == readings and readings >= 2
    assert got == check_calibration_data(model, photos, [SPEC])
    assert len(list(tmp_path.glob("*.json"))) == 5


@pytest.mark.parametrize("other", ["model", "spec"])
def test_another_model_or_spec_is_not_served_from_the_memo(tmp_path, monkeypatch, other):
    model, photos = red_detector(), red_photos()
    check_calibration_data(model, photos, [SPEC], memo=CheckMemo(tmp_path, "model-key", keys(4)))
    calls = counted_runs(monkeypatch)
    spec = {**SPEC, "input_type_train": "bgr"} if other == "spec" else SPEC
    check_calibration_data(model, photos, [spec],
                           memo=CheckMemo(tmp_path, "other-key" if other == "model" else "model-key", keys(4)))
    assert len(calls) >= 4


def test_a_torn_entry_is_computed_again(tmp_path):
    model, photos = red_detector(), red_photos()
    memo = CheckMemo(tmp_path, "model-key", keys(4))
    first = check_calibration_data(model, photos, [SPEC], memo=memo)
    for p in tmp_path.glob("*.json"):
        p.write_text('{"given": [0.1')
    assert check_calibration_data(model, photos, [SPEC], memo=memo) == first
    assert all(p.read_text().endswith("}") for p in tmp_path.glob("*.json"))


def test_given_outputs_are_used_for_the_given_reading(tmp_path, monkeypatch):
    model, photos = red_detector(), red_photos()
    from engine.similarity import run_model

    given = [run_model(model, p) for p in photos]
    calls = counted_runs(monkeypatch)
    got = check_calibration_data(model, photos, [SPEC], given=given, memo=CheckMemo(tmp_path, "k", keys(4)))
    assert len(calls) == 4 * len(got)  # only the variants ran
