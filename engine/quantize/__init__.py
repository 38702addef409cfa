"""Quantization: plan (which op runs where, at which scale), then emit.

    tensors = plan_tensors(optimized, options)            # what the calibrate stage observes
    plan = make_plan(optimized, thresholds, options)      # every decision, as data (types.QuantPlan)
    calibrated = build_calibrated_model(optimized, plan)  # fake-quant: the "Calibrated Cosine"
    ptq = build_ptq_model(optimized, plan)                # int8 weights, int32 bias, shared scales

`registry` holds the per-op rules, `search` the calibration_type logic (default / mix / load /
skip) on top of `engine.calibration`'s threshold methods. All functions are pure: file I/O and
caching belong to the pipeline stages.
"""

from engine.quantize.calibrated import build_calibrated_model, calibration_map
from engine.quantize.planner import MissingThresholdError, NodeInfo, QuantOptions, make_plan, plan_tensors
from engine.quantize.ptq import build_ptq_model
from engine.quantize.types import ActQuant, BiasQuant, FusionGroup, NodePlan, QuantPlan, WeightQuant

__all__ = ["ActQuant", "BiasQuant", "FusionGroup", "MissingThresholdError", "NodeInfo", "NodePlan", "QuantOptions",
           "QuantPlan", "WeightQuant", "build_calibrated_model", "build_ptq_model", "calibration_map", "make_plan",
           "plan_tensors"]
