"""Calibration: samples, observers, mergeable per-sample statistics and threshold methods.

Pure functions and small typed values; the calibrate stage persists what they return. The flow,
with statistics cached per sample by content hash::

    cs = load_calibration_set([source_for_input(s, cp.preprocess_on) for s in specs])  # lists, counts
    memo = StatsMemo(folder)                                 # the folder's pack: digest → archive
    per_sample = [memo.get(h) for h in cs.content_hashes()]  # SampleStats, or None
    todo = [i for i, st in enumerate(per_sample) if st is None]
    observer = Observer(optimized_model, tensors)
    for i, st in zip(todo, observer.observe(cs.samples(todo))):
        per_sample[i] = st
        memo.put(cs.content_hash(i), st)
    memo.save(cs.content_hashes())                           # one pack of the current samples
    merged = merge_samples(per_sample)                       # exact extrema, rebinned histograms
    found = thresholds(merged, "kl")                         # {tensor: Threshold}
"""

from engine.calibration.data import (
    RAW_DTYPES,
    CalibrationSet,
    CalibrationSource,
    calibration_dir_files,
    decode_sample,
    load_calibration_set,
    random_samples,
    source_for_input,
)
from engine.calibration.methods import (
    CALIBRATION_TYPES,
    MIN_THRESHOLD,
    Threshold,
    hist_quantile,
    kl_threshold,
    max_threshold,
    percentile_threshold,
    threshold,
    thresholds,
)
from engine.calibration.observer import Observer, activation_tensors, observe, with_outputs
from engine.calibration.stats import (
    DEFAULT_BINS,
    MergedStats,
    SampleStats,
    TensorStats,
    merge,
    merge_samples,
    tensor_stats,
)

__all__ = [
    "CALIBRATION_TYPES", "DEFAULT_BINS", "MIN_THRESHOLD", "RAW_DTYPES", "CalibrationSet", "CalibrationSource",
    "MergedStats", "Observer", "SampleStats", "TensorStats", "Threshold", "activation_tensors",
    "calibration_dir_files", "decode_sample",
    "hist_quantile", "kl_threshold", "load_calibration_set", "max_threshold", "merge", "merge_samples", "observe",
    "percentile_threshold", "random_samples", "source_for_input", "tensor_stats", "threshold", "thresholds", "with_outputs",
]
