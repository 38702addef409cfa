"""KL candidates over a histogram whose last bins are empty (review 2, mutant Q4): for a candidate i
past the last non-empty bin, P_i has no mass in its last level (nothing clipped, no counts there),
so that level's term is 0 · log(0 / 0). It must count as 0 (the sum is over P > 0), not NaN — a NaN
KL is what `np.argmin` returns first, so it would become the chosen threshold."""

from __future__ import annotations

import numpy as np

from engine.calibration.methods import kl_divergences, kl_threshold
from engine.calibration.stats import MergedStats
from tests.unit.calibration.test_methods import _kl_dense, _kl_direct

BINS, FILLED = 2048, 1500


def zero_tail_hist() -> np.ndarray:
    """Laplace-like counts in bins [0, 1500), none from there to the end."""
    rng = np.random.default_rng(11)
    h = np.zeros(BINS)
    h[:FILLED] = np.floor(1e5 * np.exp(-np.arange(FILLED) / 200.0)) + rng.integers(0, 3, FILLED)
    return h


def test_candidates_past_the_last_count_get_the_plain_algorithms_finite_kl():
    h = zero_tail_hist()
    candidates = np.arange(128, BINS + 1)
    got = kl_divergences(h, candidates)
    empty_last = candidates[(candidates // 128) * 127 >= FILLED]  # last level [127·n, i) past the counts
    assert empty_last.size > 100 and empty_last[-1] == BINS
    assert np.isfinite(got).all(), candidates[~np.isfinite(got)][:5]
    probe = np.array([128, 1000, 1499, 1500, 1501, 1600, 1919, 1920, 2047, 2048])
    want = np.array([_kl_direct(h, int(i)) for i in probe])
    np.testing.assert_allclose(got[probe - 128], want, rtol=1e-9, atol=1e-12)
    assert got.tobytes() == _kl_dense(h, candidates).tobytes()  # the dense form's bits, as everywhere else


def test_the_threshold_of_a_zero_tail_histogram_is_the_dense_forms_argmin():
    """The chosen bin is the argmin of the dense form's KL (the same bits, no NaN by construction), and
    the plain algorithm agrees that it is a minimum (candidates 1500–1535 tie up to rounding)."""
    h = zero_tail_hist()
    absmax = 4.0
    stats = MergedStats(min=-absmax, max=absmax, absmax=absmax, count=int(h.sum()), hist=h, channel_absmax=None,
                        axis=None, absmax_sample=0, samples=1)
    t = kl_threshold(stats)
    candidates = np.arange(128, BINS + 1)
    best = int(candidates[np.argmin(_kl_dense(h, candidates))])
    assert np.isfinite(t.detail["kl"]) and t.detail["best_bin"] == best and t.value == best * absmax / BINS
    plain = np.array([_kl_direct(h, int(i)) for i in candidates])
    assert _kl_direct(h, best) <= plain.min() * (1 + 1e-9)
