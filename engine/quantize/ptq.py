"""`*_ptq_model.onnx`: the calibrated model after the hardware rules, still runnable in onnxruntime.

Differences from the calibrated model (`calibrated.py`, same Q/DQ layout and names):
- activation thresholds are the plan's final ones (`QuantPlan.acts`): shared scales applied
  (Concat inputs/output and Add inputs take one threshold), int16 where configured;
- weights are int8 initializers (``<W>_quantized``, round half to even of W / s_w, saturated to
  ±127) read through a per-channel DequantizeLinear;
- biases are int32 initializers (``<b>_quantized`` = round(b / (s_in · s_w)), saturated) read
  through a DequantizeLinear at s_in · s_w per output channel (b plus its bias correction, if any);
- model outputs the plan leaves si32 (a Conv's int32 accumulator) carry no fake quant: the float
  output equals the dequantized accumulator up to float rounding.
So its outputs are the integer program's, computed in float: the reference the `.bc` is checked
against.
"""

from __future__ import annotations

import onnx

from engine.quantize.calibrated import QdqWriter
from engine.quantize.planner import bias_value, quantize_bias
from engine.quantize.types import QuantPlan


def build_ptq_model(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The ptq model of `model` (the optimized float model) under `plan`."""
    writer = QdqWriter(model, plan)
    writer.activations(plan.acts)
    for wq in plan.weights.values():
        writer.weight(wq, integer=True)
    for bq in plan.biases.values():
        value = writer.constant(bq.tensor)
        if value is not None:
            writer.bias(bq.tensor, bq.scale, quantize_bias(bias_value(value, bq), bq.scale))
    return writer.finish("ptq")


__all__ = ["build_ptq_model"]
