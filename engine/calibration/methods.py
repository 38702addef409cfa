"""Threshold methods: from one tensor's merged statistics to the |x| where int8 saturates.

Int8 symmetric quantization uses scale = threshold / 127 (DESIGN §5). Methods (reference §6.1):

- ``max``: the largest |x| over all samples (exact; provenance says which sample held it);
- ``max`` with ``max_percentile`` p < 1 (``max-percentile``): the p-quantile of |x|, read from
  the merged histogram with linear interpolation inside the bin that crosses rank p·N;
- ``kl``: TensorRT-style entropy calibration, the clipping that loses least information
  (maths in `kl_threshold`).

Per-channel thresholds (``per_channel: True``) use the per-channel absmax: ``max`` gives each
channel its own absmax; the histogram methods keep one clipping ratio t / absmax for the tensor
(the histograms are per tensor) and apply it to each channel's absmax.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.calibration.stats import MergedStats

MIN_THRESHOLD = 1e-6  # stands in for 0 (an all-zero tensor); scale = 1e-6 / 127 is a normal float32
NUM_QUANTIZED_BINS = 128  # int8 symmetric: 128 levels of |x|


@dataclass(frozen=True)
class Threshold:
    """One tensor's threshold with its provenance (method, parameters, what decided it)."""

    value: float
    method: str  # "max" | "max-percentile" | "kl"
    detail: dict[str, Any] = field(default_factory=dict)
    channels: np.ndarray | None = None  # per-channel thresholds along `axis` (per_channel: True)
    axis: int | None = None

    @property
    def label(self) -> str:
        """hb_compile's log form: ``max``, ``max-percentile:percentile=0.99995``, ``kl:num_bins=2048``."""
        if self.method == "max-percentile":
            return f"max-percentile:percentile={self.detail['percentile']}"
        if self.method == "kl":
            return f"kl:num_bins={self.detail['bins']}"
        return self.method


def _finish(value: float, method: str, detail: dict[str, Any], stats: MergedStats, per_channel: bool,
            ratio: float | None = None) -> Threshold:
    """Apply the zero floor and, if asked, spread the threshold over channels."""
    detail = {**detail, "absmax": stats.absmax, "samples": stats.samples}
    if stats.nonfinite:
        detail["nonfinite"] = stats.nonfinite
    if not value > 0:
        detail["note"] = f"all-zero tensor: threshold 0 replaced by {MIN_THRESHOLD:g}"
        value = MIN_THRESHOLD
    channels = None
    if per_channel:
        if stats.channel_absmax is None:
            detail["per_channel"] = "no channel axis for this tensor: per-tensor threshold used"
        else:
            channels = stats.channel_absmax.astype(np.float64)
            if ratio is not None:
                channels = channels * ratio
                detail["per_channel_ratio"] = ratio
            zero = ~(channels > 0)
            if zero.any():
                detail["zero_channels"] = int(zero.sum())
                channels = np.where(zero, MIN_THRESHOLD, channels)
    return Threshold(float(value), method, detail, channels, stats.axis if channels is not None else None)


def max_threshold(stats: MergedStats, per_channel: bool = False) -> Threshold:
    """The largest |x| over all samples; `detail["sample"]` is the sample that held it."""
    return _finish(stats.absmax, "max", {"sample": stats.absmax_sample}, stats, per_channel)


def hist_quantile(hist: np.ndarray, absmax: float, p: float) -> float:
    """The p-quantile of |x| from a histogram on [0, absmax], linear inside the crossing bin.

    With cumulative counts c and rank r = p·N, the bin j is the first with c[j] ≥ r and the value
    is (j + (r − c[j−1]) / hist[j]) · w: within one bin width of the exact quantile, whose order
    statistic lies in the same bin.
    """
    total = float(hist.sum())
    if total <= 0 or absmax <= 0:
        return 0.0
    cdf = np.cumsum(hist, dtype=np.float64)
    rank = min(max(p, 0.0), 1.0) * total
    j = min(int(np.searchsorted(cdf, rank, side="left")), hist.shape[0] - 1)
    before = float(cdf[j - 1]) if j > 0 else 0.0
    frac = (rank - before) / float(hist[j]) if hist[j] > 0 else 1.0
    return (j + min(max(frac, 0.0), 1.0)) * absmax / hist.shape[0]


def percentile_threshold(stats: MergedStats, percentile: float, per_channel: bool = False) -> Threshold:
    """``max`` with ``max_percentile`` < 1: clip at the p-quantile of |x| (see `hist_quantile`)."""
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"Invalid max_percentile: {percentile}, avaliable range: 0~1")
    value = hist_quantile(stats.hist, stats.absmax, percentile)
    ratio = value / stats.absmax if stats.absmax > 0 else None
    return _finish(value, "max-percentile", {"percentile": percentile, "bins": stats.bins,
                                             "bin_width": stats.bin_width}, stats, per_channel, ratio)


def kl_divergences(hist: np.ndarray, candidates: np.ndarray, levels: int = NUM_QUANTIZED_BINS,
                   prefix: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """KL(P_i‖Q_i) for every candidate bin count i, in closed form over levels (see `kl_threshold`).

    Within level g, Q_i is constant (m_g / z_g) / M_i on P_i's non-empty bins, where m_g is the
    level's unclipped mass, z_g its count of non-empty P_i bins and M_i = Σ_{k<i} h[k]. So with
    N the total count and PM_g the mass of P_i in level g (m_g, plus the clipped tail for the last
    level):

        KL_i = (Σ_{k<i−1} h_k·log h_k + P_last·log P_last) / N − log N
               − Σ_g (PM_g / N) · log(m_g / (z_g · M_i))

    The first sum is a prefix sum; the rest are (candidates × levels) arrays: no loop over
    candidates and no (candidates × bins) array. Candidates with the same n = ⌊i / levels⌋ share
    every level but the last (the same bins, so the same m_g and z_g): those are computed once
    per n (≤ 16 values of n for 2048 bins), and only the last level and the division by M_i per
    candidate — the same float operations on the same operands as the dense (candidates × levels)
    form, so the same bits, at a quarter of its time (the index arithmetic and gathers were most
    of it: 7–15 → 1.7–2 ms per tensor).

    A candidate i right after candidate i − 1 with the same n, whose bins i − 1 and i − 2 are both
    empty, has the same P_i, Q_i (the same M_i, tail, last bin and level masses) as i − 1, so the
    same KL bits: it is not computed again (merged histograms' empty stretches, digits: 17–53 % of
    the candidates).
    """
    h = np.asarray(hist, dtype=np.float64)
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.shape[0] > 1:
        i = cand[1:]
        repeat = np.zeros(cand.shape[0], bool)
        repeat[1:] = (cand[:-1] == i - 1) & (i >= 2) & (i // levels == (i - 1) // levels)
        repeat[1:] &= (h[np.maximum(i - 1, 0)] == 0) & (h[np.maximum(i - 2, 0)] == 0)
        if repeat.any():
            out = np.empty(cand.shape[0], np.float64)
            out[~repeat] = _kl_rows(h, cand[~repeat], levels, prefix)
            source = np.where(repeat, 0, np.arange(cand.shape[0]))
            np.maximum.accumulate(source, out=source)  # each repeat takes the last candidate computed
            return out[source]
    return _kl_rows(h, cand, levels, prefix)


def _kl_rows(h: np.ndarray, cand: np.ndarray, levels: int,
             prefix: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`kl_divergences` of float64 `h` for every candidate of `cand`, each computed. `prefix`:
    `_prefix_sums(h)` when the caller has them (mass cs[k], non-empty count nzc[k] and Σ h·log h of
    bins [0, k))."""
    cs, nzc, hlogh = prefix if prefix is not None else _prefix_sums(h)
    total = cs[-1]
    kept = cs[cand]  # M_i
    tail = total - kept  # clipped mass, moved into P's bin i−1
    before = h[cand - 1]
    last = before + tail  # P_i's last bin
    shared = levels - 1  # levels 0 … levels−2 have n bins each; the last takes the remainder
    per_level = cand // levels
    out = np.empty(cand.shape[0], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = (hlogh[cand - 1] + np.where(last > 0, last * np.log(last), 0.0)) / total - np.log(total)
        for n in sorted(set(per_level.tolist())):  # (np.unique imports numpy.ma: 16 ms on a cold process)
            rows = np.flatnonzero(per_level == n)
            edges = np.arange(levels) * n  # level starts; the shared levels end where the next starts
            mass = cs[edges[1:]] - cs[edges[:-1]]  # unclipped: Q never sees the tail
            nonempty = (nzc[edges[1:]] - nzc[edges[:-1]]).astype(np.float64)
            ends = cand[rows]
            mass_last = cs[ends] - cs[edges[-1]]
            nonempty_last = (nzc[ends] - nzc[edges[-1]]).astype(np.float64)
            nonempty_last += (last[rows] > 0) & ~(before[rows] > 0)  # bin i−1 non-empty only through the tail
            p_last = mass_last + tail[rows]
            k = kept[rows]
            # contiguous rows of this thread's scratch: the same log and row sums as the dense form (fresh
            # (rows × levels) arrays were fresh pages: their faults cost as much as the arithmetic)
            log_q, weight = _kl_scratch(rows.shape[0], levels)
            np.multiply(nonempty, k[:, None], out=weight[:, :shared])
            np.divide(mass, weight[:, :shared], out=log_q[:, :shared])
            np.divide(mass_last, nonempty_last * k, out=log_q[:, shared])
            np.log(log_q, out=log_q)
            weight[:, :shared] = mass / total  # PM_g / N
            weight[:, shared] = p_last / total
            np.multiply(weight, log_q, out=weight)  # then 0 where P has no mass: np.where(held, weight · log_q, 0)
            weight[:, np.flatnonzero(~(mass > 0))] = 0.0
            weight[~(p_last > 0), shared] = 0.0
            cross = weight.sum(axis=1)
            impossible = (p_last > 0) & ~(mass_last > 0)  # P has mass Q cannot hold (only the last level can)
            out[rows] = np.where(impossible, np.inf, entropy[rows] - cross)
    return out


# Candidates whose factored KL (`kl_estimates`) is within this much (times 1 + the size of its terms) of
# the least are evaluated again exactly (`kl_divergences`). The two forms differ by float rounding only:
# ~1e-12 for terms of size ~40 (log N of a billion counts), far inside this margin.
KL_MARGIN = 1e-9


def _prefix_sums(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mass, non-empty count and Σ h·log h of bins [0, k), for every k (index k)."""
    cs = np.concatenate(([0.0], np.cumsum(h)))
    nzc = np.concatenate(([0], np.cumsum(h > 0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.concatenate(([0.0], np.cumsum(np.where(h > 0, h * np.log(h), 0.0))))
    return cs, nzc, hlogh


def kl_estimates(hist: np.ndarray, candidates: np.ndarray, levels: int = NUM_QUANTIZED_BINS,
                 prefix: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """`kl_divergences` up to float rounding, at O(candidates + levels · distinct n) instead of
    O(candidates × levels); with the size of the largest term (for the margin of `kl_argmin`).

    The shared levels' cross term is Σ_g (m_g / N) · log(m_g / (z_g · M_i)) = A_n − W_n · log M_i,
    with A_n = Σ_g (m_g / N) · log(m_g / z_g) and W_n = Σ_g m_g / N over the levels with mass: per
    n = ⌊i / levels⌋ two numbers, then per candidate only its last level. Summed in another order
    than `kl_divergences`, so not its bits: `kl_argmin` uses it to find the few candidates that can
    be the least, and takes their exact values.
    """
    h = np.asarray(hist, dtype=np.float64)
    cand = np.asarray(candidates, dtype=np.int64)
    cs, nzc, hlogh = prefix if prefix is not None else _prefix_sums(h)
    total = cs[-1]
    kept = cs[cand]
    tail = total - kept
    before = h[cand - 1]
    last = before + tail
    shared = levels - 1
    per_level = cand // levels
    ns = np.flatnonzero(np.bincount(per_level))  # the distinct n, ascending (np.unique imports numpy.ma)
    edges = ns[:, None] * np.arange(levels)[None, :]  # level starts per n
    mass = cs[edges[:, 1:]] - cs[edges[:, :-1]]
    nonempty = (nzc[edges[:, 1:]] - nzc[edges[:, :-1]]).astype(np.float64)
    held = mass > 0
    w = np.where(held, mass / total, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_n = np.where(held, w * np.log(mass / nonempty), 0.0).sum(axis=1)
    w_n = w.sum(axis=1)
    index = np.searchsorted(ns, per_level)
    start_last = shared * per_level
    mass_last = kept - cs[start_last]
    nonempty_last = (nzc[cand] - nzc[start_last]).astype(np.float64) + ((last > 0) & ~(before > 0))
    p_last = mass_last + tail
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = (hlogh[cand - 1] + np.where(last > 0, last * np.log(last), 0.0)) / total - np.log(total)
        shared_cross = a_n[index] - np.where(w_n[index] > 0, w_n[index] * np.log(kept), 0.0)
        last_cross = np.where(p_last > 0, p_last / total * np.log(mass_last / (nonempty_last * kept)), 0.0)
        out = entropy - shared_cross - last_cross
    out[(p_last > 0) & ~(mass_last > 0)] = np.inf  # P has mass Q cannot hold
    finite = np.isfinite(entropy) & np.isfinite(shared_cross)
    size = float(np.max(np.abs(entropy[finite]) + np.abs(shared_cross[finite]), initial=0.0))
    return out, size


def kl_argmin(hist: np.ndarray, candidates: np.ndarray, levels: int = NUM_QUANTIZED_BINS) -> tuple[int, float]:
    """The position of `kl_divergences(hist, candidates)`'s least value (the first of equals) and that
    value, with the exact form evaluated only where the factored one (`kl_estimates`) is within
    `KL_MARGIN` of its least: ~1.3 → ~0.2 ms a tensor (PP-OCRv4 det: ~700 tensors)."""
    h = np.asarray(hist, dtype=np.float64)
    cand = np.asarray(candidates, dtype=np.int64)
    prefix = _prefix_sums(h)
    approx, size = kl_estimates(h, cand, levels, prefix)
    finite = np.isfinite(approx)
    if finite.any():
        least = float(approx[finite].min())
        near = np.flatnonzero((approx <= least + KL_MARGIN * (1.0 + size)) | np.isnan(approx))
    else:  # every candidate impossible (or a NaN): the exact values of all decide
        near = np.arange(len(cand))
    exact = kl_divergences(h, cand[near], levels, prefix)
    pick = int(np.argmin(exact))
    return int(near[pick]), float(exact[pick])


_scratch = threading.local()


def _kl_scratch(rows: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's two (rows, levels) float64 arrays, grown when a call needs more rows."""
    have = getattr(_scratch, "arrays", None)
    if have is None or have[0].shape[0] < rows or have[0].shape[1] != levels:
        size = max(rows, have[0].shape[0] if have is not None and have[0].shape[1] == levels else 0)
        have = _scratch.arrays = (np.empty((size, levels)), np.empty((size, levels)))
    return have[0][:rows], have[1][:rows]


def kl_threshold(stats: MergedStats, levels: int = NUM_QUANTIZED_BINS, start_bin: int | None = None,
                 stride: int = 1, per_channel: bool = False) -> Threshold:
    """Entropy calibration (TensorRT): the clipping threshold whose int8 view loses least information.

    With the merged histogram h of |x| over [0, absmax] in B bins of width w, every candidate
    i ∈ {start_bin, start_bin + stride, …, B} (start_bin defaults to 128) clips at t_i = i·w:

    - reference P_i: h[0..i−1] with the clipped mass Σ_{k≥i} h[k] added to bin i−1;
    - quantized Q_i: bins 0..i−1 grouped into 128 levels of n = ⌊i/128⌋ consecutive bins (the last
      level takes the remainder); each level's *unclipped* mass is spread evenly over the bins of
      the level where P_i is non-zero (empty bins stay empty);
    - both normalized; KL(P_i‖Q_i) = Σ_k P_i[k] · log(P_i[k] / Q_i[k]) over P_i[k] > 0, infinite
      when Q_i[k] = 0 there (a candidate that cannot represent the clipped tail).

    The chosen threshold is t_i* with i* = argmin_i KL (the smallest i on ties). Large i wastes
    levels on rare outliers (coarse Q), small i piles the tail into one bin of P that Q cannot
    match: the minimum balances rounding and clipping error. `kl_divergences` evaluates all
    candidates at once in closed form.
    """
    bins = stats.bins
    start = levels if start_bin is None else max(int(start_bin), levels)
    detail: dict[str, Any] = {"bins": bins, "levels": levels, "start_bin": start, "stride": stride}
    if stats.absmax <= 0 or stats.count == 0 or start > bins:
        return _finish(stats.absmax, "kl", detail, stats, per_channel, 1.0)
    candidates = np.arange(start, bins + 1, max(int(stride), 1))
    if candidates[-1] != bins:
        candidates = np.append(candidates, bins)  # "no clipping" is always a candidate
    best, kl = kl_argmin(stats.hist, candidates, levels)
    i = int(candidates[best])
    value = i * stats.bin_width
    detail.update(best_bin=i, kl=kl, bin_width=stats.bin_width)
    return _finish(value, "kl", detail, stats, per_channel, value / stats.absmax)


CALIBRATION_TYPES = ("max", "kl")  # what `threshold` computes; default / mix / load / skip build on it


def threshold(stats: MergedStats, calibration_type: str, *, max_percentile: float = 1.0,
              per_channel: bool = False, kl_stride: int = 1) -> Threshold:
    """One tensor's threshold for a ``calibration_type`` (``max`` honours ``max_percentile``)."""
    if calibration_type == "max":
        if max_percentile < 1.0:
            return percentile_threshold(stats, max_percentile, per_channel)
        return max_threshold(stats, per_channel)
    if calibration_type == "kl":
        return kl_threshold(stats, stride=kl_stride, per_channel=per_channel)
    raise ValueError(f"calibration_type '{calibration_type}' has no threshold method here; "
                     f"expected one of {list(CALIBRATION_TYPES)}")


def thresholds(merged: Mapping[str, MergedStats], calibration_type: str, **options: Any) -> dict[str, Threshold]:
    """`threshold` for every tensor, in the order of `merged`."""
    return {name: threshold(s, calibration_type, **options) for name, s in merged.items()}


__all__ = ["CALIBRATION_TYPES", "MIN_THRESHOLD", "Threshold", "hist_quantile", "kl_divergences", "kl_threshold",
           "max_threshold", "percentile_threshold", "threshold", "thresholds"]
