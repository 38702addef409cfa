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
    monkeypatch.setattr(methods, "_kl_rows", lambda h, c, *rest: rows.append(len(c)) or real(h, c, *rest))
    got = methods.kl_divergences(hist, candidates)
    assert got.tobytes() == every.tobytes()
    assert rows and rows[0] < 0.9 * len(candidates)  # the repeats were not computed
    unordered = np.array([2048, 950, 951, 952, 129, 1000, 256, 255])  # only a run of consecutive candidates repeats
    assert methods.kl_divergences(hist, unordered).tobytes() == real(hist, unordered, 128).tobytes()


def _histograms() -> list[np.ndarray]:
    """Smooth, gappy, sparse, zero-tailed, spiky and flat histograms (ties and empty stretches)."""
    rng = np.random.default_rng(5)
    laplace = tensor_stats(rng.laplace(size=200_000).astype(np.float32), channel_axis=None).hist.astype(np.float64)
    gappy = laplace.copy()
    gappy[900:960] = 0
    sparse = laplace * (rng.random(2048) < 0.2)
    zero_tail = np.zeros(2048)
    zero_tail[:1500] = np.floor(1e5 * np.exp(-np.arange(1500) / 200.0)) + rng.integers(0, 3, 1500)
    spiky = np.zeros(2048)
    spiky[rng.choice(2048, 40, replace=False)] = rng.integers(1, 1000, 40)
    pixels = np.zeros(2048)  # a uint8 image / 255: 256 values, every 8th bin
    pixels[::8] = rng.integers(0, 500, 256)
    flat = np.ones(2048)
    outlier = np.eye(1, 2048, 2047)[0] * 5
    return [laplace, gappy, sparse, zero_tail, spiky, pixels, flat, outlier, laplace * 1e6]


def test_kl_argmin_is_the_exact_forms_argmin_and_value():
    """The factored estimate only narrows the candidates: the chosen position and its KL are those of
    `kl_divergences` over every candidate (first of equals), bit for bit, on every kind of histogram."""
    grids = [np.arange(128, 2049), np.arange(128, 2049, 7), np.array([2048, 129, 1000, 256, 255]), np.array([128])]
    for hist in _histograms():
        for candidates in grids:
            every = methods.kl_divergences(hist, candidates)
            best, value = methods.kl_argmin(hist, candidates)
            assert best == int(np.argmin(every)) and value == every[best], (hist[:4], candidates[:4])


def test_kl_estimates_equal_the_exact_form_up_to_rounding():
    for hist in _histograms():
        candidates = np.arange(128, 2049)
        exact = methods.kl_divergences(hist, candidates)
        approx, size = methods.kl_estimates(hist, candidates)
        assert np.array_equal(np.isinf(approx), np.isinf(exact))
        finite = np.isfinite(exact)
        assert np.max(np.abs(approx[finite] - exact[finite])) < 1e-12 * (1 + size) < methods.KL_MARGIN


def test_kl_argmin_evaluates_few_candidates_exactly(monkeypatch):
    hist = _histograms()[0]
    rows = []
    real = methods._kl_rows
    monkeypatch.setattr(methods, "_kl_rows", lambda h, c, *rest: rows.append(len(c)) or real(h, c, *rest))
    methods.kl_argmin(hist, np.arange(128, 2049))
    assert sum(rows) < 50  # of 1921 candidates
