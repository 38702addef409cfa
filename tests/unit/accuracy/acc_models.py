"""Generated models with one known accuracy problem each, and their calibration statistics."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.calibration import merge_samples, observe
from engine.quantize.planner import Calibration, make_plan, plan_tensors
from engine.quantize.search import single_method
from tests.support.models import finish
from tests.unit.quantize.quant_support import optimized

OUTLIER = 400.0  # how much larger channel 0 of the broken layer is than its other channels


def _model(nodes, inits, inputs, outputs, name: str) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return optimized(finish(model))


def outlier_chain(seed: int = 0, read_outlier: bool = False) -> onnx.ModelProto:
    """x → Conv_a+Relu → Conv_b+Relu (broken) → Conv_c+Relu → Conv_d → y.

    Channel 0 of Conv_b's output is OUTLIER× larger than its 7 other channels, and Conv_c ignores
    it (a dead channel, as trained models have) — so the float function is ordinary, but one int8
    scale for Conv_b's output leaves the seven live channels about one step each: that one tensor
    ruins the output, int16 saves it. With `read_outlier`, Conv_c reads channel 0 with weights
    OUTLIER× smaller than its others, which int8 per output channel rounds to zero: a weight
    problem on top, that only float (the CPU) fixes.
    """
    rng = np.random.default_rng(seed)
    w = {f"W{k}": (rng.standard_normal(shape) * 0.4).astype(np.float32)
         for k, shape in (("a", (8, 3, 3, 3)), ("b", (8, 8, 1, 1)), ("c", (8, 8, 1, 1)), ("d", (4, 8, 1, 1)))}
    w.update({f"B{k}": (rng.standard_normal(n) * 0.1).astype(np.float32) for k, n in (("a", 8), ("b", 8), ("c", 8),
                                                                                       ("d", 4))})
    w["Wb"][0] *= OUTLIER
    w["Bb"][0] *= OUTLIER
    w["Wc"][:, 0] = w["Wc"][:, 0] / OUTLIER if read_outlier else 0.0
    nodes = [helper.make_node("Conv", ["x", "Wa", "Ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "Wb", "Bb"], ["b"], name="conv_b"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Conv", ["rb", "Wc", "Bc"], ["c"], name="conv_c"),
             helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
             helper.make_node("Conv", ["rc", "Wd", "Bd"], ["y"], name="conv_d")]
    return _model(nodes, w, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], "outlier_chain")


def biased_input_conv(seed: int = 0) -> onnx.ModelProto:
    """x (mean ≈ 4, all positive) → Conv 3×3 whose every output channel has one large weight.

    The large weight sets a coarse int8 step for its channel; the small weights' rounding errors
    do not cancel, and a far-from-zero input mean turns them into a constant shift of the channel.
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((8, 8, 3, 3)) * 0.05).astype(np.float32)
    w[np.arange(8), np.arange(8), 1, 1] = 1.5
    b = (rng.standard_normal(8) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return _model(nodes, {"W": w, "B": b}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])], "biased_input_conv")


def detector_head(seed: int = 0) -> onnx.ModelProto:
    """A YOLO-style head: box coordinates in pixels (0–640) and class scores (sigmoid, 0–1) of the
    same positions concatenated into one output [1, 4 + 2, 256]."""
    rng = np.random.default_rng(seed)
    w = {"W0": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
         "Wbox": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
         "Wcls": (rng.standard_normal((2, 8, 1, 1)) * 0.3).astype(np.float32),
         "pixels": np.array(160.0, np.float32), "shape": np.array([0, 6, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W0"], ["f"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["rf"], name="stem_relu"),
             helper.make_node("Conv", ["rf", "Wbox"], ["box_raw"], name="box_conv"),
             helper.make_node("Sigmoid", ["box_raw"], ["box_unit"], name="box_sigmoid"),
             helper.make_node("Mul", ["box_unit", "pixels"], ["boxes"], name="box_scale"),
             helper.make_node("Conv", ["rf", "Wcls"], ["cls_raw"], name="cls_conv"),
             helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="cls_sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["joined"], name="head_concat", axis=1),
             helper.make_node("Reshape", ["joined", "shape"], ["out"], name="head_reshape")]
    w["pixels"] = np.array(640.0, np.float32)
    return _model(nodes, w, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 256])], "detector_head")


def samples(model: onnx.ModelProto, n: int, seed: int = 0, offset: float = 0.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return [{inp.name: (rng.standard_normal(shape) + offset).astype(np.float32)} for _ in range(n)]


def calibrate(model: onnx.ModelProto, data: list[dict[str, np.ndarray]]):
    """(merged statistics, max thresholds as a Calibration, int8 plan)."""
    merged = merge_samples(list(observe(model, data, plan_tensors(model))))
    calibration = Calibration(single_method(merged, "max"))
    return merged, calibration, make_plan(model, calibration)
