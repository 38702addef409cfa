"""Helpers for the quantization tests: optimized models, float thresholds, onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx

from engine.passes import optimize
from engine.quantize.planner import QuantOptions, make_plan, plan_tensors
from engine.similarity import run_model
from tests.support.models import random_inputs


def optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The optimize stage's output (BN folded, fusion groups recorded in metadata)."""
    return optimize(model).model


def max_thresholds(model: onnx.ModelProto, options: QuantOptions | None = None, seeds=(0, 1, 2)) -> dict[str, float]:
    """max |x| over a few random inputs for every tensor the planner lists (a stand-in calibration)."""
    tensors = plan_tensors(model, options)
    out: dict[str, float] = {}
    for seed in seeds:
        values = run_model(model, random_inputs(model, seed), tensors)
        for t in tensors:
            out[t] = max(out.get(t, 0.0), float(np.max(np.abs(values[t]))))
    return out


def plan_for(model: onnx.ModelProto, options: QuantOptions | None = None, **overrides: float):
    thresholds = {**max_thresholds(model, options), **overrides}
    return make_plan(model, thresholds, options)


def fake_quant(x: np.ndarray, threshold: float, bits: int = 8) -> np.ndarray:
    """numpy's reference: round half to even of x / s in float32, saturate to the int range, times s."""
    qmax = (1 << (bits - 1)) - 1
    s = np.float32(threshold / qmax)
    q = np.clip(np.rint(x.astype(np.float32) / s), -qmax - 1, qmax)
    return (q * s).astype(np.float32)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
