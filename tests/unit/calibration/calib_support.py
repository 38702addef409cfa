"""Generated models and numpy oracles for the calibration tests (no downloaded artefacts)."""

from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "calib", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def conv_weights(c_in: int, c_out: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32)
    b = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
    return w, b


def conv_relu_model(c_in: int = 3, c_out: int = 8, hw: int = 16, batch: int | str = 1,
                    seed: int = 0) -> onnx.ModelProto:
    """data → Conv 3×3 (pad 1) → conv_out → Relu → relu_out → GlobalAveragePool → output."""
    w, b = conv_weights(c_in, c_out, 3, seed)
    nodes = [helper.make_node("Conv", ["data", "w", "b"], ["conv_out"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv_out"], ["relu_out"]),
             helper.make_node("GlobalAveragePool", ["relu_out"], ["output"])]
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, c_in, hw, hw])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, c_out, 1, 1])
    return _model(nodes, [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int = 1) -> np.ndarray:
    """Plain numpy NCHW convolution (stride 1), the oracle for onnxruntime's Conv."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N, C, H, W, kh, kw
    return (np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64)) + b[None, :, None, None]).astype(np.float32)


def batch_mixing_model(shape=(1, 3, 4, 4)) -> onnx.ModelProto:
    """y = x − mean over axis 0: shape-preserving, but a batch of samples changes every value."""
    nodes = [helper.make_node("ReduceMean", ["data"], ["batch_mean"], axes=[0], keepdims=1),
             helper.make_node("Sub", ["data", "batch_mean"], ["centred"]),
             helper.make_node("Relu", ["centred"], ["output"])]
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))
    m = helper.make_model(helper.make_graph(nodes, "mix", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def flatten_model(shape=(1, 3, 4, 4)) -> onnx.ModelProto:
    """A Reshape to a constant [1, -1]: a batch of two gives a first axis of 1, not 2."""
    n = int(np.prod(shape))
    nodes = [helper.make_node("Relu", ["data"], ["act"]),
             helper.make_node("Reshape", ["act", "to"], ["flat"]),
             helper.make_node("Mul", ["flat", "two"], ["output"])]
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n])
    inits = [numpy_helper.from_array(np.array([1, -1], np.int64), "to"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    return _model(nodes, [x], [y], inits)


def samples(shape, n: int, seed: int = 0, scale: float = 1.0):
    """n random samples {"data": float32 array} produced lazily."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"data": (rng.standard_normal(shape) * scale).astype(np.float32)}
