"""Float references: one run per (model, sample) content, shared by every step that asks."""

from __future__ import annotations

import numpy as np
import pytest

from engine.accuracy import sessions
from engine.accuracy.sessions import FloatOutputs, References, quiet_session, run_outputs
from tests.unit.accuracy.acc_models import outlier_chain


def inputs(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


@pytest.fixture
def counted(monkeypatch):
    """Sessions opened, and a fresh memo so other tests' models do not interfere."""
    opened = []

    def counting(model, threads=None):
        opened.append(model)
        return quiet_session(model, threads)

    monkeypatch.setattr(sessions, "quiet_session", counting)
    monkeypatch.setattr(sessions, "FLOAT_OUTPUTS", FloatOutputs())
    # no float model's session kept from another test
    monkeypatch.setattr(sessions, "_float_sessions", sessions.Recent(sessions.FLOAT_SESSIONS_KEPT))
    return opened


def test_references_of_the_same_samples_run_the_model_once(counted, monkeypatch):
    model, samples = outlier_chain(), inputs(6)
    first = References(model, samples[:4]).values  # the threshold search's samples
    assert len(counted) == 1
    runs = []
    real = sessions.run_outputs
    monkeypatch.setattr(sessions, "run_outputs", lambda *a, **k: runs.append(1) or real(*a, **k))
    again = References(model, [{k: v.copy() for k, v in s.items()} for s in samples]).values  # equal content
    assert len(runs) == 2  # the two samples not seen yet run ...
    assert len(counted) == 1  # ... in the float model's kept session (a small model's: `float_session`)
    monkeypatch.setattr(sessions, "run_outputs", real)
    session = quiet_session(model)
    for got, s in zip(again, samples, strict=True):
        want = run_outputs(session, s)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert all(a[k] is b[k] for a, b in zip(first, again[:4]) for k in a)  # the same arrays, not recomputed
    with pytest.raises(ValueError):
        next(iter(first[0].values()))[...] = 0  # read-only: no step can alter another's reference
    assert len(References(model, samples).values) == 6
    assert len(counted) == 1  # everything known: no run at all


def test_another_model_replaces_the_kept_outputs_and_the_budget_bounds_them(counted, monkeypatch):
    a, b, samples = outlier_chain(seed=0), outlier_chain(seed=1), inputs(3)
    for model, some in ((a, samples), (b, samples), (a, samples[:1])):
        assert len(References(model, some).values) == len(some)
    assert len(counted) == 2  # b replaced a's outputs; a's session was kept (two models' are)
    monkeypatch.setattr(sessions, "KEPT_MODEL_BYTES", 16)  # a large model's session is not kept
    assert len(References(a, samples[1:2]).values) == 1
    assert len(counted) == 3
    small = FloatOutputs(budget=1)
    for k in range(3):
        small.put("m", f"s{k}", {"y": np.zeros(4, np.float32)})
    assert small.get("m", "s2") is not None and small.get("m", "s0") is None and small.get("other", "s2") is None


def test_the_first_outputs_are_computed_without_the_others(counted, monkeypatch):
    """The data checks read 4 samples' outputs before mixed precision knows it needs all 8."""
    runs = []
    real = sessions.run_outputs
    monkeypatch.setattr(sessions, "run_outputs", lambda *a, **k: runs.append(1) or real(*a, **k))
    model, samples = outlier_chain(), inputs(8)
    refs = References(model, samples)
    head = refs.first(4)
    assert len(head) == 4 and len(runs) == 4 and len(counted) == 1
    assert len(refs.first(2)) == 2 and len(runs) == 4  # already known
    every = refs.values
    assert len(every) == 8 and len(runs) == 8 and len(counted) == 1  # the other 4, in the kept session
    assert all(a[k] is b[k] for a, b in zip(head, every[:4]) for k in a)
    assert refs.first(20) == every  # no more than there are
