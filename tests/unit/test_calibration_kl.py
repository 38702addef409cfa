"""KL candidates that repeat their predecessor (empty bins i − 1 and i − 2, the same level size) are
computed once: the same bits as computing every candidate, on histograms with empty stretches."""

from __future__ import annotations

import numpy as np

import engine.calibration.methods as methods
from engine.calibration import tensor_stats


def test_repeated_candidates_are_computed_once_with_the_same_bits(monkeypatch):
    rng = np.random.default_rng(3)
    hist = tensor_stats(rng.laplace(size=200_000).astype(np.float32), channel_axis=None).hist.astype(np.float64)
    hist[900:960] = 0
    hist[1500:] *= rng.random(548) < 0.2  # a sparse tail
    candidates = np.arange(128, 2049)
    every = methods._kl_rows(hist, candidates, 128)
    rows = []
    real = methods._kl_rows
    monkeypatch.setattr(methods, "_kl_rows", lambda h, c, levels: rows.append(len(c)) or real(h, c, levels))
    got = methods.kl_divergences(hist, candidates)
    assert got.tobytes() == every.tobytes()
    assert rows and rows[0] < 0.9 * len(candidates)  # the repeats were not computed
    unordered = np.array([2048, 950, 951, 952, 129, 1000, 256, 255])  # only a run of consecutive candidates repeats
    assert methods.kl_divergences(hist, unordered).tobytes() == real(hist, unordered, 128).tobytes()
