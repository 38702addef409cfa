"""Threshold methods on synthetic distributions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from engine.calibration import (
    MIN_THRESHOLD,
    hist_quantile,
    kl_threshold,
    max_threshold,
    merge,
    percentile_threshold,
    tensor_stats,
    threshold,
    thresholds,
)
from engine.calibration.methods import kl_divergences

RNG = np.random.default_rng(42)
N = 1 << 20


def merged_of(*xs, channel_axis=None):
    return merge([tensor_stats(x, channel_axis=channel_axis) for x in xs])


def laplace_with_outliers(n=N, outliers=10, at=50.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.laplace(0, 1, n).astype(np.float32)
    x[rng.choice(n, outliers, replace=False)] = at * rng.choice([-1, 1], outliers)
    return x


DISTRIBUTIONS = {
    "normal": lambda: RNG.standard_normal(N),
    "laplace+outliers": lambda: laplace_with_outliers(),
    "uniform": lambda: RNG.uniform(-3, 7, N),
    "relu(normal)": lambda: np.maximum(RNG.standard_normal(N), 0),  # half the values exactly 0
    "lognormal": lambda: RNG.lognormal(0, 1, N),
    "bimodal": lambda: np.concatenate([RNG.normal(-4, 0.3, N // 2), RNG.normal(9, 1, N // 2)]),
}


def test_max_is_exact_and_names_the_sample():
    xs = [RNG.standard_normal((1, 4, 8, 8)).astype(np.float32) * s for s in (1.0, 3.0, 2.0)]
    xs[1][0, 2, 3, 4] = -17.25
    t = max_threshold(merge([tensor_stats(x) for x in xs]))
    assert t.value == 17.25 and t.method == "max" and t.label == "max" and t.detail["sample"] == 1
    assert t.channels is None and t.detail["samples"] == 3


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("p", [0.9, 0.99, 0.999, 0.9999, 0.99995])
def test_percentile_matches_numpy_quantile_within_one_bin(name, p):
    x = DISTRIBUTIONS[name]().astype(np.float32)
    m = merged_of(x)
    t = percentile_threshold(m, p)
    a = np.abs(x).astype(np.float64)
    # the order statistic at rank p·N always lies in the bin the histogram interpolates in
    assert abs(t.value - np.quantile(a, p, method="inverted_cdf")) <= m.bin_width
    if p <= 0.999:  # dense data: neighbouring order statistics are closer than a bin
        assert abs(t.value - np.quantile(a, p)) <= m.bin_width
    assert t.method == "max-percentile" and t.label == f"max-percentile:percentile={p}"


def test_hist_quantile_interpolates_inside_the_crossing_bin():
    hist = np.array([2.0, 0.0, 4.0, 2.0])  # bins of width 1 over [0, 4]
    assert hist_quantile(hist, 4.0, 0.25) == 1.0  # rank 2: the top of bin 0
    assert hist_quantile(hist, 4.0, 0.5) == 2.5  # rank 4: half-way through bin 2
    assert hist_quantile(hist, 4.0, 1.0) == 4.0
    assert hist_quantile(np.zeros(4), 4.0, 0.5) == 0.0


def test_kl_clips_rare_outliers_of_a_laplacian():
    x = laplace_with_outliers()
    m = merged_of(x)
    t = kl_threshold(m)
    a = np.abs(x)
    assert np.quantile(a, 0.99) < t.value < 0.5 * a.max()
    assert t.method == "kl" and t.label == "kl:num_bins=2048" and 128 <= t.detail["best_bin"] <= 2048
    assert t.value == pytest.approx(t.detail["best_bin"] * m.bin_width)


def test_kl_keeps_the_range_of_a_uniform_distribution():
    m = merged_of(RNG.uniform(-1, 1, N).astype(np.float32))
    assert kl_threshold(m).value > 0.95 * m.absmax  # nothing rare to clip


def _kl_direct(hist: np.ndarray, i: int, levels: int = 128) -> float:
    """TensorRT's entropy calibration for one candidate, written plainly (the oracle)."""
    h = hist.astype(np.float64)
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    n = i // levels
    q = np.zeros(i)
    for g in range(levels):
        lo, hi = g * n, ((g + 1) * n if g < levels - 1 else i)
        nonzero = p[lo:hi] > 0
        if nonzero.any():
            q[lo:hi][nonzero] = h[lo:hi].sum() / nonzero.sum()
    p, q = p / p.sum(), q / q.sum()
    if np.any((p > 0) & (q == 0)):
        return np.inf
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def test_vectorized_kl_equals_the_plain_algorithm():
    hist = tensor_stats(laplace_with_outliers(200_000, seed=3), channel_axis=None).hist
    hist[900:960] = 0  # gaps, so some candidates end in empty bins
    candidates = np.array([128, 129, 200, 255, 256, 257, 511, 900, 930, 959, 960, 1500, 2047, 2048])
    got = kl_divergences(hist, candidates)
    want = np.array([_kl_direct(hist, int(i)) for i in candidates])
    assert np.array_equal(np.isinf(got), np.isinf(want)) and np.isinf(want).any()
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-9, atol=1e-12)


def _kl_dense(hist: np.ndarray, candidates: np.ndarray, levels: int = 128) -> np.ndarray:
    """The closed form over a dense (candidates × levels) grid: `kl_divergences` before it shared the
    levels of candidates with the same bins per level. Thresholds are argmins of these values, so the
    grouped form must give the same bits, not only close values."""
    h = np.asarray(hist, dtype=np.float64)
    cand = np.asarray(candidates, dtype=np.int64)[:, None]
    cs = np.concatenate(([0.0], np.cumsum(h)))
    nzc = np.concatenate(([0], np.cumsum(h > 0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.concatenate(([0.0], np.cumsum(np.where(h > 0, h * np.log(h), 0.0))))
    total = cs[-1]
    tail = total - cs[cand]
    last = h[cand - 1] + tail
    g = np.arange(levels)[None, :]
    n = cand // levels
    g_start, g_end = g * n, np.where(g < levels - 1, (g + 1) * n, cand)
    mass = cs[g_end] - cs[g_start]
    nonempty = (nzc[g_end] - nzc[g_start]).astype(np.float64)
    nonempty[:, -1:] += (last > 0) & ~(h[cand - 1] > 0)
    p_mass = mass.copy()
    p_mass[:, -1:] += tail
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = (hlogh[cand - 1] + np.where(last > 0, last * np.log(last), 0.0)) / total - np.log(total)
        log_q = np.log(mass / (nonempty * cs[cand]))
        cross = np.where(p_mass > 0, p_mass / total * log_q, 0.0).sum(axis=1, keepdims=True)
    impossible = ((p_mass > 0) & ~(mass > 0)).any(axis=1, keepdims=True)
    return np.where(impossible, np.inf, entropy - cross)[:, 0]


def test_grouped_kl_gives_the_bits_of_the_dense_form():
    rng = np.random.default_rng(7)
    hists = [tensor_stats(DISTRIBUTIONS[name]().astype(np.float32), channel_axis=None).hist for name in DISTRIBUTIONS]
    gappy = tensor_stats(laplace_with_outliers(200_000, seed=3), channel_axis=None).hist
    gappy[900:960] = 0
    hists += [gappy, rng.integers(0, 3, 2048) * (rng.random(2048) < 0.3), np.eye(1, 2048, 2047)[0] * 5]
    grids = [np.arange(128, 2049), np.arange(128, 2049, 7), np.array([2048, 129, 1000, 256, 255]), np.array([128])]
    for hist in hists:
        for candidates in grids:
            got, want = kl_divergences(hist, candidates), _kl_dense(hist, candidates)
            assert got.tobytes() == want.tobytes(), (hist[:4], candidates[:4])
    assert np.isinf(kl_divergences(hists[-1], grids[0])).any()  # a tail Q cannot hold


def test_kl_stride_searches_fewer_candidates_near_the_same_answer():
    m = merged_of(laplace_with_outliers(seed=5))
    fine, coarse = kl_threshold(m), kl_threshold(m, stride=16)
    assert coarse.detail["stride"] == 16 and abs(coarse.value - fine.value) <= 16 * m.bin_width * 2


@pytest.mark.parametrize("method,options", [("max", {}), ("max", {"max_percentile": 0.999}), ("kl", {})])
def test_all_zero_tensor_gets_a_tiny_positive_threshold_with_a_note(method, options):
    m = merged_of(np.zeros((1, 3, 4, 4), np.float32), channel_axis=1)
    t = threshold(m, method, per_channel=True, **options)
    assert t.value == MIN_THRESHOLD and "all-zero" in t.detail["note"]
    assert t.channels.tolist() == [MIN_THRESHOLD] * 3 and t.detail["zero_channels"] == 3


def test_per_channel_thresholds():
    x = RNG.laplace(0, 1, (1, 4, 32, 32)).astype(np.float32) * np.array([1, 2, 4, 8], np.float32)[None, :, None, None]
    m = merged_of(x, channel_axis=1)
    per_max = threshold(m, "max", per_channel=True)
    np.testing.assert_array_equal(per_max.channels, np.abs(x).max(axis=(0, 2, 3)))
    assert per_max.axis == 1 and per_max.value == m.absmax
    per_kl = threshold(m, "kl", per_channel=True)
    ratio = per_kl.value / m.absmax
    np.testing.assert_allclose(per_kl.channels, m.channel_absmax * ratio)
    flat = threshold(merged_of(x.reshape(-1)), "max", per_channel=True)
    assert flat.channels is None and "per-tensor" in flat.detail["per_channel"]


def test_dispatch_and_refusals():
    m = merged_of(DISTRIBUTIONS["normal"]().astype(np.float32))
    assert threshold(m, "max").method == "max"
    assert threshold(m, "max", max_percentile=0.99).method == "max-percentile"
    assert threshold(m, "kl", kl_stride=8).detail["stride"] == 8
    both = thresholds({"a": m, "b": m}, "max", max_percentile=0.5)
    assert list(both) == ["a", "b"] and both["a"].value == pytest.approx(0.674, abs=0.01)
    with pytest.raises(ValueError, match="calibration_type 'mix'"):
        threshold(m, "mix")
    with pytest.raises(ValueError, match="Invalid max_percentile: 1.5"):
        percentile_threshold(m, 1.5)
