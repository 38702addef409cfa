"""Per-sample statistics: exact extrema, |x| histograms, merge = one-shot, order independence, npz."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest

from engine.calibration import SampleStats, hist_quantile, merge, merge_samples, tensor_stats
from engine.calibration import stats as stats_module
from engine.calibration.stats import TensorStats, rebin, stacked_stats


def activations(seed=0, shape=(1, 8, 16, 16), scale=1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.laplace(0, 1, shape) * scale * rng.uniform(0.2, 3.0, (1, shape[1], 1, 1))  # channels differ
    return x.astype(np.float32)


def test_tensor_stats_are_exact_and_histogram_counts_abs_values():
    x = activations()
    s = tensor_stats(x, bins=256)
    a = np.abs(x)
    assert (s.min, s.max, s.absmax, s.count) == (float(x.min()), float(x.max()), float(a.max()), x.size)
    np.testing.assert_array_equal(s.channel_absmax, a.max(axis=(0, 2, 3)))
    assert s.axis == 1 and s.hist.dtype == np.int64 and s.hist.sum() == x.size
    ref, _ = np.histogram(a.astype(np.float64), bins=256, range=(0.0, s.absmax))
    assert np.abs(s.hist - ref).sum() <= 4  # only float32 rounding at bin edges may differ
    assert s.hist[-1] >= 1  # the maximum itself lands in the last bin


def test_channel_axis_is_configurable_and_optional():
    x = activations(shape=(1, 6, 5, 4))
    last = tensor_stats(x, channel_axis=-1)
    assert last.axis == 3
    np.testing.assert_array_equal(last.channel_absmax, np.abs(x).max(axis=(0, 1, 2)))
    assert tensor_stats(x, channel_axis=None).channel_absmax is None
    assert tensor_stats(np.ones(5, np.float32)).channel_absmax is None  # 1-D: no channel axis


def test_all_zero_tensor_and_non_finite_activations():
    z = tensor_stats(np.zeros((1, 2, 3, 3), np.float32), bins=16)
    assert z.absmax == 0 and z.hist[0] == 18 and z.hist[1:].sum() == 0
    x = np.array([[1.0, -3.0, np.nan, np.inf, 0.5, -np.inf]], np.float32)
    s = tensor_stats(x, bins=4, channel_axis=None)
    assert (s.min, s.max, s.absmax, s.count, s.nonfinite) == (-3.0, 1.0, 3.0, 3, 3)
    assert s.hist.tolist() == [1, 1, 0, 1]  # 0.5 → bin 0, 1.0 → bin 1, 3.0 → last bin
    allbad = tensor_stats(np.full((2, 2), np.nan, np.float32), bins=4)
    assert allbad.count == 0 and allbad.nonfinite == 4 and allbad.hist.sum() == 0


def _split_samples(n=12, seed=3):
    """Samples with different ranges, so the merged grid is wider than most sample grids."""
    return [activations(seed + i, scale=float(s)) for i, s in enumerate(np.linspace(0.3, 2.5, n))]


def test_merged_per_sample_stats_equal_one_shot_stats_over_the_concatenated_data():
    xs = _split_samples()
    merged = merge([tensor_stats(x) for x in xs])
    whole = np.concatenate(xs, axis=0)
    once = merge([tensor_stats(whole)])
    assert (merged.min, merged.max, merged.absmax, merged.count) == (once.min, once.max, once.absmax, once.count)
    np.testing.assert_array_equal(merged.channel_absmax, once.channel_absmax)
    assert merged.hist.sum() == pytest.approx(whole.size) and merged.bins == once.bins == 2048
    assert merged.absmax_sample == int(np.argmax([np.abs(x).max() for x in xs]))
    exact = np.abs(whole).astype(np.float64)
    for p in (0.5, 0.9, 0.99, 0.999, 0.9999):
        q_merged = hist_quantile(merged.hist, merged.absmax, p)
        q_once = hist_quantile(once.hist, once.absmax, p)
        assert abs(q_merged - q_once) <= merged.bin_width, p
        # the order statistic at rank p·N lies in the bin where the cumulative count crosses p·N
        assert abs(q_merged - np.quantile(exact, p, method="inverted_cdf")) <= merged.bin_width, p


def test_merge_is_order_independent_and_labels_follow_the_samples():
    stats = [tensor_stats(x) for x in _split_samples(8)]
    labels = [f"sample-{i}" for i in range(8)]
    a = merge(stats, labels)
    perm = np.random.default_rng(0).permutation(8)
    b = merge([stats[i] for i in perm], [labels[i] for i in perm])
    assert np.array_equal(a.hist, b.hist)  # bit for bit
    assert (a.min, a.max, a.absmax, a.count, a.absmax_sample) == (b.min, b.max, b.absmax, b.count, b.absmax_sample)
    assert a.absmax_sample == "sample-7"  # the widest sample (scale 2.5)


def test_rebin_keeps_mass_and_is_the_identity_on_the_same_range():
    h = np.array([5, 0, 3, 2], np.int64)
    np.testing.assert_array_equal(rebin(h, 4.0, 4.0), h.astype(np.float64))
    wide = rebin(h, 4.0, 8.0)  # each merged bin covers two source bins
    np.testing.assert_allclose(wide, [5, 5, 0, 0])
    # source edges 0 .75 1.5 2.25 3 onto 0 1 2 3 4: [1, 2] takes 2/3 of the 3, [2, 3] the rest and the 2
    np.testing.assert_allclose(rebin(h, 3.0, 4.0), [5.0, 2.0, 3.0, 0.0])
    assert rebin(np.array([7, 0]), 0.0, 2.0).tolist() == [7.0, 0.0]
    with pytest.raises(ValueError):
        rebin(h, 4.0, 2.0)


def test_merged_histogram_is_the_sum_of_per_sample_rebins_bit_for_bit():
    """merge rebins every sample at once (`_rebinned`): the same bits as `rebin` one sample at a
    time, summed in the canonical order, for ranges from 1e-38 up, all-zero and all-NaN samples,
    and histograms held as uint16 / uint32 / int64."""
    rng = np.random.default_rng(11)
    stats = [tensor_stats(activations(i, scale=float(s))) for i, s in enumerate(rng.uniform(0.01, 40.0, 29))]
    stats += [tensor_stats(np.full((1, 8, 4, 4), 1e-38, np.float32)), tensor_stats(np.zeros((1, 8, 4, 4), np.float32)),
              tensor_stats(np.full((1, 8, 4, 4), np.nan, np.float32))]
    stats = [TensorStats(s.min, s.max, s.absmax, s.count, s.hist.astype(dtype), s.channel_absmax, s.axis, s.nonfinite)
             for s, dtype in zip(stats, [np.uint16, np.uint32, np.int64] * 11)]
    merged = merge(stats)
    want = np.zeros(2048)
    for i in sorted(range(len(stats)), key=lambda i: (stats[i].absmax, stats[i].max, stats[i].min, stats[i].count)):
        want += rebin(stats[i].hist, stats[i].absmax, merged.absmax)
    assert merged.hist.tobytes() == want.tobytes()
    tiny = merge(stats[-3:])  # no sample with a usable range but the tiny one
    assert tiny.absmax == pytest.approx(1e-38) and tiny.hist.sum() == 2 * 128


def test_sample_stats_round_trip_through_bytes():
    x = activations()
    sample = SampleStats({"/model.0/conv/Conv_output_0": tensor_stats(x),
                          "scores:0 (softmax)": tensor_stats(x[0, 0, 0], channel_axis=None),
                          "zeros": tensor_stats(np.zeros((1, 2, 2, 2), np.float32)),
                          "partly bad": tensor_stats(np.array([[1.0, np.nan]], np.float32))})
    blob = sample.to_bytes()
    back = SampleStats.from_bytes(blob)
    assert list(back) == list(sample) and back.tensors == sample.tensors
    assert back["scores:0 (softmax)"].channel_absmax is None and back["partly bad"].nonfinite == 1
    assert back["zeros"].hist.dtype == np.uint16  # read back in the narrowest dtype that holds the counts
    assert sample.to_bytes() == blob  # the same statistics give the same bytes
    for broken in (blob[: len(blob) // 2], b"PK\x03\x04" + blob[4:], blob[:-1] + bytes([blob[-1] ^ 0xFF]), b""):
        with pytest.raises(ValueError, match="SampleStats"):
            SampleStats.from_bytes(broken)


def test_merge_samples_merges_every_tensor_and_refuses_mismatched_samples():
    a = SampleStats({"t": tensor_stats(activations(1)), "u": tensor_stats(activations(2))})
    b = SampleStats({"t": tensor_stats(activations(3)), "u": tensor_stats(activations(4))})
    merged = merge_samples([a, b])
    assert list(merged) == ["t", "u"] and merged["t"].count == 2 * a["t"].count and merged["t"].samples == 2
    with pytest.raises(ValueError, match="same tensors"):
        merge_samples([a, SampleStats({"t": a["t"]})])


@pytest.mark.parametrize("shape,axis,rows", [((6, 8, 5, 5), 1, 1), ((6, 8, 5, 5), 1, 2), ((6, 7), None, 1),
                                             ((4, 2, 9), -1, 1), ((9, 4, 3), 1, 3)])
def test_stacked_stats_equal_each_samples_own_stats(shape, axis, rows):
    """Several samples at once (a batched run, or small runs stacked) give each sample's exact stats:
    same float32 arithmetic per value, including an all-zero sample and one whose max |x| is negative."""
    rng = np.random.default_rng(5)
    x = (rng.laplace(size=shape) * rng.uniform(0.1, 5, (shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
    x[rows:2 * rows] = 0
    x[2 * rows].flat[1] = -2 * np.abs(x[2 * rows]).max()
    count = shape[0] // rows
    got = stacked_stats(x, count, 64, axis)
    want = [tensor_stats(x[k * rows:(k + 1) * rows], 64, axis) for k in range(count)]
    assert len(got) == count and all(a == b for a, b in zip(got, want, strict=True))
    assert got[1].absmax == 0 and got[1].hist[0] == got[1].count


def test_stacked_stats_with_non_finite_values_and_bad_splits():
    x = activations(shape=(4, 3, 4, 4))
    x[2, 1, 0, 0] = np.nan
    assert stacked_stats(x, 4) == [tensor_stats(x[k:k + 1]) for k in range(4)]
    with pytest.raises(ValueError, match="3 samples"):
        stacked_stats(x, 3)


def test_compiled_kernel_and_numpy_give_identical_bins():
    """The kernel is loaded once per process; with it or without, the same bins (edge values included)."""
    pytest.importorskip("numba")
    from engine.calibration import stats

    if os.environ.get(stats.KERNEL_ENV, "").lower() == "numpy":
        pytest.skip(f"{stats.KERNEL_ENV}=numpy")
    assert stats.load_kernel(wait=True) and stats.kernel_status() == "loaded"
    rng = np.random.default_rng(11)
    for n in (stats.KERNEL_VALUES, stats.KERNEL_VALUES + 3, 100_003):
        x = np.maximum(rng.laplace(size=n), 0).astype(np.float32) * rng.choice([-1, 1], n).astype(np.float32)
        x[:50] = 0.0
        top = float(np.abs(x).max())
        x[7] = -top  # |x| = absmax: the last bin
        x[9] = np.nextafter(np.float32(top), np.float32(0))
        scale = np.float32(2048 / top)
        kernel = stats._abs_histogram(x, scale, 2048)
        np.testing.assert_array_equal(kernel, stats._abs_histogram_numpy(x, scale, 2048))
        assert kernel.sum() == n and kernel[-1] >= 2
    t = activations(shape=(1, 16, 64, 64))
    through_kernel = tensor_stats(t)  # 65 K values: the kernel's path
    real = stats._abs_histogram
    try:
        stats._abs_histogram = lambda flat, scale, bins: stats._abs_histogram_numpy(flat, scale, bins)
        assert tensor_stats(t) == through_kernel
    finally:
        stats._abs_histogram = real


def test_the_kernel_splits_a_tensor_longer_than_its_counters_span(monkeypatch):
    """The kernel's partial histograms count in uint32: a tensor beyond `KERNEL_SPAN` values goes in
    slices whose bins are summed, the same bins as numpy's (here with a span shrunk to 5 000 values)."""
    pytest.importorskip("numba")
    from engine.calibration import stats

    if os.environ.get(stats.KERNEL_ENV, "").lower() == "numpy":
        pytest.skip(f"{stats.KERNEL_ENV}=numpy")
    assert stats.load_kernel(wait=True)
    calls = []
    kernel = stats._kernel["fn"]
    monkeypatch.setitem(stats._kernel, "fn", lambda flat, scale, bins: calls.append(flat.size) or kernel(flat, scale, bins))
    monkeypatch.setattr(stats, "KERNEL_SPAN", 5_000)
    x = activations(seed=4, shape=(1, 4, 75, 80)).reshape(-1)  # 24 000 values: 5 slices
    scale = np.float32(2048 / float(np.abs(x).max()))
    np.testing.assert_array_equal(stats._abs_histogram(x, scale, 2048), stats._abs_histogram_numpy(x, scale, 2048))
    assert calls == [5_000] * 4 + [4_000]


def test_held_statistics_are_packed_beyond_the_budget_and_merge_the_same():
    """A calibration set whose histograms exceed the budget is held packed (each histogram deflated,
    decoded on lookup); merging packed samples gives the same result as merging them as computed."""
    from engine.calibration.stats import HELD_BUDGET, PackedSampleStats

    samples = [SampleStats({"t": tensor_stats(x), "u": tensor_stats(x[:, :3], channel_axis=None)})
               for x in _split_samples(5)]
    per_sample = sum(s.hist.nbytes for s in samples[0].compact().tensors.values())
    few, many = HELD_BUDGET // per_sample - 1, HELD_BUDGET // per_sample + 1
    assert all(isinstance(s.held(few), SampleStats) for s in samples)
    packed = [s.held(many) for s in samples]
    assert all(isinstance(p, PackedSampleStats) and list(p) == ["t", "u"] and len(p) == 2 for p in packed)
    assert all(p[n] == s[n] for p, s in zip(packed, samples, strict=True) for n in s)
    a, b = merge_samples(samples), merge_samples(packed)
    for n in a:
        assert np.array_equal(a[n].hist, b[n].hist) and a[n].absmax == b[n].absmax and a[n].count == b[n].count
        assert np.array_equal(a[n].channel_absmax, b[n].channel_absmax) if a[n].channel_absmax is not None else \
            b[n].channel_absmax is None


@pytest.mark.parametrize("absmax", [1e-45, 1e-40, 1e-38, 5e-36])
@pytest.mark.parametrize("size", [32, 1 << 15])
def test_tiny_ranges_get_a_float64_histogram_instead_of_crashing(absmax, size):
    """absmax below 2048 / FLT_MAX (≈ 6e-36, normal floats included): bins / absmax has no float32,
    so the histogram is taken in float64, with the kernel loaded or not (`size` reaches it)."""
    from engine.calibration import stats

    if size >= stats.KERNEL_VALUES and os.environ.get(stats.KERNEL_ENV, "").lower() != "numpy":
        stats.load_kernel(wait=True)
    top = np.float32(absmax)
    x = (np.random.default_rng(3).uniform(-1, 1, (1, 2, size // 2)) * top).astype(np.float32)
    x.flat[5] = -top
    s = tensor_stats(x)
    assert s.absmax == float(top) and s.count == x.size and s.hist.sum() == x.size and s.hist[-1] >= 1
    index = np.minimum((np.abs(x.astype(np.float64)) * (2048 / float(top))).astype(np.int64), 2047).reshape(-1)
    np.testing.assert_array_equal(s.hist, np.bincount(index, minlength=2048))
    stacked = np.concatenate([x, x * np.float32(0.5)])
    assert stacked_stats(stacked, 2) == [tensor_stats(stacked[k:k + 1]) for k in range(2)]


def test_compiled_rebin_gives_the_bits_of_numpy_interp(monkeypatch):
    """With the compiled kernel loaded, `_rebinned` moves every sample's histogram in one numba loop
    that repeats np.interp's arithmetic: the same bits as the numpy path, for ranges from 1e-38 to
    1e4, samples at the merged range itself, sparse and uint16 / uint32 / int64 histograms, and a
    merged grid finer or coarser than the samples'."""
    pytest.importorskip("numba")
    from engine.calibration import stats

    if os.environ.get(stats.KERNEL_ENV, "").lower() == "numpy":
        pytest.skip(f"{stats.KERNEL_ENV}=numpy")
    assert stats.load_kernel(wait=True) and stats._kernel["rebin"] is not None
    rng = np.random.default_rng(5)
    ranges = [1e-38, 3e-5, 0.7, 1.0, 1.0, 255.0, 1e4] + list(rng.uniform(0.01, 40.0, 25))
    samples = [tensor_stats(activations(i, scale=float(s))) for i, s in enumerate(ranges)]
    sparse = np.zeros(2048, np.int64)
    sparse[rng.integers(0, 2048, 40)] = rng.integers(1, 9, 40)
    samples.append(TensorStats(0.0, 3.0, 3.0, int(sparse.sum()), sparse))
    samples = [TensorStats(s.min, s.max, s.absmax, s.count, s.hist.astype(dtype), s.channel_absmax, s.axis)
               for s, dtype in zip(samples, [np.uint16, np.uint32, np.int64] * 11)]
    for target, bins in ((1e4, 2048), (1e4 * 1.5, 2048), (255.0, 4096), (40.0, 1000), (40.0, 2049)):
        fitting = [s for s in samples if s.absmax <= target]
        compiled = {i: d.copy() for i, d in stats._rebinned(fitting, target, bins).items()}
        monkeypatch.setitem(stats._kernel, "rebin", None)
        numpy = stats._rebinned(fitting, target, bins)
        monkeypatch.undo()
        assert compiled.keys() == numpy.keys()
        assert all(compiled[i].tobytes() == numpy[i].tobytes() for i in numpy), target


def test_bins_above_65535_are_kept_apart_and_read_back_exactly():
    """Format 4 stores bins as uint16 and lists the wider ones (a ReLU output's zeros): they read back
    exactly, in the dtype the tensor's count needs; a listed position outside the bins is corrupt."""
    relu = np.maximum(activations(shape=(1, 8, 128, 128)), 0)  # ~65 K zeros in bin 0
    big = np.zeros((1, 4, 512, 512), np.float32)
    big[0, 0, 0, :7] = np.arange(7, dtype=np.float32)  # 1 M values: bin 0 holds ~1 M
    sample = SampleStats({"relu": tensor_stats(relu), "big": tensor_stats(big), "small": tensor_stats(activations())})
    assert sample["big"].hist[0] > 1 << 19 and sample["relu"].hist.max() > 0
    blob = sample.to_bytes()
    back = SampleStats.from_bytes(blob)
    assert back.tensors == sample.tensors and back["big"].hist.dtype == np.uint32 and back["small"].hist.dtype == np.uint16
    assert len(blob) < sum(s.hist.size for s in sample.values()) * 2 + 4096  # two bytes a bin, not four
    header_end = len(stats_module.MAGIC) + 4 + int.from_bytes(blob[len(stats_module.MAGIC):len(stats_module.MAGIC) + 4],
                                                               "little")
    bins = sum(s.hist.size for s in sample.values())
    wide = int(json.loads(blob[len(stats_module.MAGIC) + 4:header_end])["wide"])
    assert wide >= 1
    payload = bytearray(blob[header_end:])
    first = 40 * len(sample) + 2 * bins  # after the scalars (5 float64 a tensor) and the uint16 bins
    payload[first:first + 4] = (bins + 5).to_bytes(4, "little")  # the first wide position, out of range
    header = json.loads(blob[len(stats_module.MAGIC) + 4:header_end])
    header["crc32"] = zlib.crc32(bytes(payload))
    text = json.dumps(header).encode()
    forged = stats_module.MAGIC + len(text).to_bytes(4, "little") + text + bytes(payload)
    with pytest.raises(ValueError, match="wide bin"):
        SampleStats.from_bytes(forged)


def test_a_warm_merge_moves_only_the_changed_samples_with_the_same_bits(monkeypatch):
    """`RebinnedRows` (a warm engine's): after one sample is replaced, merging again moves that sample's
    histogram only (when the merged range stays) and gives the bits of a fresh merge; when the range
    grows, every row is moved again; tensors no longer merged are dropped."""
    from engine.calibration import stats

    samples = [SampleStats({"t": tensor_stats(x), "u": tensor_stats(x[:, :3] * 0.5, channel_axis=None)})
               for x in _split_samples(6)]
    rows = stats.RebinnedRows()
    first = merge_samples(samples, rows=rows)
    moved = []
    real = stats._rebinned
    monkeypatch.setattr(stats, "_rebinned", lambda st, target, bins: moved.append(len(st)) or real(st, target, bins))
    again = merge_samples(samples, rows=rows)
    assert moved == [] and all(again[n].hist.tobytes() == first[n].hist.tobytes() for n in first)
    top = max(range(6), key=lambda k: samples[k]["t"].absmax)
    changed = (top + 1) % 6  # not the sample holding the range: the range stays
    x = _split_samples(6)[changed] * np.float32(0.25)
    samples[changed] = SampleStats({"t": tensor_stats(x), "u": tensor_stats(x[:, :3] * 0.5, channel_axis=None)})
    got = merge_samples(samples, rows=rows)
    fresh = merge_samples(samples)
    assert all(got[n].hist.tobytes() == fresh[n].hist.tobytes() for n in fresh)
    assert moved[:2] == [1, 1] or sorted(moved[:2]) == [1, 6]  # t: one row; u: one, or all if its range moved
    moved.clear()
    x = _split_samples(6)[changed] * np.float32(100.0)  # now it holds the range: every row moves
    samples[changed] = SampleStats({"t": tensor_stats(x), "u": tensor_stats(x[:, :3] * 0.5, channel_axis=None)})
    got = merge_samples(samples, rows=rows)
    assert moved == [6, 6] and all(got[n].hist.tobytes() == merge_samples(samples)[n].hist.tobytes() for n in got)
    merge_samples([{"t": s["t"]} for s in samples], rows=rows)
    assert rows.nbytes == sum(r.nbytes for _, r in rows._tensors["t"][2].values()) and "u" not in rows._tensors


def test_rows_of_a_merge_beyond_the_budget_are_not_kept():
    """The warm rows outlive the merge: a merge whose rows exceed the budget keeps none (at 128 samples
    they would raise the peak RSS against 16), and the merge gives the same bits as without rows."""
    from engine.calibration import stats

    samples = [SampleStats({"t": tensor_stats(x)}) for x in _split_samples(6)]
    small = stats.RebinnedRows(budget=6 * 2048 * 8 - 1)
    merged = merge_samples(samples, rows=small)
    assert small.nbytes == 0 and not small._tensors
    assert merged["t"].hist.tobytes() == merge_samples(samples)["t"].hist.tobytes()
    enough = stats.RebinnedRows(budget=6 * 2048 * 8)
    merge_samples(samples, rows=enough)
    assert enough.nbytes == 6 * 2048 * 8
