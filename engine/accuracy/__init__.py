"""Accuracy that survives real models: what the calibrate stage does after choosing thresholds.

    result = improve(model, Calibration(thresholds), options, merged_stats, samples, specs, settings)
    result.calibration     # thresholds + node_info (mixed precision) + bias corrections: what
                           # every later stage's make_plan reads (engine.quantize.planner.Calibration)

Steps, each its own module:
- `checks`       — do the calibration samples look like the model's data (colour order, mean /
                   scale applied twice)? Warnings only.
- int16 tensors  — a tensor the plan keeps at 16 bits (the user's node_info / optimization, or a
                   mixed-precision move) takes its max |x| as threshold: at 16 bits clipping
                   buys no resolution, it only loses the outliers.
- `bias`         — `optimization: bias_correction`: the per-channel mean shift of int8 weights,
                   measured on the calibration data, folded into the bias.
- `sensitivity`  — the per-node ranking of what costs the output its accuracy (`sensitivity: N`).
- `mixed`        — `target_output_cosine`: the fewest nodes to int16 / CPU float that meet it.
Every step reads the calibrate stage's cached statistics; none observes the model again except
the float runs of the few `accuracy_samples` it compares on. Their model runs are memoised one by one
in the process (`runs`: output cosines by model, switches, sample and float model), so a calibration
that changes one accuracy sample, or moves a few thresholds, runs again only what those change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from engine.accuracy.checks import CheckMemo, DataCheck, check_calibration_data
from engine.accuracy.mixed import MixedPrecision, Searched, mixed_precision, widen_int16, widened_plan
from engine.accuracy.sensitivity import Sensitivity, analyse
from engine.accuracy.sessions import References
from engine.calibration.stats import MergedStats
from engine.quantize.planner import Calibration, QuantOptions, make_plan
from engine.quantize.types import ActQuant

log = logging.getLogger("hbcompile")
Sample = Mapping[str, np.ndarray]
CHECK_SAMPLES = 4  # calibration samples the data checks read (check_calibration_data)
KEYS = ("target_output_cosine", "mixed_precision_budget", "sensitivity", "accuracy_samples", "check_calibration_data")


@dataclass(frozen=True)
class AccuracySettings:
    target: float = 0.99  # target_output_cosine; 0: no mixed precision
    budget: float = 0.1  # mixed_precision_budget: share of the model's nodes
    sensitivity: int = 0  # print the top N culprits
    samples: int = 8  # accuracy_samples
    check_data: bool = True
    bias_correction: bool = False  # optimization: bias_correction

    @classmethod
    def from_config(cls, config) -> AccuracySettings:
        from engine import schema

        section = (config.data or {}).get("calibration_parameters") or {}

        def value(key: str) -> Any:
            if key in section and section[key] is not None:
                return section[key]
            return (schema.key_schema("calibration_parameters", key) or {}).get("default")

        return cls(float(value("target_output_cosine")), float(value("mixed_precision_budget")),
                   int(value("sensitivity")), max(int(value("accuracy_samples")), 1),
                   bool(value("check_calibration_data")),
                   "bias_correction" in tuple(config.calibration.optimization))


@dataclass
class AccuracyResult:
    calibration: Calibration
    checks: list[DataCheck] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    mixed: MixedPrecision | None = None
    int16_thresholds: int = 0  # tensors moved to their max |x| because they are int16
    bias_corrected: int = 0
    verified_cosine: float | None = None  # the final plan's output cosine (ptq model) on the samples
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"checks": [c.__dict__ for c in self.checks],
                "mixed_precision": self.mixed.to_json() if self.mixed else None,
                "int16_thresholds": self.int16_thresholds, "bias_corrected": self.bias_corrected,
                "verified_cosine": self.verified_cosine, "notes": self.notes,
                "node_info": self.calibration.node_info,
                "bias_corrections": {k: v.tolist() for k, v in self.calibration.bias_corrections.items()}}


def verify(model: onnx.ModelProto, calibration: Calibration, options: QuantOptions, samples: Sequence[Sample]
           ) -> float:
    """Mean output cosine of the ptq model (the integer program in float) on `samples`."""
    from engine.accuracy.sessions import quiet_session, run_outputs
    from engine.quantize.ptq import build_ptq_model
    from engine.similarity import mean_output_cosine

    session = quiet_session(build_ptq_model(model, make_plan(model, calibration, options)))
    names = [o.name for o in model.graph.output]
    got = [run_outputs(session, s, names) for s in samples]
    return mean_output_cosine(References(model, samples).values, got, names)


def move_budget(share: float, nodes: int) -> int:
    """Nodes mixed precision may move: at most `share` of them (floor: "at most 10 %" means 19 of
    199, not 20), but one on models too small for a whole one, and none when the share is 0."""
    if share <= 0:
        return 0
    return max(math.floor(share * nodes + 1e-9), 1)


def improve(model: onnx.ModelProto, calibration: Calibration, options: QuantOptions,
            merged: Mapping[str, MergedStats], samples: Sequence[Sample], specs: Sequence[Mapping[str, Any]],
            settings: AccuracySettings, bias_corrections: Mapping[str, np.ndarray] | None = None,
            progress: Callable[[str, float], None] | None = None,
            check_memo: CheckMemo | None = None, searched: Searched | None = None) -> AccuracyResult:
    """The accuracy steps of the module docstring on top of `calibration` (a copy is returned).

    `searched`: the output cosine `calibration_type: default` measured for these thresholds (its
    calibrated model, on its first samples); when it clears the target by far, mixed precision takes
    it instead of building and running the ptq model (`mixed.searched_meets`). Not used when the steps
    change the thresholds or biases first (int16 widening, bias correction)."""
    calibration = Calibration(calibration, calibration.node_info, calibration.bias_corrections)
    result = AccuracyResult(calibration)
    samples = list(samples)[:settings.samples]
    references = References(model, samples)  # the float outputs, computed once for every step
    if settings.check_data and samples:
        result.checks = check_calibration_data(model, samples[:CHECK_SAMPLES], specs, memo=check_memo,
                                               # mixed precision needs the float outputs anyway
                                               given=references.first(CHECK_SAMPLES) if settings.target > 0 else None)
    if bias_corrections:
        calibration.bias_corrections.update({k: np.asarray(v, np.float32) for k, v in bias_corrections.items()})
        result.bias_corrected = len(bias_corrections)
    result.int16_thresholds, plan = widened_plan(model, calibration, options, merged)
    if result.int16_thresholds or result.bias_corrected:
        searched = None  # measured on other thresholds / biases
    if settings.sensitivity > 0 and samples:
        result.sensitivity = analyse(model, plan, samples[:1], merged, progress=progress)
    if settings.target > 0 and samples:
        nodes = sum(1 for n in model.graph.node if n.op_type != "Constant")
        budget = move_budget(settings.budget, nodes)
        if budget < 1:
            result.notes.append(f"mixed precision: mixed_precision_budget {settings.budget} allows no node of "
                                f"{nodes} to move")
        else:
            mp = mixed_precision(model, calibration, samples, merged, settings.target, budget, options,
                                 result.sensitivity, progress=progress, references=references, plan=plan,
                                 searched=searched)
            result.mixed = mp
            result.verified_cosine = mp.verified
            if mp.moves:
                calibration.node_info.update(mp.node_info)
                for t, value in mp.thresholds.items():
                    if t in calibration:
                        calibration[t] = ActQuant(t, float(value), method="max (int16)")
                result.int16_thresholds += widen_int16(model, calibration, options, merged)
            if result.sensitivity is None:
                result.sensitivity = mp.sensitivity
    return result


__all__ = ["KEYS", "AccuracyResult", "AccuracySettings", "Searched", "improve", "verify", "widen_int16"]
