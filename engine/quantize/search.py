"""`calibration_type`: choosing thresholds on top of `engine.calibration`'s methods.

- ``max`` / ``kl``: one method for every tensor (``max`` with ``max_percentile`` < 1 is
  max-percentile); ``per_channel`` gives per-channel thresholds.
- ``default`` (hb_mapper's automatic search): tries max, max-percentile 0.99995 and kl (and
  `mix`'s per-tensor thresholds, an addition here), builds the calibrated model for each, and
  measures its output cosine against the float model on each of the first `cosine_samples`
  calibration samples (hb uses the first sample). A few samples are a noisy judge, so the simplest
  candidate, ``max``, is kept unless another beats it by more than the noise: per sample, the gain
  is the log of max's output error (1 − cosine) over the candidate's, and its mean must exceed
  `SEARCH_Z` standard errors (`choose_candidate`); among those that do, the largest mean gain wins. Logs ``Select kl method.`` etc. Ties keep the
  earlier candidate in the order max, max-percentile, kl, mix. ``per_channel`` is ignored, as
  hb_compile documents.
- ``mix`` (per-node search): for each tensor, among the three methods' thresholds and a grid of
  48 more (2 % of max|x| to max|x|, geometric), the one with the least fake-quant mean squared
  error over the tensor's own merged histogram of |x| (bin centres as values: clipped values cost
  (|x| − t)², the others their rounding error to the grid t/127) — the threshold that minimizes
  the node's own output error. Vectorized over candidates × bins; merged histograms only.
- ``load``: thresholds from a QDQ model (each QuantizeLinear's scale: 127 · s for the symmetric
  int8 / uint8-at-128 encodings, the larger side of the represented range otherwise, e.g. 255 · s for
  onnxruntime's uint8 with zero point 0; per-axis scales give per-channel thresholds), keyed by the
  tensor the QuantizeLinear reads and, where its DequantizeLinear writes a graph output, by that output
  (onnxruntime renames the tensor in front of the pair) — or, for our own calibrated models, by the name
  in ``<tensor>_HzCalibration`` — or from a JSON file ``{tensor: threshold}``. Where it comes from is
  decided by the caller (`load_thresholds` takes a model, a path or a mapping): hb's meaning is "the
  onnx_model is a QAT model", whose pairs the frontend strips while keeping the scales
  (`engine.passes.strip_qdq`); `quant_config` may name the QDQ model (or JSON file) instead, for a float
  `onnx_model`. A tensor of the optimized model the source gives no threshold for (`find_loaded`):
  1. the inserted input normalization (`HZ_PREPROCESS_FOR_<input>…`): the source's threshold of input
     `x` is the normalized tensor's (a QDQ / QAT model takes the normalized input); the raw `x` and the
     steps between take the bound it implies back through mean / scale (|x| ≤ T/scale + |mean|): the raw
     values the source's own input quantization keeps, with no calibration data needed;
  2. a tensor read only by Relu / Clip takes their output threshold: onnxruntime removes these
     activations and quantizes only the producer's output under the activation's name and range
     (logged at debug level);
  3. the rest (tensors the source left in float: onnxruntime quantizes no Div, so the HardSwish of
     PP-OCR cls before a MaxPool has none) take ``max`` on the calibration data, with a warning naming
     them, when `cal_data_dir` is given; without calibration data they are one error naming them.
- ``skip``: thresholds from `skip_samples` (uniform 0–255 in the train view, standard normal for
  featuremap inputs) + max, with a warning: only good for performance and flow checks.

Every result says which method each tensor got (`ActQuant.method`) and, where models were run,
the output cosine of each candidate (`SearchResult.cosines`) for the log and quant_info.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from engine.calibration.methods import Threshold, kl_threshold, max_threshold, percentile_threshold, threshold
from engine.calibration.stats import MergedStats
from engine.passes.graph import Graph, constant_node_value
from engine.pipeline.recent import Recent
from engine.preprocess.normalization import normalized_name, preprocess_prefix
from engine.problems import CalibrationDataError, error, name_list
from engine.quantize.calibrated import (
    SUFFIX,
    CalibratedModel,
    build_calibrated_model,
    calibrated_model,
    scale_zero_point,
)
from engine.quantize.planner import QuantOptions, make_plan, zero_point_of
from engine.quantize.types import ActQuant, QuantPlan

log = logging.getLogger("hbcompile")

DEFAULT_PERCENTILE = 0.99995
# `default` replaces max only by a candidate whose mean per-sample gain ln((1 − cos_max) / (1 − cos_cand))
# exceeds this many standard errors of the gain. The ratio, not the cosine difference: a sample's error
# scales every candidate's alike, so the ratio varies little where the difference varies a lot.
# Calibrated models, first 4 of 32 calibration samples: PP-OCRv4 rec, max-percentile 0.48 ± 0.55 (kept max;
# by the mean cosine it won, 0.980 vs 0.968, and gave held-out CER 0.063 against max's 0.034 on 256
# lines); PP-OCRv4 det 640, max-percentile 1.14 ± 0.26 (chosen: held-out cosine 0.966 against max's 0.924)
SEARCH_Z = 2.0
ERROR_FLOOR = 1e-12  # 1 − cosine below this counts as this (a perfect sample must not give log 0)
SEARCH_TYPES = ("default", "mix", "kl", "max", "load", "skip")
Sample = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class SearchSettings:
    """The calibration_parameters the search reads."""

    calibration_type: str = "default"
    max_percentile: float = 1.0
    per_channel: bool = False
    cosine_samples: int = 1  # samples `default` compares outputs on (hb: the first one)
    search_percentile: float = DEFAULT_PERCENTILE  # the max-percentile candidate of default / mix
    skip_samples: int = 4  # random samples for `skip`

    @classmethod
    def from_config(cls, config) -> SearchSettings:
        cal = config.calibration
        return cls(cal.calibration_type, cal.max_percentile, cal.per_channel)


@dataclass
class SearchResult:
    acts: dict[str, ActQuant]  # tensor → threshold with its method (bits / axis are the planner's)
    method: str  # what was selected: "kl", "max", "max-percentile:percentile=0.99995", "mix", "load", "skip"
    cosines: dict[str, float] = field(default_factory=dict)  # candidate label → mean output cosine
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. mix: how many tensors took each method


def label(t: Threshold | str, percentile: float | None = None) -> str:
    """hb's name of a method in ``Select … method.``: max, max-percentile:percentile=p, kl."""
    method = t.method if isinstance(t, Threshold) else t
    if method == "max-percentile":
        p = t.detail.get("percentile") if isinstance(t, Threshold) else percentile
        return f"max-percentile:percentile={p}"
    return method


def _acts(found: Mapping[str, Threshold | float | np.ndarray], method: str | None = None) -> dict[str, ActQuant]:
    out = {}
    for name, t in found.items():
        if isinstance(t, Threshold):
            value = t.channels if t.channels is not None else t.value
            out[name] = ActQuant(name, value, axis=t.axis if t.channels is not None else None, method=label(t))
        else:
            arr = np.asarray(t, np.float64)
            out[name] = ActQuant(name, float(arr) if arr.ndim == 0 else arr, axis=None if arr.ndim == 0 else 1,
                                 method=method or "")
    return out


def single_method(merged: Mapping[str, MergedStats], calibration_type: str, max_percentile: float = 1.0,
                  per_channel: bool = False) -> dict[str, ActQuant]:
    """``max`` (with max_percentile) or ``kl`` for every tensor."""
    return _acts({n: threshold(s, calibration_type, max_percentile=max_percentile, per_channel=per_channel)
                  for n, s in merged.items()})


def candidates(merged: Mapping[str, MergedStats], percentile: float = DEFAULT_PERCENTILE
               ) -> dict[str, dict[str, Threshold]]:
    """The three per-tensor methods `default` and `mix` choose among, by label."""
    found: dict[str, dict[str, Threshold]] = {"max": {}, label("max-percentile", percentile): {}, "kl": {}}
    pkey = label("max-percentile", percentile)
    for name, s in merged.items():
        found["max"][name] = max_threshold(s)
        found[pkey][name] = percentile_threshold(s, percentile)
        found["kl"][name] = kl_threshold(s)
    return found


# ------------------------------------------------------------------------------------- default
def mean_cosines(per_sample: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each candidate's mean over its per-sample cosines (1.0 for no samples)."""
    return {k: float(np.mean(v)) if v.size else 1.0 for k, v in per_sample.items()}


def _same_array(a: Any, b: Any) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def same_layout(a: QuantPlan, b: QuantPlan) -> bool:
    """Whether the calibrated models of plans `a` and `b` can differ only in the values of their
    scale and zero-point initializers: the same fake-quantized tensors and weights in the same order
    with the same bits, axis and scale shape, the same placement and readers (`nodes`), the same bias
    corrections (what `calibrated_model` reads of a plan besides the scales). Weight scales may differ:
    the planner coarsens a weight's step where its int32 bias at s_in · s_w would overflow (PP-OCRv4
    rec and det: 3-4 convs whose s_in is the candidate's)."""
    acts_a, acts_b = a.calibrated_acts or a.acts, b.calibrated_acts or b.acts
    if list(acts_a) != list(acts_b) or a.nodes != b.nodes or list(a.weights) != list(b.weights) \
            or list(a.biases) != list(b.biases):
        return False
    for t, x in acts_a.items():
        y = acts_b[t]
        if (x.bits, x.axis, np.shape(x.scale)) != (y.bits, y.axis, np.shape(y.scale)):
            return False
    for name, x in a.weights.items():
        y = b.weights[name]
        if (x.tensor, x.axis, x.bits, x.groups, np.shape(x.scale)) != (y.tensor, y.axis, y.bits, y.groups, np.shape(y.scale)):
            return False
    for name, x in a.biases.items():
        cx, cy = getattr(x, "correction", None), getattr(b.biases[name], "correction", None)
        if (cx is None) != (cy is None) or (cx is not None and not _same_array(cx, cy)):
            return False
    return True


class CandidateScorer:
    """Output cosines of calibrated models that differ only in thresholds, in one onnxruntime session.

    Candidates (max, max-percentile, kl, mix) give the same plan with other scales, so their
    calibrated models differ only in the values of the Q/DQ scale initializers. One model is built
    (the first candidate's), every activation scale / zero point, and the weight ones whose values
    differ between the candidates' plans, become its graph inputs, and each candidate's values are
    fed: one model build and one session instead of one per candidate (digits: ~1 ms of model
    building and ~1.5 ms of session each), and one float reference session instead of one per sample
    (`References`). The fed model holds no threshold, so a warm engine keeps its session (`sessions`)
    for the next search of the same model. Fed or constant, the scales give the same cosines, bit
    for bit (digits, PP-OCR cls and rec: each candidate's own calibrated model). Plans whose layout
    differs (`same_layout`: a split output concat, another placement) get a model and a session each.
    """

    def __init__(self, model: onnx.ModelProto, samples: Sequence[Sample], options: QuantOptions,
                 reference: Sequence[Mapping[str, np.ndarray]] | None = None, sessions: Recent | None = None):
        from engine.accuracy.sessions import References

        self.model, self.options = model, options
        self.samples = list(samples)
        self.names = [o.name for o in model.graph.output]
        self.reference = list(reference) if reference is not None else References(model, self.samples).values
        self.sessions = sessions

    def cosines(self, tried: Mapping[str, Mapping[str, ActQuant]]) -> dict[str, float]:
        """Mean output cosine (over samples and outputs) of each candidate."""
        return mean_cosines(self.sample_cosines(tried))

    def sample_cosines(self, tried: Mapping[str, Mapping[str, ActQuant]]) -> dict[str, np.ndarray]:
        """Each candidate's output cosine per sample (mean over outputs): the paired values
        `choose_candidate` compares."""
        from engine.accuracy.sessions import quiet_session

        plans = {k: make_plan(self.model, acts, self.options) for k, acts in tried.items()}
        if not plans:
            return {}
        first = next(iter(plans.values()))
        if not all(same_layout(first, p) for p in plans.values()):  # structurally different: a session each
            return {k: self._per_sample(quiet_session(build_calibrated_model(self.model, p)), {})
                    for k, p in plans.items()}
        built = calibrated_model(self.model, first)
        values = {k: self._scale_values(p, built) for k, p in plans.items()}
        base = next(iter(values.values()))
        shared = built.model
        acts = {name for pair in built.act_params.values() for name in pair}
        fed = [t.name for t in shared.graph.initializer if t.name in base and (
            t.name in acts or any(not _same_array(v[t.name], base[t.name]) for v in values.values()))]
        session = self._session(_with_fed(shared, fed))
        return {k: self._per_sample(session, {n: v[n] for n in fed}) for k, v in values.items()}

    def _session(self, model: onnx.ModelProto):
        """A session of `model`; with `sessions` (a warm engine's), kept by the model's bytes. Every
        activation scale is fed (`_with_fed`), so the model holds no threshold: after a calibration file
        changed, the next search finds the same model (digits: ~2.5 of the search's ~13 CPU ms were
        building its session)."""
        from engine.accuracy.sessions import quiet_session

        if self.sessions is None:
            return quiet_session(model)
        data = model.SerializeToString()
        key = hashlib.sha256(data).hexdigest()
        return self.sessions.get(key) or self.sessions.put(key, quiet_session(data))

    @staticmethod
    def _scale_values(plan: QuantPlan, built: CalibratedModel) -> dict[str, np.ndarray]:
        """The values `plan` gives the built model's scale and zero-point initializers (as
        `calibrated_model` writes them)."""
        out: dict[str, np.ndarray] = {}
        for t, act in (plan.calibrated_acts or plan.acts).items():
            scale_name, zp_name = built.act_params[t]
            out[scale_name], out[zp_name] = scale_zero_point(act.scale, act.bits, zero_point_of(act))
        for w, (scale_name, zp_name) in built.weight_params.items():
            out[scale_name], out[zp_name] = scale_zero_point(plan.weights[w].scale, 8)
        return out

    def _per_sample(self, session, extra: Mapping[str, np.ndarray]) -> np.ndarray:
        from engine.accuracy.sessions import run_outputs
        from engine.similarity import mean_output_cosine

        got = [run_outputs(session, sample, self.names, extra) for sample in self.samples]
        return np.array([mean_output_cosine([r], [g], self.names) for r, g in zip(self.reference, got, strict=True)])


def _with_fed(model: onnx.ModelProto, fed: Sequence[str]) -> onnx.ModelProto:
    """`model` (in place) with the initializers `fed` as graph inputs (`lift_initializers`) and without the
    nodes' doc strings (a Q/DQ pair's names its threshold), so its bytes hold no threshold."""
    from engine.accuracy.sessions import lift_initializers

    for node in model.graph.node:
        node.ClearField("doc_string")
    return lift_initializers(model, set(fed))


@dataclass(frozen=True)
class Choice:
    """`default`'s decision: the chosen label, and per candidate its mean paired gain over the
    baseline, ln of the baseline's output error over its own, with that gain's standard error (0 with
    one sample: no noise estimate)."""

    best: str
    gains: dict[str, tuple[float, float]]


def choose_candidate(per_sample: Mapping[str, np.ndarray], baseline: str = "max", z: float = SEARCH_Z) -> Choice:
    """The baseline unless a candidate beats it by more than the noise of a few samples.

    Paired per sample (the samples are the same for every candidate): gain
    d_i = ln((1 − cos_i(baseline)) / (1 − cos_i(candidate))), how many times smaller the candidate's
    output error is (in e-folds), mean d̄ and standard error sd(d)/√n. A candidate qualifies when d̄ > z · SE (with
    one sample, d̄ > 0: hb's plain comparison); the qualifying one with the largest d̄ wins, ties to
    the earlier. A baseline missing from `per_sample` means the earliest candidate is the baseline."""
    names = list(per_sample)
    base = baseline if baseline in per_sample else names[0]
    def log_error(cos: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(1.0 - np.asarray(cos, np.float64), ERROR_FLOOR))

    ref = log_error(per_sample[base])
    gains: dict[str, tuple[float, float]] = {}
    best, best_gain = base, 0.0
    for name in names:
        d = ref - log_error(per_sample[name])
        mean = float(d.mean()) if d.size else 0.0
        se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        gains[name] = (mean, se)
        if name != base and mean > z * se and mean > best_gain:
            best, best_gain = name, mean
    return Choice(best, gains)


def search_default(model: onnx.ModelProto, merged: Mapping[str, MergedStats], samples: Sequence[Sample],
                   options: QuantOptions | None = None, cosine_samples: int = 1,
                   percentile: float = DEFAULT_PERCENTILE, with_mix: bool = True,
                   sessions: Recent | None = None) -> SearchResult:
    """hb's modelwise search: the method whose calibrated model's outputs are closest to float.

    Besides hb's three (max, max-percentile, kl), `with_mix` also tries `mix`'s per-tensor
    least-error thresholds (measured on PP-OCRv4 det, 8 held-out photos: output cosine 0.9755
    against 0.9733 for max-percentile, the best of the three); ties keep the earlier candidate.
    All candidates run in one session (`CandidateScorer`); `choose_candidate` keeps max unless another
    candidate's output error is smaller on `cosine_samples` samples by more than `SEARCH_Z` standard
    errors (log error ratio). `sessions`: where a warm engine keeps the scoring session (`CandidateScorer`)."""
    options = options or QuantOptions()
    chosen = list(samples[:max(int(cosine_samples), 1)])
    if not chosen:
        raise CalibrationDataError(error("calibration-no-samples", "calibration_type default compares the "
                                         "calibrated model with the float model on calibration samples, but "
                                         "there are none", ("calibration_parameters", "cal_data_dir")))
    log.info("Run calibration model with modelwise search method.")
    found = candidates(merged, percentile)
    tried = {name: _acts(per_tensor) for name, per_tensor in found.items()}
    if with_mix:  # the same three thresholds per tensor: kl's histogram search runs once
        tried["mix"] = search_mix(merged, percentile, quiet=True, found=found).acts
    per_sample = CandidateScorer(model, chosen, options, sessions=sessions).sample_cosines(tried)
    cosines = mean_cosines(per_sample)
    choice = choose_candidate(per_sample)
    for name, value in cosines.items():
        gain, se = choice.gains[name]
        log.debug(f"calibration method {name}: output cosine {value:.6f} (ln error ratio to max {gain:+.3f} ± "
                  f"{se:.3f} on {len(chosen)} samples)")
    log.info(f"Select {choice.best} method.")
    return SearchResult(tried[choice.best], choice.best, cosines,
                        {"samples": len(chosen), "gain_over_max": {k: list(v) for k, v in choice.gains.items()}})


# ----------------------------------------------------------------------------------------- mix
def fake_quant_mse(stats: MergedStats, thresholds: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Mean squared fake-quant error of the tensor's |x| histogram for each threshold (vectorized).

    Values are the bin centres c_k with weights h_k; for threshold t (scale s = t / qmax):
    err = (c − t)² where c > t (clipped), else (c − s·round(c / s))².
    """
    t = np.asarray(thresholds, np.float64).reshape(-1, 1)
    h = np.asarray(stats.hist, np.float64)
    total = h.sum()
    if total <= 0 or stats.absmax <= 0:
        return np.zeros(t.shape[0])
    c = (np.arange(h.shape[0]) + 0.5) * (stats.absmax / h.shape[0])
    return _mse_rows(h, c, t, qmax) / total


MIX_GRID = 48  # thresholds searched per tensor besides the three methods', from 2 % of max|x| to max|x|
# Thresholds whose error over the non-empty bins is within this share of the least are priced again exactly
# (`fake_quant_mse`): the two sums differ only in rounding (order and length), ~1e-13 of the value
MSE_MARGIN = 1e-9
SUM_ERROR = 1e-12  # relative error bound of the bounds' prefix sums of non-negative terms (2048 bins: ~5e-13)


def least_mse(stats: MergedStats, thresholds: np.ndarray, qmax: int = 127) -> int:
    """The position of `fake_quant_mse(stats, thresholds)`'s least value (the first of equals).

    Two narrowings, neither of which can drop the least: (1) bounds — a threshold's error is at least
    its clipping error Σ_{c>t} h·(c − t)² (prefix sums, no rounding term) and at most that plus
    (s/2)² for every unclipped value; a threshold whose lower bound exceeds the least upper bound
    cannot be the least (PP-OCR / digits tensors: 80-87 % of the 51 thresholds); (2) the error of the
    rest over the non-empty bins alone (empty bins add exact zeros: ~60 % of 2048 bins), equal up to
    rounding; only those within `MSE_MARGIN` of the least are priced over every bin, whose sums are
    `fake_quant_mse`'s bits (each threshold's row is summed alone)."""
    t = np.asarray(thresholds, np.float64)
    h = np.asarray(stats.hist, np.float64)
    if t.shape[0] <= 1 or not h.sum() > 0 or not 0 < stats.absmax < np.inf or not np.isfinite(t).all():
        return int(np.argmin(fake_quant_mse(stats, t, qmax))) if t.shape[0] else 0
    held = np.flatnonzero(h)
    hh, c = h[held], (held + 0.5) * (stats.absmax / h.shape[0])
    alive = np.flatnonzero(_possible_least(hh, c, t, qmax))
    if alive.shape[0] == 0:  # bounds that compare nothing (a degenerate histogram): price them all
        alive = np.arange(t.shape[0])
    approx = _mse_rows(hh, c, t[alive], qmax)
    least = float(approx.min())
    near = alive[approx <= least + MSE_MARGIN * abs(least)]
    if near.shape[0] == 1:
        return int(near[0])
    return int(near[np.argmin(fake_quant_mse(stats, t[near], qmax))])


def _possible_least(h: np.ndarray, c: np.ndarray, t: np.ndarray, qmax: int) -> np.ndarray:
    """Which thresholds' error Σ h·err(c, t) can be the least, by the bounds of `least_mse`: clipped
    C_t = Σ_{c>t} h·(c − t)² = S2 − 2t·S1 + t²·S0 over the tail (suffix sums of h·c^k), unclipped at most
    (t / 2·qmax)² each. The bounds carry their own rounding (`SUM_ERROR` of the sums' magnitudes)."""
    def suffix(x: np.ndarray) -> np.ndarray:
        return np.concatenate((np.cumsum(x[::-1])[::-1], [0.0]))

    s0, s1, s2 = suffix(h), suffix(h * c), suffix(h * c * c)
    kept = np.concatenate(([0.0], np.cumsum(h)))  # mass of the bins before k (a prefix: no cancellation)
    k = np.searchsorted(c, t, side="right")  # bins k… are clipped (c > t)
    size = s2[k] + 2 * t * s1[k] + t * t * s0[k]
    clipped = np.maximum(s2[k] - 2 * t * s1[k] + t * t * s0[k], 0.0)
    step = t / (2 * qmax)
    upper = clipped + SUM_ERROR * size + step * step * kept[k] * (1 + SUM_ERROR)
    lower = clipped - SUM_ERROR * size
    return lower <= upper.min() * (1 + MSE_MARGIN)


def _mse_rows(h: np.ndarray, c: np.ndarray, thresholds: np.ndarray, qmax: int) -> np.ndarray:
    """Σ_k h_k · err(c_k, t) for each threshold t (`fake_quant_mse` before the division by the count).

    np.where(c > t, (c − t)², (c − s·rint(c / s))²) · h, the same operations into two (thresholds ×
    bins) arrays instead of seven fresh ones (their pages were most of the cost: mix on digits, 51 ×
    2048 each); each row is summed alone, so a row's sum does not depend on the other rows."""
    t = thresholds.reshape(-1, 1)
    s = t / qmax
    err = np.divide(c, s)
    np.rint(err, out=err)
    np.multiply(s, err, out=err)
    np.subtract(c, err, out=err)
    np.square(err, out=err)
    clipped = np.subtract(c, t)
    np.square(clipped, out=clipped)
    np.copyto(err, clipped, where=c > t)
    np.multiply(err, h, out=err)
    return err.sum(axis=1)


def search_mix(merged: Mapping[str, MergedStats], percentile: float = DEFAULT_PERCENTILE, grid: int = MIX_GRID,
               quiet: bool = False,
               found: Mapping[str, Mapping[str, Threshold]] | None = None) -> SearchResult:
    """Per tensor, the threshold with the least fake-quant error on its own histogram: the three
    methods' thresholds and a geometric grid of `grid` more between 2 % of max|x| and max|x|
    (label ``mse`` when a grid point wins). Merged histograms only: no model run. `found`: the
    three methods' thresholds when the caller has them (`candidates`)."""
    found = found if found is not None else candidates(merged, percentile)
    names = list(found)
    acts: dict[str, ActQuant] = {}
    counts = dict.fromkeys([*names, "mse"], 0)
    for tensor, stats in merged.items():
        methods = np.array([found[m][tensor].value for m in names])
        points = stats.absmax * np.geomspace(0.02, 1.0, grid) if grid and stats.absmax > 0 else np.zeros(0)
        options_t = np.concatenate([methods, points])
        best = least_mse(stats, options_t)  # ties: the earlier candidate (methods first)
        method = names[best] if best < len(names) else "mse"
        acts[tensor] = ActQuant(tensor, float(options_t[best]), method=method)
        counts[method] += 1
    (log.debug if quiet else log.info)("Select mix method: " + ", ".join(f"{k} for {v} tensors" for k, v in counts.items() if v) + ".")
    return SearchResult(acts, "mix", {}, {"methods": counts})


# ---------------------------------------------------------------------------------------- load
def _qdq_threshold(scale: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The |x| range a QuantizeLinear represents, as one symmetric threshold.

    Symmetric encodings (int8 with zero point 0, uint8 with 128): 127 · s, hb's qmax (not 128 · s).
    Otherwise the larger side, s · max(qmax − zp, zp − qmin): onnxruntime's asymmetric uint8
    activations (range [-0.5, 10] → zero point 12) must not be clipped to their small negative side.
    """
    info = np.iinfo(dtype)
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float64)
    up, down = (info.max - zp) * scale, (zp - info.min) * scale
    centre = 0 if info.min < 0 else (info.max + 1) // 2
    return np.where(zp == centre, np.minimum(up, down), np.maximum(up, down))


def load_thresholds(source: onnx.ModelProto | str | Path | Mapping[str, Any],
                    outputs: bool = False) -> dict[str, float | np.ndarray]:
    """Thresholds by tensor from a QDQ ONNX model, a JSON file {tensor: threshold}, or a mapping; with
    `outputs`, a QDQ model's pair in front of a graph output also under the output's name
    (`_model_thresholds`), as the float model names that tensor."""
    if isinstance(source, Mapping):
        return {str(k): _number(v, str(k), "the given mapping") for k, v in source.items()}
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("expected an object {tensor: threshold}")
                return {str(k): _number(v, str(k), str(path)) for k, v in data.items()}
            model = onnx.load(str(path))
        except FileNotFoundError as exc:
            raise CalibrationDataError(error("load-missing", f"Can not find file specified: {path},please check "
                                             "the configuration")) from exc
        except Exception as exc:  # bad JSON, or a protobuf decode error of a file that is not ONNX
            raise CalibrationDataError(error("load-unreadable", f"calibration_type load: cannot read thresholds "
                                             f"from {path} (expected a JSON object or a QDQ ONNX model): "
                                             f"{type(exc).__name__}: {exc}")) from exc
        return _model_thresholds(model, str(path), outputs)
    return _model_thresholds(source, "the model", outputs)


def _number(value: Any, tensor: str, where: str) -> float | np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if isinstance(value, (int, float, list)) else None
    if arr is None or isinstance(value, bool) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise CalibrationDataError(error("load-bad-threshold", f"calibration_type load: the threshold of tensor "
                                         f"'{tensor}' in {where} must be a positive number or a list of them, "
                                         f"got {value!r}"))
    return float(arr) if arr.ndim == 0 else arr


def _model_thresholds(model: onnx.ModelProto, where: str, outputs: bool = True) -> dict[str, float | np.ndarray]:
    """Each activation QuantizeLinear's threshold, keyed by the tensor it reads and, with `outputs`, by the
    output of a DequantizeLinear reading its codes that is a graph output: onnxruntime puts a graph output
    behind its pair by renaming the producer's tensor (`y_QuantizeLinear_Input` → Q → DQ → `y`), so the
    float model's `y` is the DQ output's name (a Q input of the same name wins). Other DQ outputs are names
    no float model has (`t_DequantizeLinear_Output`)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            if (v := constant_node_value(n)) is not None:
                consts[n.output[0]] = v
    graph_outputs = {o.name for o in model.graph.output} if outputs else set()
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input and n.output[0] in graph_outputs:
            readers.setdefault(n.input[0], []).append(n.output[0])
    out: dict[str, float | np.ndarray] = {}
    aliases: dict[str, float | np.ndarray] = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in consts:  # a weight's pair: weights are our own
            continue
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            continue
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
        t = _qdq_threshold(np.asarray(scale, np.float64), zp, dtype)
        value = float(t) if t.ndim == 0 else t
        tensor = n.name[:-len(SUFFIX)] if n.name.endswith(SUFFIX) else n.input[0]
        out[tensor] = value
        for dq_out in readers.get(n.output[0], ()):
            aliases.setdefault(dq_out, value)
    if not out:
        raise CalibrationDataError(error("load-no-qdq", f"calibration_type load: {where} has no QuantizeLinear "
                                         "nodes on activations to take thresholds from"))
    for name, value in aliases.items():
        out.setdefault(name, value)
    return out


# onnxruntime's QDQ quantizer removes a Relu / Clip after a quantized producer (QDQRemovableActivation, its
# only removable activations) and gives the producer's output the activation's name and range
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
# the elementwise steps of the inserted input normalization (`engine.preprocess.normalization`)
NORMALIZATION_OPS = frozenset({"Sub", "Add", "Mul", "Div", "Identity"})
Observe = Callable[[Sequence[str]], Mapping[str, MergedStats]]


@dataclass
class Loaded:
    """What `load` found for the planner's tensors, and how (`search_load` counts them in its detail)."""

    values: dict[str, float | np.ndarray] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)  # tensor → "loaded" | "normalization" | "activation"


def _largest(value: float | np.ndarray) -> float:
    return float(np.max(np.asarray(value, np.float64)))


def _normalization_chain(g: Graph, name: str) -> list[tuple[onnx.NodeProto, str, np.ndarray]] | None:
    """The inserted normalization of graph input `name`, from its normalized tensor back to `name`, as
    (node, the tensor it reads, its constant); None when the model has none (or it was folded away)."""
    prefix, t = preprocess_prefix(name), normalized_name(name)
    chain = []
    while t != name:
        node = g.producer(t)
        if node is None or not node.name.startswith(prefix) or node.op_type not in NORMALIZATION_OPS:
            return None
        if node.op_type == "Identity":
            chain.append((node, node.input[0], np.ones(1)))
            t = node.input[0]
            continue
        consts = [g.constant(i) for i in node.input]
        if len(node.input) != 2 or consts[0] is not None or consts[1] is None:
            return None
        chain.append((node, node.input[0], np.asarray(consts[1], np.float64)))
        t = node.input[0]
    return chain or None


def _through_normalization(found: Mapping[str, Any], g: Graph, loaded: Loaded) -> None:
    """The source's threshold of an input that hbcompile normalizes belongs to the normalized tensor.

    The QDQ / QAT model is (a quantization of) the user's float model, which takes the normalized input:
    its `x` is ``(x_train − mean) · scale``, what `HZ_PREPROCESS_FOR_x_normalized` holds here, while this
    model's `x` is the raw train view. Going back through each step of the normalization, |x| ≤ T bounds
    its input by  out = in · c → T / min|c|;  out = in / c → T · max|c|;  out = in ∓ c → T + max|c|
    (over the channels: one per-tensor threshold each). A source that already names the normalized tensor
    (hbcompile's own calibrated model) is taken as it is."""
    for name in sorted(g.inputs):
        norm = normalized_name(name)
        if name not in found or norm in found:
            continue
        chain = _normalization_chain(g, name)
        if chain is None:
            continue
        t = _largest(found[name])
        loaded.values[norm], loaded.how[norm] = t, "normalization"
        for node, read, c in chain:
            c = np.abs(c)
            t = {"Mul": t / max(float(c.min()), 1e-30), "Div": t * float(c.max()),
                 "Identity": t}.get(node.op_type, t + float(c.max()))
            loaded.values[read], loaded.how[read] = t, "normalization"
        log.debug(f"calibration_type load: the loaded threshold of input '{name}' is its normalized value's "
                  f"('{norm}'); '{name}' takes {loaded.values[name]:.6g} through the normalization")


def _through_activation(tensor: str, found: Mapping[str, Any], g: Graph, depth: int = 4) -> float | None:
    """A tensor read only by Relu / Clip takes its readers' output threshold: onnxruntime fused the activation
    into the producer's quantization, so the source quantized only the activation's output. Quantizing the
    input at that range loses nothing the activation keeps (it clips below at 0 and above at the range)."""
    readers = g.consumers(tensor)
    if not readers or tensor in g.outputs or depth == 0 or any(r.op_type not in FUSED_ACTIVATIONS for r in readers):
        return None
    values = []
    for r in readers:
        v = found.get(r.output[0])
        v = _largest(v) if v is not None else _through_activation(r.output[0], found, g, depth - 1)
        if v is None:
            return None
        values.append(v)
    return max(values)


def find_loaded(found: Mapping[str, Any], tensors: Sequence[str], model: onnx.ModelProto | None = None) -> Loaded:
    """The thresholds of `tensors` that `found` (the source's, by tensor) gives or implies in `model` (the
    optimized float model: its inserted normalization, its Relu / Clip that onnxruntime fused)."""
    loaded = Loaded()
    g = Graph(model) if model is not None else None
    if g is not None:
        _through_normalization(found, g, loaded)
    for t in tensors:
        if t in loaded.values:
            continue
        if t in found:
            loaded.values[t], loaded.how[t] = found[t], "loaded"
        elif g is not None and (v := _through_activation(t, found, g)) is not None:
            loaded.values[t], loaded.how[t] = v, "activation"
            log.debug(f"calibration_type load: '{t}' is read only by Relu / Clip, which the source fused into its "
                      f"quantization: it takes their output threshold {v:.6g}")
    for t in [t for t in loaded.values if t not in tensors]:
        del loaded.values[t], loaded.how[t]
    return loaded


def search_load(source: onnx.ModelProto | str | Path | Mapping[str, Any], tensors: Sequence[str],
                model: onnx.ModelProto | None = None, observe: Observe | None = None) -> SearchResult:
    """`load`: the thresholds of `tensors` from `source` (`find_loaded`: directly, or implied through the
    inserted normalization or a fused Relu / Clip of `model`); the tensors it has none for take ``max``
    on the calibration data when `observe` (merged statistics of the given tensors) is given, else they
    are one error naming them."""
    loaded = find_loaded(load_thresholds(source, outputs=True), tensors, model)
    missing = [t for t in tensors if t not in loaded.values]
    acts = _acts(loaded.values, "load")
    if missing and observe is None:
        where = f" ({source})" if isinstance(source, (str, Path)) else ""
        raise CalibrationDataError(error("load-missing-threshold", f"calibration_type load: no threshold for "
                                         f"{name_list(missing, 5, quote=True)} in the loaded quantization parameters{where}; give "
                                         "calibration_parameters.cal_data_dir, and the tensors the source leaves "
                                         "unquantized take max on the calibration data",
                                         ("calibration_parameters", "calibration_type")))
    if missing:
        merged = observe(missing)
        for t in missing:
            acts[t] = ActQuant(t, max_threshold(merged[t]).value, method="max")
            loaded.how[t] = "max"
        log.warning(f"calibration_type load: the loaded quantization parameters have no threshold for "
                    f"{len(missing)} tensor{'s' if len(missing) > 1 else ''} ({name_list(missing, 5, quote=True)}): they take max on "
                    "the calibration data")
    counts: dict[str, int] = {}
    for how in loaded.how.values():
        counts[how] = counts.get(how, 0) + 1
    return SearchResult({t: acts[t] for t in tensors}, "load", {}, {"thresholds": counts})


# ---------------------------------------------------------------------------------------- skip
def skip_samples(shapes: Mapping[str, Sequence[int]], n: int, seed: int = 0,
                 featuremaps: Collection[str] = ()) -> Iterator[Sample]:
    """`skip`'s random samples: image inputs uniform 0–255 (`random_samples`' values, the train view's
    pixels), `featuremaps` standard normal (a featuremap is not pixels). Sample i depends on (seed, i)."""
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yield {name: (rng.standard_normal(tuple(shape)) if name in featuremaps
                      else rng.uniform(0.0, 255.0, size=tuple(shape))).astype(np.float32)
               for name, shape in shapes.items()}


def search_skip(model: onnx.ModelProto, tensors: Sequence[str], samples: int = 4, seed: int = 0,
                featuremaps: Collection[str] = ()) -> SearchResult:
    """`skip`: max thresholds over a few random samples (no calibration data)."""
    from engine.calibration.observer import observe
    from engine.calibration.stats import merge_samples

    log.warning("calibration_type is skip: thresholds come from random data, so the accuracy numbers mean "
                "nothing; the model is only good for performance and flow checks")
    inits = {t.name for t in model.graph.initializer}
    shapes = {i.name: [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input if i.name not in inits}
    merged = merge_samples(list(observe(model, skip_samples(shapes, samples, seed, featuremaps), list(tensors))))
    return SearchResult({n: ActQuant(n, max_threshold(s).value, method="skip") for n, s in merged.items()}, "skip")


# ------------------------------------------------------------------------------------- dispatch
def choose_thresholds(settings: SearchSettings, model: onnx.ModelProto, merged: Mapping[str, MergedStats] | None,
                      samples: Sequence[Sample] = (), options: QuantOptions | None = None,
                      load_source: onnx.ModelProto | str | Path | Mapping[str, Any] | None = None,
                      tensors: Sequence[str] | None = None, featuremaps: Collection[str] = (),
                      sessions: Recent | None = None, observe: Observe | None = None) -> SearchResult:
    """The thresholds `settings.calibration_type` asks for. `merged` (statistics of the tensors the
    planner listed) is needed by default / mix / max / kl; `samples` by default (its candidates are
    compared by output cosine on them); `load_source` by load; `tensors` (the planner's list) by load
    and skip; `featuremaps` (inputs skip draws normal values for) by skip; `sessions` (a warm engine's
    kept scoring sessions) by default; `observe` (merged statistics of the tensors `load_source` has no
    threshold for, from the calibration data) by load when there is calibration data."""
    kind = settings.calibration_type
    if kind not in SEARCH_TYPES:
        raise ValueError(f"unknown calibration_type {kind!r}")  # the config check rejects it earlier
    if kind == "load":
        if load_source is None:
            raise CalibrationDataError(error("load-no-source", "calibration_type load needs quantization "
                                             "parameters to load (a QDQ model or a JSON file of thresholds)",
                                             ("calibration_parameters", "calibration_type")))
        return search_load(load_source, list(tensors if tensors is not None else merged or ()), model, observe)
    if kind == "skip":
        return search_skip(model, list(tensors if tensors is not None else merged or ()), settings.skip_samples,
                           featuremaps=featuremaps)
    if merged is None:
        raise ValueError(f"calibration_type {kind} needs merged statistics")
    if kind == "default":
        return search_default(model, merged, samples, options, settings.cosine_samples, settings.search_percentile,
                              sessions=sessions)
    if kind == "mix":
        return search_mix(merged, settings.search_percentile)
    acts = single_method(merged, kind, settings.max_percentile, settings.per_channel)
    method = label("max-percentile", settings.max_percentile) if kind == "max" and settings.max_percentile < 1 else kind
    return SearchResult(acts, method, {})  # only `default` chooses by output cosine (and so measures one)


__all__ = ["DEFAULT_PERCENTILE", "FUSED_ACTIVATIONS", "SEARCH_TYPES", "SEARCH_Z", "CandidateScorer", "Choice", "Loaded",
           "SearchResult", "SearchSettings",
           "candidates", "choose_candidate", "choose_thresholds",
           "fake_quant_mse", "find_loaded", "label", "load_thresholds", "search_default", "search_load",
           "least_mse", "same_layout", "search_mix", "search_skip", "single_method"]
