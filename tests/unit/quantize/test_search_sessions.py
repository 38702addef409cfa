"""`default`'s scoring session kept between searches (issue #8: after one calibration file changed, every
threshold moves, but the scoring model, whose scales are all fed, stays the same)."""

from __future__ import annotations

import numpy as np
import pytest

import engine.accuracy.sessions as sessions_mod
from engine.calibration import merge_samples, observe
from engine.pipeline.recent import Recent
from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.planner import QuantOptions, make_plan, plan_tensors
from engine.quantize.search import CandidateScorer, _acts, candidates
from engine.similarity import mean_output_cosine, run_model
from tests.unit.quantize.test_search import conv_model, outlier_samples


def own_model_cosines(model, acts, samples) -> np.ndarray:
    calibrated = build_calibrated_model(model, make_plan(model, acts))
    return np.array([mean_output_cosine([run_model(model, s)], [run_model(calibrated, s)], ["y"]) for s in samples])


@pytest.fixture
def opened(monkeypatch) -> list[int]:
    """Sessions the scorer opens (its float references come from run_model here, not from it)."""
    count: list[int] = []
    real = sessions_mod.quiet_session
    monkeypatch.setattr(sessions_mod, "quiet_session", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


def test_a_kept_session_scores_new_thresholds_as_their_own_models_do(opened):
    model = conv_model()
    samples = outlier_samples()
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    tried = {name: _acts(found) for name, found in candidates(merged).items()}
    scaled = {name: {t: _acts({t: 1.3 * q.threshold}, q.method)[t] for t, q in acts.items()}
              for name, acts in tried.items()}  # another calibration: every threshold moved
    kept = Recent(2)
    reference = [run_model(model, s) for s in samples[:3]]
    first = CandidateScorer(model, samples[:3], QuantOptions(), reference, sessions=kept).sample_cosines(tried)
    second = CandidateScorer(model, samples[:3], QuantOptions(), reference, sessions=kept).sample_cosines(scaled)
    assert len(opened) == 1 and len(kept) == 1  # the second search found the first one's session
    for got, candidates_ in ((first, tried), (second, scaled)):
        for name, acts in candidates_.items():
            np.testing.assert_array_equal(got[name], own_model_cosines(model, acts, samples[:3]))
    assert not np.array_equal(first["max"], second["max"])  # the fed scales did change the scores
    CandidateScorer(model, samples[:3], QuantOptions(), reference).sample_cosines(tried)
    assert len(opened) == 2 and len(kept) == 1  # no `sessions`: a session of its own, not kept


def test_a_warm_engine_scores_the_next_calibration_in_the_kept_session(tmp_path, monkeypatch):
    """The bundled digits example (calibration_type default): after one calibration file changed, the
    search's model is the last one's (no threshold in its bytes, not even in a node's doc string)."""
    import shutil

    from bench.bench_live import flip
    from engine.pipeline import Engine
    from engine.quantize import search
    from tests.unit.test_warm_vs_cold import EXAMPLE

    shutil.copytree(EXAMPLE, tmp_path / "digits", ignore=shutil.ignore_patterns("model_output", "*.py", "heldout.npz"))
    config = tmp_path / "digits" / "digits.hb.yaml"
    built: list[tuple[int, int]] = []  # sessions kept before and after each search's
    real = search.CandidateScorer._session

    def spy(self, model):
        before = len(self.sessions)
        session = real(self, model)
        built.append((before, len(self.sessions)))
        return session

    monkeypatch.setattr(search.CandidateScorer, "_session", spy)
    engine = Engine()
    assert engine.run(config).ok
    files = sorted((config.parent / "calibration_data").iterdir())
    thresholds = []
    for i in range(2):
        flip(files[3 + i], i)
        report = engine.run(config)
        assert report.ok and report.results["calibrate"]["computed"] == 1
        thresholds.append((config.parent / "model_output" / ".hb_cache" / "calibrate" / report.stage("calibrate").key
                           / "thresholds.json").read_text())
    assert built == [(0, 1), (1, 1), (1, 1)]  # the full run built it; both changed files found it kept
    assert len(engine.warm["search_sessions"]) == 1 and thresholds[0] != thresholds[1]
