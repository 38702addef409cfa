"""Per-sample tensor statistics and their exact, order-independent merge.

The calibrate stage caches statistics *per calibration sample* (keyed by the sample's content
hash) and merges them, so that changing one calibration file re-runs the forward pass for that
file only. That only works if the statistics of one sample never depend on the others:

- min / max / absmax / per-channel absmax merge exactly (they are extrema);
- the histogram of |x| of one sample covers [0, absmax of *that* sample] with `bins` equal bins.
  Merging redistributes each sample's bin counts onto the merged grid [0, global absmax]
  proportionally to overlap (mass is assumed uniform inside a source bin, which is also the
  assumption every histogram-based threshold method makes). When a new sample raises the global
  range, the old samples' histograms are simply redistributed again: nothing is re-run.

Each merged bin is at least as wide as every source bin, so a source bin spreads over at most two
merged bins and a histogram-derived quantile moves by less than one merged bin width.

Cost (measured on PP-OCRv4 det at 640x640: 134 observed tensors, 58 M values per sample): the
histogram is the dominant per-value work of calibration. Large tensors go to a compiled kernel
(numba, loaded in the background when the work repays its ~1 s load: 0.8 ns per value against
numpy's 1.9), else numpy in L2-sized steps with reused buffers (no tensor-sized temporaries);
both release the GIL, so the observer computes several tensors at once on threads. Small tensors
(digits: a few thousand values) are dominated by numpy's per-call cost instead, so the observer
computes several samples' statistics in one pass (`stacked_stats`). Every path does the same
float32 arithmetic per value: the bins do not depend on which one ran. The per-sample archive is
one header and the bins as uint16 with the few wider ones listed apart, deflated only from 1 MB.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048
FORMAT_VERSION = 5  # 5: scalars as float64; 4: uint16 bins + the wider ones listed (1-4 are no longer read)
MAGIC = b"HBSTATS\x05"
DEFLATE_BYTES = 1 << 20  # payloads from this size are deflated (disk space); smaller ones are not worth the CPU
NARROW = np.iinfo(np.uint16).max  # bins above this count are stored apart (`SampleStats.to_bytes`)
HELD_BUDGET = 64 << 20  # histogram bytes of a whole calibration set held as they are; beyond, packed (`held`)
CHUNK = 1 << 16  # values per histogram step: its float32 and index buffers stay in L2


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor over one calibration sample.

    `hist[j]` counts finite |x| in [j·w, (j+1)·w) with w = absmax / bins (the top value falls in
    the last bin); when absmax is 0 every value is in bin 0. `nonfinite` counts NaN / ±Inf values,
    which are left out of everything else (a float model can produce them, e.g. Exp overflow).
    """

    min: float
    max: float
    absmax: float
    count: int
    hist: np.ndarray  # shape (bins,): int64 from tensor_stats; uint16 / uint32 (the counts fit) from stacked_stats, read back or compacted
    channel_absmax: np.ndarray | None = None  # float32, one per channel along `axis`
    axis: int | None = None
    nonfinite: int = 0

    @property
    def bins(self) -> int:
        return int(self.hist.shape[0])

    @property
    def bin_width(self) -> float:
        return self.absmax / self.bins

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        same_channels = (self.channel_absmax is None and other.channel_absmax is None) or (
            self.channel_absmax is not None and other.channel_absmax is not None
            and np.array_equal(self.channel_absmax, other.channel_absmax))
        return (self.min, self.max, self.absmax, self.count, self.axis, self.nonfinite) == (
            other.min, other.max, other.absmax, other.count, other.axis, other.nonfinite) and \
            np.array_equal(self.hist, other.hist) and same_channels

    __hash__ = None  # type: ignore[assignment]


def tensor_stats(x: np.ndarray, bins: int = DEFAULT_BINS, channel_axis: int | None = 1) -> TensorStats:
    """Statistics of one tensor from one sample.

    Passes over the data: per-channel min and max (every extremum follows from them), then
    |x|·bins/absmax truncated to a bin index and counted with `np.bincount`. `channel_axis` is the
    channel axis (1 for NCHW activations); None, or a tensor with too few dimensions, gives no
    per-channel absmax. An absmax below bins / FLT_MAX (≈ 6e-36) has no float32 scale: its
    histogram is taken in float64.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim == 0:
        x = x.reshape(1)  # a scalar is a one-value tensor
    axis = None
    if channel_axis is not None and x.ndim >= 2 and -x.ndim <= channel_axis < x.ndim:
        axis = channel_axis % x.ndim
    empty_channels = np.zeros(x.shape[axis], np.float32) if axis is not None else None
    if x.size == 0:
        return TensorStats(0.0, 0.0, 0.0, 0, np.zeros(bins, np.int64), empty_channels, axis)
    others = tuple(d for d in range(x.ndim) if d != axis) if axis is not None else None
    cmin, cmax = x.min(axis=others), x.max(axis=others)
    nonfinite = 0
    if not (np.isfinite(cmin).all() and np.isfinite(cmax).all()):  # NaN propagates through min / max
        finite = np.isfinite(x)
        nonfinite = int(x.size - np.count_nonzero(finite))
        if nonfinite == x.size:
            return TensorStats(0.0, 0.0, 0.0, 0, np.zeros(bins, np.int64), empty_channels, axis, nonfinite)
        cmin = np.where(finite, x, np.inf).min(axis=others)
        cmax = np.where(finite, x, -np.inf).max(axis=others)
        x = np.where(finite, x, np.float32(0))  # counted in bin 0 below, then taken out again
    lo, hi = float(np.min(cmin)), float(np.max(cmax))
    if axis is not None:
        channels = np.maximum(-cmin, cmax)
        channels[~np.isfinite(channels)] = 0.0  # a channel of only NaN / Inf
        channels = channels.astype(np.float32)
        absmax = float(channels.max())
    else:
        channels, absmax = None, max(-lo, hi)
    if absmax > 0:
        scale = _float32_scale(bins / absmax)
        hist = (_abs_histogram(x.reshape(-1), scale, bins) if scale is not None
                else _abs_histogram_float64(x.reshape(-1), bins / absmax, bins))
    else:
        hist = np.zeros(bins, np.int64)
        hist[0] = x.size
    if nonfinite:
        hist[0] -= nonfinite
    return TensorStats(lo, hi, absmax, int(x.size) - nonfinite, hist, channels, axis, nonfinite)


def stacked_stats(x: np.ndarray, count: int, bins: int = DEFAULT_BINS, channel_axis: int | None = 1
                  ) -> list[TensorStats]:
    """`tensor_stats` of each of `count` samples concatenated along axis 0, in one pass per step.

    For small tensors, where numpy's per-call cost outweighs the values (digits: 11 tensors of
    ≤ 8 K values, ~0.1 ms per `tensor_stats`): the reductions and the histogram run over the whole
    stack, each sample's bins offset by its position. Same arithmetic per value as `tensor_stats`
    (float32 scale rounded from bins / absmax), so the results are equal; a stack holding NaN / Inf
    or one that does not split evenly goes sample by sample.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if count < 1 or x.ndim == 0 or x.shape[0] % count:
        raise ValueError(f"cannot split a tensor of shape {x.shape} into {count} samples")
    size = x.shape[0] // count
    if count == 1 or x.size == 0:
        return [tensor_stats(x[k * size:(k + 1) * size], bins, channel_axis) for k in range(count)]
    per = x.reshape(count, size, *x.shape[1:])
    axis = None
    if channel_axis is not None and x.ndim >= 2 and -x.ndim <= channel_axis < x.ndim:
        axis = channel_axis % x.ndim
    if axis is not None:
        others = tuple(d + 1 for d in range(x.ndim) if d != axis)
        cmin, cmax = per.min(axis=others), per.max(axis=others)  # (count, channels)
        lo, hi = cmin.min(axis=1), cmax.max(axis=1)
    else:
        flat = per.reshape(count, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # NaN / Inf somewhere: the careful path
        return [tensor_stats(per[k], bins, channel_axis) for k in range(count)]
    if axis is not None:
        channels = np.maximum(-cmin, cmax).astype(np.float32)
        absmax = channels.max(axis=1)
    else:
        channels, absmax = None, np.maximum(-lo, hi)
    absmax64 = absmax.astype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):  # absmax 0: scale 0 puts every (finite) value in bin 0
        scale = np.where(absmax64 > 0, bins / np.where(absmax64 > 0, absmax64, 1.0), 0.0).astype(np.float32)
    if not np.isfinite(scale).all():  # absmax < bins / FLT_MAX (≈ 6e-36): tensor_stats' float64 histogram
        return [tensor_stats(per[k], bins, channel_axis) for k in range(count)]
    n = per[0].size
    # already in the narrow dtype the stage keeps (`SampleStats.compact`): rows of one small matrix
    hist = _stacked_histogram(per.reshape(count, n), scale, bins, _count_dtype(n))
    lows, highs, tops = lo.tolist(), hi.tolist(), absmax.tolist()  # Python floats, as float(lo[k]): exact
    return [_tensor_stats_of(lows[k], highs[k], tops[k], n, hist[k], channels[k] if channels is not None else None, axis)
            for k in range(count)]


def _tensor_stats_of(lo: float, hi: float, absmax: float, count: int, hist: np.ndarray,
                     channels: np.ndarray | None, axis: int | None, nonfinite: int = 0) -> TensorStats:
    """`TensorStats(...)` without the frozen dataclass's field-by-field `object.__setattr__` (4.2 → 2.1 µs:
    digits' stacked statistics build 352 of them per pass, its archives read back 11 per sample)."""
    made = _new(TensorStats)
    made.__dict__.update(min=lo, max=hi, absmax=absmax, count=count, hist=hist, channel_absmax=channels, axis=axis,
                         nonfinite=nonfinite)
    return made


_new = object.__new__


def _stacked_histogram(rows: np.ndarray, scale: np.ndarray, bins: int, dtype: np.dtype | None = None) -> np.ndarray:
    """(samples, bins) counts of trunc(|x|·scale[k]) per row k, the top value in the last bin, as
    `dtype` (default int64).

    Several rows at a time through this thread's `CHUNK`-sized buffers (as `_abs_histogram_numpy`),
    each row's bins offset by its position in the step: fresh tensor-sized temporaries were fresh
    pages, whose faults cost more than the arithmetic (digits' 8×32×32 ReLU, 32 samples: 2.6 →
    0.6 ms). A row takes bins + 1 counters, the last one for |x| = absmax (index `bins`), folded into
    the last bin afterwards: a clamp of every index (np.minimum, 0.3 ns per value) cost a fifth of
    the step. Rows longer than a step go through `_abs_histogram_numpy`: the same float32 product,
    abs and truncation either way."""
    count, n = rows.shape
    hist = np.empty((count, bins), dtype or np.int64)
    if n > CHUNK:
        for k in range(count):
            hist[k] = _abs_histogram_numpy(rows[k], scale[k], bins)
        return hist
    values, index, wide = _step_buffers()
    step = CHUNK // max(n, 1)
    width = bins + 1
    for start in range(0, count, step):
        stop = min(start + step, count)
        v = values[:(stop - start) * n].reshape(stop - start, n)
        i = index[:(stop - start) * n].reshape(stop - start, n)
        np.multiply(rows[start:stop], scale[start:stop, None], out=v)
        np.abs(v, out=v)
        np.copyto(i, v, casting="unsafe")  # truncation, as astype; |x|·scale ≤ bins + 1 ulp: index ≤ bins
        i += _offsets(stop - start, width)[:, None]
        w = wide[:(stop - start) * n]
        np.copyto(w, i.reshape(-1))
        counts = np.bincount(w, minlength=(stop - start) * width).reshape(stop - start, width)
        counts[:, bins - 1] += counts[:, bins]  # |x| = absmax (index bins) belongs to the last bin
        hist[start:stop] = counts[:, :bins]
    return hist


def _offsets(count: int, bins: int) -> np.ndarray:
    return np.arange(0, count * bins, bins, dtype=np.int32)


def _step_buffers() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's float32 values, int32 bin indices and intp (bincount's own index type) bin indices
    of one `CHUNK`. Truncating float32 to int32 is one SIMD pass, widening to intp another (0.08 + 0.15
    ns per value, against 0.5 for float32 → int64 at once); handed int32, bincount made its own intp copy,
    a fresh 512 KB whose page faults made counting a step of digits' 32 stacked samples 7.6 ns per
    value instead of 1.6."""
    if getattr(_buffers, "values", None) is None:
        _buffers.values, _buffers.index = np.empty(CHUNK, np.float32), np.empty(CHUNK, np.int32)
        _buffers.wide = np.empty(CHUNK, np.intp)
    return _buffers.values, _buffers.index, _buffers.wide


_buffers = threading.local()


def _abs_histogram(flat: np.ndarray, scale: np.float32, bins: int) -> np.ndarray:
    """Counts of trunc(|x|·scale) in `bins` bins, the top value (index `bins`) in the last one.

    The compiled kernel (`load_kernel`) when it is loaded and the tensor is large enough to pay
    for the call, else numpy in steps of `CHUNK` values through per-thread buffers; both do the
    same float32 arithmetic, so the bins are identical whichever runs.
    """
    kernel = _kernel["fn"]
    if kernel is not None and flat.size >= KERNEL_VALUES and flat.dtype == np.float32:
        if flat.size <= KERNEL_SPAN:
            return kernel(flat, np.float32(scale), bins)
        return sum(kernel(flat[i:i + KERNEL_SPAN], np.float32(scale), bins) for i in range(0, flat.size, KERNEL_SPAN))
    return _abs_histogram_numpy(flat, scale, bins)


def _float32_scale(scale: float) -> np.float32 | None:
    """bins / absmax in float32, or None when it overflows (absmax below bins / FLT_MAX ≈ 6e-36:
    the product would be inf, 0 · inf NaN, and its int cast a negative bin)."""
    with np.errstate(over="ignore"):
        s32 = np.float32(scale)
    return s32 if np.isfinite(s32) else None


def _abs_histogram_float64(flat: np.ndarray, scale: float, bins: int) -> np.ndarray:
    """`_abs_histogram` for tiny ranges whose scale has no float32: the same bins computed in float64."""
    hist = np.zeros(bins, np.int64)
    for start in range(0, flat.size, CHUNK):
        index = np.abs(flat[start:start + CHUNK].astype(np.float64) * scale).astype(np.int64)
        np.minimum(index, bins - 1, out=index)  # |x| = absmax belongs to the last bin
        hist += np.bincount(index, minlength=bins)
    return hist


def _abs_histogram_numpy(flat: np.ndarray, scale: np.float32, bins: int) -> np.ndarray:
    """`_abs_histogram` in numpy: the one-shot ``bincount((|x·scale|).astype(intp))`` in steps."""
    values, index, wide = _step_buffers()
    hist = np.zeros(bins + 1, np.int64)
    for start in range(0, flat.size, CHUNK):
        part = flat[start:start + CHUNK]
        v, i, w = values[:part.size], index[:part.size], wide[:part.size]
        np.multiply(part, scale, out=v)  # |x|·bins/absmax ∈ [0, bins]
        np.abs(v, out=v)
        np.copyto(i, v, casting="unsafe")  # truncation, as astype (|x|·scale ≤ bins + 1 ulp fits int32)
        np.copyto(w, i)
        counts = np.bincount(w, minlength=bins + 1)
        hist += counts[:bins + 1]
        hist[bins] += counts[bins + 1:].sum()
    hist[bins - 1] += hist[bins]  # |x| = absmax belongs to the last bin
    return hist[:bins]


# ---------------------------------------------------------------------------- compiled kernel
KERNEL_VALUES = 1 << 14  # values from which a tensor's histogram goes to the kernel (a call costs ~1 µs)
KERNEL_SPAN = 1 << 32  # values per kernel call: its four uint32 partial histograms cannot overflow
KERNEL_ENV = "HB_CALIBRATION_KERNEL"  # "numpy": never load the compiled kernel
_kernel: dict = {"fn": None, "rebin": None, "thread": None, "error": None}
_kernel_lock = threading.Lock()


def _build_kernel():  # noqa: ANN202 - a numba dispatcher
    """The histogram as a numba loop (cache=True: compiled once per environment, ~0.5 s to load).

    Four interleaved partial histograms: in ReLU outputs runs of zeros hit the same bin, and one
    counter would make every increment wait for the previous one (1.06 → 0.80 ns per value on
    PP-OCRv4 det's activations, numpy 1.86). Bin indices and partial counts are unsigned 32-bit:
    a signed index costs numba's negative-index wraparound test on every increment, and the four
    uint32 partials take 32 KB (L1) where int64 ones took 64 KB (0.75 → 0.54 ns per value; a
    partial counts at most a quarter of `KERNEL_SPAN` values, so it cannot overflow). float32
    product, abs and truncation as in numpy (|x|·scale ≤ bins + 1 ulp: the unsigned cast is exact).
    """
    import numba

    @numba.njit(nogil=True, cache=True)
    def abs_histogram(flat, scale, bins):  # noqa: ANN001, ANN202
        part = np.zeros((4, bins), np.uint32)
        top = np.uint32(bins - 1)
        one = np.uint32(1)
        n = flat.size
        m = n - n % 4
        for i in range(0, m, 4):
            a = np.uint32(abs(flat[i] * scale))
            b = np.uint32(abs(flat[i + 1] * scale))
            c = np.uint32(abs(flat[i + 2] * scale))
            d = np.uint32(abs(flat[i + 3] * scale))
            part[0, min(a, top)] += one
            part[1, min(b, top)] += one
            part[2, min(c, top)] += one
            part[3, min(d, top)] += one
        for i in range(m, n):
            part[0, min(np.uint32(abs(flat[i] * scale)), top)] += one
        out = np.zeros(bins, np.int64)
        for k in range(4):
            for j in range(bins):
                out[j] += part[k, j]
        return out

    abs_histogram(np.zeros(4, np.float32), np.float32(1.0), 2)  # load (or compile) now, not in a worker
    return abs_histogram


def _build_rebin_kernel():  # noqa: ANN202 - a numba dispatcher
    """`_rebinned`'s rows as one numba loop: per row the cumulative counts (numpy's cumsum: one float64
    add per bin), the source edges k · (absmax / width) with the last one absmax (linspace), and
    np.interp's arithmetic at every merged edge — the bin j with xp[j] ≤ x < xp[j+1] (unique: the
    edges strictly increase), its end values at and past the last edge, slopes (dy[j+1] − dy[j]) /
    (dx[j+1] − dx[j]) and slope · (x − dx[j]) + dy[j] — then the differences (np.diff). The same
    operations on the same operands in the same order, so the same bits (tested against the numpy
    path); no per-row calls: 134 det-sized merges of 32 samples 117-125 → 78-80 CPU ms."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def rebin_rows(hists, absmax, out_edges, diffs):  # noqa: ANN001, ANN202
        rows, width = hists.shape
        points = out_edges.shape[0]
        for r in range(rows):
            top = absmax[r]
            step = top / width
            # one walk over the source bins as the merged edges rise: j with xp[j] ≤ x < xp[j+1], and the
            # cumulative counts cdf[j], cdf[j+1] summed bin by bin as cumsum does (never a step back)
            j = 0
            low, high = 0.0, np.float64(hists[r, 0])
            total, have_total = 0.0, False
            previous = 0.0
            for i in range(points):
                x = out_edges[i]
                if x >= top:  # at the last edge (j = width) and past it (right = fp[-1]): cdf[width]
                    if not have_total:
                        total = high
                        for k in range(j + 1, width):
                            total = total + np.float64(hists[r, k])
                        have_total = True
                    value = total
                elif x < 0.0:  # left = fp[0]
                    value = 0.0
                else:
                    while j + 1 < width and np.float64(j + 1) * step <= x:
                        j += 1
                        low = high
                        high = low + np.float64(hists[r, j])
                    start = np.float64(j) * step
                    if start == x or high == low:  # an edge, or an empty bin (slope 0): cdf[j]
                        value = low
                    else:  # the slope np.interp precomputes for every bin, here for the bins used
                        end = np.float64(j + 1) * step if j + 1 < width else top
                        slope = (high - low) / (end - start)
                        value = slope * (x - start) + low
                        if np.isnan(value):  # np.interp: if NaN in one direction, try the other
                            value = slope * (x - end) + high
                            if np.isnan(value) and low == high:
                                value = low
                if i > 0:
                    diffs[r, i - 1] = value - previous
                previous = value

    # the types `_rebinned` passes (its counts are a strided view of a scratch array): loaded or compiled now
    rebin_rows(np.zeros((2, 3))[:, :2], np.ones(2), np.linspace(0.0, 1.0, 3), np.empty((2, 2)))  # 'A' layout
    return rebin_rows


def _load_kernel() -> None:
    try:
        fn = _build_kernel()
    except Exception as e:  # noqa: BLE001 - no numba, or it cannot compile here: numpy does the same work
        _kernel["error"] = f"{e.__class__.__name__}: {e}"
        return
    try:
        _kernel["rebin"] = _build_rebin_kernel()
    except Exception:  # noqa: BLE001 - the merge then runs in numpy, with the same bits
        _kernel["rebin"] = None
    _kernel["fn"] = fn


def load_kernel(wait: bool = False) -> bool:
    """Load the compiled histogram kernel once per process, on a background thread unless `wait`.

    Until it is ready (or when numba is missing) histograms run in numpy, with identical bins: a
    caller starts the load when its work is large enough to repay ~1 s of import and load (a
    32-sample PP-OCRv4 det calibration saves ~2 s of CPU). Returns whether the kernel is ready.
    """
    if os.environ.get(KERNEL_ENV, "").lower() == "numpy":
        return False
    with _kernel_lock:
        thread = _kernel["thread"]
        if thread is None:
            thread = _kernel["thread"] = threading.Thread(target=_load_kernel, name="hb-calibration-kernel",
                                                          daemon=True)
            thread.start()
    if wait:
        thread.join()
    return _kernel["fn"] is not None


def kernel_status() -> str:
    """"loaded", "loading", "numpy" (never asked for) or why it could not load."""
    if _kernel["fn"] is not None:
        return "loaded"
    if _kernel["error"]:
        return f"numpy ({_kernel['error']})"
    thread = _kernel["thread"]
    return "loading" if thread is not None and thread.is_alive() else "numpy"


def finite_absmax(x: np.ndarray) -> float:
    """max |x| over the finite values (0 when there are none): a tolerance that NaN / Inf cannot spoil."""
    finite = np.abs(x[np.isfinite(x)])
    return float(finite.max()) if finite.size else 0.0


@dataclass(frozen=True)
class MergedStats:
    """Statistics of one tensor over a set of samples.

    `hist` (float64: redistributed counts) covers [0, absmax] with `bins` bins. `absmax_sample`
    is the label (by default the position) of the sample that holds the largest |x|.
    """

    min: float
    max: float
    absmax: float
    count: int
    hist: np.ndarray
    channel_absmax: np.ndarray | None
    axis: int | None
    absmax_sample: int | str | None
    samples: int
    nonfinite: int = 0

    @property
    def bins(self) -> int:
        return int(self.hist.shape[0])

    @property
    def bin_width(self) -> float:
        return self.absmax / self.bins

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.absmax, self.bins + 1)


def rebin(hist: np.ndarray, absmax: float, target_absmax: float, bins: int | None = None) -> np.ndarray:
    """Move a histogram on [0, absmax] onto `bins` equal bins over [0, target_absmax] ≥ absmax.

    Mass is uniform inside a source bin, so the merged bin gets the source CDF's increase over it:
    F(t) is piecewise linear through the cumulative counts at the source edges (np.interp).
    """
    bins = bins or hist.shape[0]
    out_edges = np.linspace(0.0, target_absmax, bins + 1)
    if absmax <= 0 or target_absmax <= 0:
        out = np.zeros(bins, np.float64)
        out[0] = float(hist.sum())
        return out
    if absmax > target_absmax:
        raise ValueError(f"cannot rebin onto a smaller range ({absmax} > {target_absmax})")
    src_edges = np.linspace(0.0, absmax, hist.shape[0] + 1)
    cdf = np.concatenate(([0.0], np.cumsum(hist, dtype=np.float64)))
    return np.diff(np.interp(out_edges, src_edges, cdf))


def _canonical_order(stats: Sequence[TensorStats]) -> list[int]:
    """An order that depends only on the values, so floating-point sums are order-independent.

    By (absmax, max, min, count), and by the bins' bytes only where those tie (building every
    sample's bytes cost more than the sort)."""
    def scalars(i: int) -> tuple:
        return stats[i].absmax, stats[i].max, stats[i].min, stats[i].count

    order = sorted(range(len(stats)), key=scalars)
    if any(scalars(a) == scalars(b) for a, b in zip(order, order[1:])):
        order = sorted(range(len(stats)), key=lambda i: (*scalars(i), stats[i].hist.astype(np.int64).tobytes()))
    return order


def _rebinned(stats: Sequence[TensorStats], target_absmax: float, bins: int) -> dict[int, np.ndarray]:
    """`rebin` of every sample onto [0, target_absmax] in `bins` bins, by position.

    The samples with a range (0 < absmax ≤ target, the common bin count) take their source edges
    and cumulative counts as rows of two arrays, one call each (the same linspace / cumsum
    arithmetic per row as `rebin`, tested bit for bit), and one np.interp per row: per-sample
    calls to linspace, cumsum and concatenate were most of a merge (digits: 352 calls, ~55 µs each).
    The rows live in per-thread scratch arrays reused by every merge: fresh arrays of a few hundred
    KB are fresh pages, whose faults cost as much as the arithmetic (digits, 32 samples: 1.6 → 0.8 ms
    per tensor). The returned rows are views into that scratch, valid until the thread's next call.
    """
    rows = [i for i, s in enumerate(stats) if 0 < s.absmax <= target_absmax and s.hist.shape[0] == stats[0].hist.shape[0]]
    vectorized = set(rows)
    out = {i: rebin(s.hist, s.absmax, target_absmax, bins) for i, s in enumerate(stats) if i not in vectorized}
    if not rows:
        return out
    width = stats[rows[0]].hist.shape[0]
    src_edges, cdf, moved, diffs = _merge_scratch(len(rows), width, bins)
    if _kernel["rebin"] is not None:  # loaded for a large statistics pass (`load_kernel`): the same bits
        np.stack([stats[i].hist for i in rows], out=cdf[:, :width], casting="unsafe")
        _kernel["rebin"](cdf[:, :width], np.array([stats[i].absmax for i in rows], np.float64),
                         np.linspace(0.0, target_absmax, bins + 1), diffs)
        out.update((i, diffs[r]) for r, i in enumerate(rows))
        return out
    # np.linspace(0, absmax, width + 1, axis=1) row by row, as linspace computes it: k · (absmax / width), the
    # last edge absmax itself (`rebin`'s edges; a fresh strided linspace also cost interp a copy per row)
    absmax = np.array([stats[i].absmax for i in rows], np.float64)
    np.multiply(_arange(width + 1), (absmax / width)[:, None], out=src_edges)
    src_edges[:, width] = absmax
    cdf[:, 0] = 0.0
    np.stack([stats[i].hist for i in rows], out=cdf[:, 1:], casting="unsafe")  # counts < 2^53: exact in float64
    np.cumsum(cdf, axis=1, out=cdf)  # in place: 3x faster than cumsum with a dtype cast
    out_edges = np.linspace(0.0, target_absmax, bins + 1)
    for r in range(len(rows)):
        moved[r] = np.interp(out_edges, src_edges[r], cdf[r])
    np.subtract(moved[:, 1:], moved[:, :-1], out=diffs)  # np.diff
    out.update((i, diffs[r]) for r, i in enumerate(rows))
    return out


_scratch = threading.local()


def _merge_scratch(rows: int, width: int, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This thread's (rows, width + 1) source edges and cumulative counts, (rows, bins + 1) moved
    cumulative counts and (rows, bins) differences, grown when a merge needs more rows."""
    have = getattr(_scratch, "arrays", None)
    if have is None or have[0].shape[0] < rows or have[0].shape[1] != width + 1 or have[2].shape[1] != bins + 1:
        size = max(rows, have[0].shape[0] if have is not None else 0)
        have = _scratch.arrays = (np.empty((size, width + 1)), np.empty((size, width + 1)),
                                  np.empty((size, bins + 1)), np.empty((size, bins)))
    return tuple(a[:rows] for a in have)  # type: ignore[return-value]


SCRATCH_KEPT = 4 << 20  # bytes of merge scratch a thread keeps between merges (more goes: 128 samples' is 8 MB)


def _release_scratch() -> None:
    """Drop this thread's merge scratch when it is large: it must not raise the peak RSS of what runs
    after the merge with the number of samples (a few MB kept serve every merge of up to ~60 samples)."""
    have = getattr(_scratch, "arrays", None)
    if have is not None and sum(a.nbytes for a in have) > SCRATCH_KEPT:
        _scratch.arrays = None


def _arange(n: int) -> np.ndarray:
    """0.0, 1.0, …, n − 1 as float64 (linspace's steps), kept per length."""
    cached = getattr(_scratch, "arange", None)
    if cached is None or cached.shape[0] != n:
        cached = _scratch.arange = np.arange(n, dtype=np.float64)
    return cached


class RebinnedRows:
    """A warm engine's rebinned histogram rows from its last merge, per tensor and by the statistics
    object they came from, so the next merge moves only the samples that changed (issue #8: one of 32
    calibration files changed; digits' merge was 11 CPU ms of the re-run's ~50).

    A row is reused only for the very `TensorStats` object it was computed from (the warm engine keeps
    unchanged samples' statistics as the same objects, `memo.DecodedStats`) and the same merged range
    and bin count: a row is a function of those alone, so the merge gives the same bits. Rows of
    samples a merge did not see are dropped. Rows are kept only for a whole merge that fits `budget`
    (digits' 32 samples: 5.8 MB; at 128 samples, 23 MB, and PP-OCRv4 det's 70 MB, are not kept): the
    rows outlive the merge, and rows that grew with the samples would grow the peak RSS with them (the
    issue's 128- vs 16-sample target).
    """

    def __init__(self, budget: int = 8 << 20):
        self.budget = budget
        self.nbytes = 0
        self._tensors: dict[str, tuple[float, int, dict[int, tuple[TensorStats, np.ndarray]]]] = {}

    def rebinned(self, tensor: str, stats: Sequence[TensorStats], target_absmax: float, bins: int
                 ) -> dict[int, np.ndarray]:
        """`_rebinned(stats, target_absmax, bins)`, reading the rows it holds and keeping the new ones."""
        target, width, rows = self._tensors.pop(tensor, (None, None, {}))
        self.nbytes -= sum(row.nbytes for _, row in rows.values())
        if (target, width) != (target_absmax, bins):
            rows = {}
        found = {i: hit[1] for i, s in enumerate(stats) if (hit := rows.get(id(s))) is not None and hit[0] is s}
        missing = [i for i in range(len(stats)) if i not in found]
        if missing:
            computed = _rebinned([stats[i] for i in missing], target_absmax, bins)
            found.update((i, computed[k]) for k, i in enumerate(missing))
        size = sum(row.nbytes for row in found.values())
        if self.nbytes + size <= self.budget:  # copies: `_rebinned`'s rows are views of scratch arrays
            kept = {id(stats[i]): (stats[i], row if i not in missing else row.copy()) for i, row in found.items()}
            self._tensors[tensor] = (target_absmax, bins, kept)
            self.nbytes += size
        return found


    def fits(self, samples: Sequence[Mapping[str, TensorStats]]) -> bool:
        """Whether the rows of merging `samples` (every tensor, every sample) fit the budget."""
        return len(samples) * sum(8 * s.hist.shape[0] for s in samples[0].values()) <= self.budget

    def clear(self) -> None:
        self._tensors, self.nbytes = {}, 0

    def retain(self, tensors: Sequence[str]) -> None:
        """Drop the rows of tensors other than `tensors` (another model's, or no longer observed)."""
        for name in set(self._tensors) - set(tensors):
            self.nbytes -= sum(row.nbytes for _, row in self._tensors.pop(name)[2].values())


def merge(stats_list: Sequence[TensorStats], labels: Sequence[int | str] | None = None,
          bins: int | None = None, rows: tuple[RebinnedRows, str] | None = None) -> MergedStats:
    """Merge one tensor's per-sample statistics (see the module docstring for the histogram maths).

    `labels` name the samples for provenance (default: their positions); ties for the largest |x|
    go to the smallest label, so the result does not depend on the order of `stats_list`. `rows`: a
    warm engine's `RebinnedRows` and this tensor's name in it.
    """
    if not stats_list:
        raise ValueError("merge() needs at least one sample's statistics")
    labels = list(range(len(stats_list))) if labels is None else list(labels)
    if len(labels) != len(stats_list):
        raise ValueError(f"{len(labels)} labels for {len(stats_list)} statistics")
    bins = bins or stats_list[0].bins
    axes = {s.axis for s in stats_list}
    if len(axes) != 1:
        raise ValueError(f"samples disagree on the channel axis: {sorted(map(str, axes))}")
    order = _canonical_order(stats_list)
    present = [i for i in order if stats_list[i].count]  # all-NaN / empty samples hold no values
    absmax = max((stats_list[i].absmax for i in present), default=0.0)
    hist = np.zeros(bins, np.float64)
    moved = _rebinned(stats_list, absmax, bins) if rows is None else rows[0].rebinned(rows[1], stats_list, absmax, bins)
    for i in order:  # canonical order: identical sums for any input order
        hist += moved[i]
    top = [labels[i] for i in present if stats_list[i].absmax == absmax]
    channels = None
    if stats_list[0].channel_absmax is not None:
        shapes = {s.channel_absmax.shape for s in stats_list}
        if len(shapes) != 1:
            raise ValueError(f"samples disagree on the channel count: {sorted(shapes)}")
        channels = np.max(np.stack([s.channel_absmax for s in stats_list]), axis=0)
    return MergedStats(
        min=min((stats_list[i].min for i in present), default=0.0),
        max=max((stats_list[i].max for i in present), default=0.0),
        absmax=absmax, count=sum(s.count for s in stats_list), hist=hist, channel_absmax=channels,
        axis=next(iter(axes)), absmax_sample=min(top, key=_label_key) if top else None,
        samples=len(stats_list), nonfinite=sum(s.nonfinite for s in stats_list))


def _label_key(label: int | str) -> tuple[int, int | str]:
    return (0, label) if isinstance(label, int) else (1, str(label))


@dataclass
class SampleStats(Mapping[str, TensorStats]):
    """All observed tensors' statistics for one calibration sample; the unit the stage caches.

    Serialized (`to_bytes`) as a JSON header with the names and scalars, then every histogram and
    per-channel array in one deflate stream: no pickle, any character in a tensor name.
    """

    tensors: dict[str, TensorStats] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def to_bytes(self) -> bytes:
        """Format 5: `MAGIC`, the JSON header's length (uint32 LE) and the header — format, version, the
        tensors' names, axes, bin and channel counts (the same for every sample of a model: its text is
        built once per layout, `_layout_text`), how many wide bins, deflate, CRC-32 — then each tensor's
        min, max, absmax, count and non-finite count (float64: exact), every histogram's bins as uint16
        (one above `NARROW` stored as NARROW), the wider bins' positions (uint32) and counts (uint64),
        and every per-channel array (float32), in header order; one level-1 deflate stream when that
        takes at least `DEFLATE_BYTES`. PP-OCRv4 det: 134 histograms with ~40 bins above 65535 (zeros
        of ReLU outputs, mostly): 0.55 MB written as is, where format 3 held every bin as uint32 (1.1 MB)
        and deflated it (9-30 ms CPU per sample on a loaded machine: a third of the statistics pass's
        cost over the forward pass at 320x320; reading it back 7 ms). The scalars were JSON: encoding
        their float reprs was most of digits' 80 µs per archive."""
        stats = list(self.tensors.values())
        scalars = np.array([(s.min, s.max, s.absmax, s.count, s.nonfinite) for s in stats], "<f8").reshape(-1, 5)
        parts, positions, values, offset = [scalars.tobytes()], [], [], 0
        for s in stats:  # one histogram at a time: no temporary the size of them all
            hist = s.hist
            if hist.dtype.itemsize > 2 and (over := np.flatnonzero(hist > NARROW)).size:
                positions.append(over + offset)
                values.append(hist[over])
                hist = np.minimum(hist, NARROW)
            parts.append(hist.tobytes() if hist.dtype == _LE_U2 else hist.astype("<u2").tobytes())  # C order either way
            offset += hist.shape[0]
        wide = np.concatenate(positions) if positions else np.zeros(0, np.intp)
        parts += [wide.astype("<u4").tobytes(), (np.concatenate(values) if values else wide).astype("<u8").tobytes()]
        parts += [s.channel_absmax.tobytes() if s.channel_absmax.dtype == _LE_F4 else s.channel_absmax.astype("<f4").tobytes()
                  for s in stats if s.channel_absmax is not None]
        payload = b"".join(parts)
        deflate = len(payload) >= DEFLATE_BYTES
        if deflate:
            payload = zlib.compress(payload, 1)
        layout = tuple((name, s.axis, int(s.hist.shape[0]), None if s.channel_absmax is None
                        else tuple(s.channel_absmax.shape)) for name, s in self.tensors.items())
        header = (f'{{"format": "hbcompile.calibration.SampleStats", "version": {FORMAT_VERSION}, "wide": {wide.size}, '
                  f'"deflate": {"true" if deflate else "false"}, "crc32": {zlib.crc32(payload)}, '
                  f'"tensors": {_layout_text(layout)}}}').encode()
        return MAGIC + len(header).to_bytes(4, "little") + header + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> SampleStats:
        """Read what `to_bytes` wrote; a corrupt or foreign archive (or an older format) raises ValueError."""
        try:
            if data[:len(MAGIC)] != MAGIC:
                raise ValueError("not a SampleStats archive")
            start = len(MAGIC) + 4
            size = int.from_bytes(data[len(MAGIC):start], "little")
            header = json.loads(data[start:start + size].decode())
            if header.get("format") != "hbcompile.calibration.SampleStats" or header.get("version") != FORMAT_VERSION:
                raise ValueError(f"SampleStats format {header.get('format')} version {header.get('version')}")
            payload = data[start + size:]
            if zlib.crc32(payload) != header["crc32"]:
                raise ValueError("checksum mismatch (a torn or altered file)")
            if header["deflate"]:
                payload = zlib.decompress(payload)
            specs = header["tensors"]
            bins = [int(t["bins"]) for t in specs]
            wide = int(header["wide"])
            scalars = np.frombuffer(payload, "<f8", count=5 * len(specs)).reshape(-1, 5).tolist()
            offset = 40 * len(specs)
            hists = np.frombuffer(payload, "<u2", count=sum(bins), offset=offset)
            offset += hists.nbytes
            positions = np.frombuffer(payload, "<u4", count=wide, offset=offset)
            offset += positions.nbytes
            values = np.frombuffer(payload, "<u8", count=wide, offset=offset)
            offset += values.nbytes
            if wide:
                if int(positions.max()) >= hists.shape[0] or int(values.max()) >= 1 << 63:
                    raise ValueError("a wide bin outside the histograms")
                hists = hists.astype(np.int64)
                hists[positions] = values
            channel_counts = [int(np.prod(t["channels"])) if t["channels"] is not None else 0 for t in specs]
            channels = np.frombuffer(payload, "<f4", count=sum(channel_counts), offset=offset)
            if offset + channels.nbytes != len(payload):
                raise ValueError("payload size does not match the header")
            tensors, h, c = {}, 0, 0
            for t, n, k, (lo, hi, top, count, nonfinite) in zip(specs, bins, channel_counts, scalars, strict=True):
                tensors[t["name"]] = TensorStats(
                    min=lo, max=hi, absmax=top, count=int(count), hist=_counts(hists[h:h + n], int(count)),
                    channel_absmax=channels[c:c + k].reshape(t["channels"]).astype(np.float32)
                    if t["channels"] is not None else None,
                    axis=t["axis"], nonfinite=int(nonfinite))
                h, c = h + n, c + k
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, zlib.error) as e:
            raise ValueError(f"corrupt SampleStats archive: {e}") from e
        return cls(tensors)

    def compact(self) -> SampleStats:
        """The same statistics with histograms in the narrowest dtype that holds them (`_counts`):
        what the calibrate stage keeps in memory for every sample."""
        if all(s.hist.dtype == _count_dtype(s.count) for s in self.tensors.values()):
            return self  # already compact (a warm engine's kept statistics, every run)
        out = {}
        for name, s in self.tensors.items():
            narrow = s.hist if s.hist.dtype == _count_dtype(s.count) else _counts(s.hist, s.count)
            out[name] = s if narrow is s.hist else TensorStats(s.min, s.max, s.absmax, s.count, narrow,
                                                               s.channel_absmax, s.axis, s.nonfinite)
        return SampleStats(out)

    def held(self, samples: int = 1) -> Mapping[str, TensorStats]:
        """What to hold of this sample until the merge of `samples` samples: `compact`, or
        `PackedSampleStats` when that many samples' histograms would take `HELD_BUDGET` or more
        (PP-OCRv4 det: 0.9 MB per sample, which made the statistics pass's peak RSS grow by ~1 MB
        per sample: 16 → 128 samples at 320x320, 436 → 544 MB). Packing costs ~10 ms CPU per det
        sample, so a set that fits the budget is held as it is."""
        compact = self.compact()
        if samples * sum(s.hist.nbytes for s in compact.tensors.values()) < HELD_BUDGET:
            return compact
        return PackedSampleStats(compact)


_layouts: dict[tuple, str] = {}


def _layout_text(layout: tuple) -> str:
    """The header's JSON list of a model's tensors (name, axis, bins, channels), built once per layout."""
    text = _layouts.get(layout)
    if text is None:
        if len(_layouts) >= 16:  # a few models per process
            _layouts.clear()
        text = _layouts[layout] = json.dumps([{"name": name, "axis": axis, "bins": bins,
                                               "channels": None if channels is None else list(channels)}
                                              for name, axis, bins, channels in layout])
    return text


class PackedSampleStats(Mapping[str, TensorStats]):
    """A sample's statistics with each histogram deflated on its own, decoded when a tensor is looked up.

    `merge_samples` merges one tensor at a time, so only that tensor's histograms are ever decoded
    at once; everything else stays as held (det: 1.1 MB → ~0.2 MB per sample, ~5 ms CPU to pack,
    ~3 ms to decode, per sample).
    """

    def __init__(self, stats: Mapping[str, TensorStats]):
        self._stats = {name: TensorStats(s.min, s.max, s.absmax, s.count, np.empty(0, s.hist.dtype),
                                         s.channel_absmax, s.axis, s.nonfinite) for name, s in stats.items()}
        self._bins = {name: int(s.hist.shape[0]) for name, s in stats.items()}
        self._packed = {name: zlib.compress(np.ascontiguousarray(s.hist).tobytes(), 1) for name, s in stats.items()}

    def __getitem__(self, name: str) -> TensorStats:
        s = self._stats[name]
        hist = np.frombuffer(zlib.decompress(self._packed[name]), s.hist.dtype, count=self._bins[name]).copy()
        return TensorStats(s.min, s.max, s.absmax, s.count, hist, s.channel_absmax, s.axis, s.nonfinite)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)


def _counts(hist: np.ndarray, count: int | None = None) -> np.ndarray:
    """A histogram read back, in the narrowest of uint16 / uint32 / int64 that holds its counts.

    The calibrate stage holds every sample's statistics at once: a PP-OCRv4 det sample's 134
    histograms take 2.2 MB as int64, 0.6 MB so (peak RSS at 128 samples was 1.21x that at 16).
    `count`: the tensor's value count, which bounds every bin (no scan); else read from the bins.
    Always a copy.
    """
    if count is None:
        low, count = (int(hist.min()), int(hist.max())) if hist.size else (0, 0)
        if low < 0:
            return hist.astype(np.int64)
    return hist.astype(_count_dtype(count))


_UINT16, _UINT32, _INT64 = np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.int64)
_LE_U2, _LE_F4 = np.dtype("<u2"), np.dtype("<f4")  # the archive's byte layouts


def _count_dtype(count: int) -> np.dtype:
    """The narrowest of uint16 / uint32 / int64 for bins that hold at most `count` values."""
    if count <= 0xFFFF:
        return _UINT16
    return _UINT32 if count <= 0xFFFF_FFFF else _INT64


def merge_samples(samples: Sequence[Mapping[str, TensorStats]],
                  labels: Sequence[int | str] | None = None, rows: RebinnedRows | None = None) -> dict[str, MergedStats]:
    """Merge every tensor over the samples (each sample must hold the same tensors); `rows`: a warm
    engine's rebinned rows of its last merge (`RebinnedRows`), reused where they apply."""
    if not samples:
        raise ValueError("merge_samples() needs at least one sample")
    names = list(samples[0])
    for k, s in enumerate(samples[1:], 1):
        if set(s) != set(names):
            missing = sorted(set(names) ^ set(s))
            raise ValueError(f"sample {k} does not hold the same tensors as sample 0: {missing[:5]}")
    if rows is not None and not rows.fits(samples):
        rows.clear()
        rows = None
    merged = {n: merge([s[n] for s in samples], labels, rows=None if rows is None else (rows, n)) for n in names}
    if rows is not None:
        rows.retain(names)
    _release_scratch()
    return merged


__all__ = ["DEFAULT_BINS", "MergedStats", "RebinnedRows", "SampleStats", "TensorStats", "merge", "merge_samples", "rebin",
           "tensor_stats"]
