"""O2 rewrites that swap a slow onnxruntime kernel for a fast one: 5×5 depthwise QLinearConvs as
float Convs, MaxPool on codes as NhwcMaxPool, SiLU as QuickGelu — each bit-exact to O0, and each
refused when its check finds one differing bit."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile import optimize
from engine.compile.optimize import optimize_program
from engine.runtime.session import open_session


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k)
                                                              for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, inputs: list[np.ndarray]) -> None:
    sa, sb = open_session(a.SerializeToString()), open_session(b.SerializeToString())
    name = sa.get_inputs()[0].name
    for x in inputs:
        for p, q in zip(sa.run(None, {name: x}), sb.run(None, {name: x}), strict=True):
            assert p.dtype == q.dtype and p.tobytes() == q.tobytes()


def _codes(shape, seeds: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8) for seed in range(seeds)]


def depthwise_program(kernel: int, relu: bool = False) -> onnx.ModelProto:
    """uint8 codes → a depthwise QLinearConv (24 channels, `kernel`×`kernel`) [→ Clip at the output
    zero point] → a 1×1 QLinearConv (so the depthwise conv sits between integer kernels, as in PP-OCR)."""
    rng = np.random.default_rng(5)
    c = 24
    inits = {"s": np.float32(0.031), "z": np.uint8(128), "wd": rng.integers(-127, 128, (c, 1, kernel, kernel)).astype(np.int8),
             "wds": rng.uniform(0.002, 0.01, c).astype(np.float32), "wz": np.zeros(c, np.int8),
             "bd": rng.integers(-4000, 4000, c).astype(np.int32), "ys": np.float32(0.05),
             "w1": rng.integers(-127, 128, (16, c, 1, 1)).astype(np.int8),
             "w1s": rng.uniform(0.002, 0.01, 16).astype(np.float32), "w1z": np.zeros(16, np.int8),
             "os": np.float32(0.08)}
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "wd", "wds", "wz", "ys", "z", "bd"], ["d"], name="dw",
                              kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4, group=c, strides=[2, 1])]
    last = "d"
    if relu:
        nodes.append(helper.make_node("Clip", ["d", "z"], ["r"], name="relu"))
        last = "r"
    nodes.append(helper.make_node("QLinearConv", [last, "ys", "z", "w1", "w1s", "w1z", "os", "z"], ["y"], name="pw",
                                  kernel_shape=[1, 1]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 6, 40])],
                  [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)


@pytest.mark.parametrize("relu", [False, True])
def test_a_5x5_depthwise_conv_runs_as_a_float_conv_with_the_same_codes(relu):
    program = depthwise_program(5, relu)
    result = optimize_program(program, "O2")
    assert result.rewrites["depthwise_conv_in_float"] == 1 and result.checked and not result.fallback
    convs = [n for n in result.program.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 and helper.get_attribute_value(next(a for a in convs[0].attribute if a.name == "group")) == 24
    assert [n.name for n in result.program.graph.node if n.op_type == "QLinearConv"] == ["pw"]
    assert ("Relu" in [n.op_type for n in result.program.graph.node]) == relu
    _same_outputs(program, result.program, _codes((1, 24, 6, 40)))


def test_a_3x3_depthwise_conv_stays_integer():
    result = optimize_program(depthwise_program(3), "O2")
    assert result.rewrites["depthwise_conv_in_float"] == 0
    assert Counter(n.op_type for n in result.program.graph.node)["QLinearConv"] == 2


def test_a_depthwise_conv_whose_float_form_differs_is_refused(monkeypatch):
    """The check runs the float form against the QLinearConv: a float form one weight off is caught."""
    real = optimize._depthwise_conv

    def off_by_one(node, inits):
        parts = real(node, inits)
        if parts is None:
            return None
        weight = parts[1].copy()
        weight[0, 0, 0, 0] += 1
        return (parts[0], weight, *parts[2:])

    monkeypatch.setattr(optimize, "_depthwise_conv", off_by_one)
    result = optimize_program(depthwise_program(5), "O2")
    assert result.rewrites["depthwise_conv_in_float"] == 0 and not result.fallback
    assert Counter(n.op_type for n in result.program.graph.node)["QLinearConv"] == 2


def pool_program(dtype=np.uint8) -> onnx.ModelProto:
    """float → codes → MaxPool 2×2 / 2 (ceil mode, odd size) → DequantizeLinear."""
    zero = dtype(128) if dtype == np.uint8 else dtype(0)
    inits = {"s": np.float32(0.05), "z": zero}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("MaxPool", ["q"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("DequantizeLinear", ["p", "s", "z"], ["y"], name="dq")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 5, 19])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_maxpool_on_codes_runs_as_nhwc_max_pool(dtype):
    program = pool_program(dtype)
    result = optimize_program(program, "O2")
    assert result.rewrites["nhwc_max_pool"] == 1 and result.checked and not result.fallback
    ops = [(n.domain, n.op_type) for n in result.program.graph.node]
    assert ("com.microsoft", "NhwcMaxPool") in ops and ("", "MaxPool") not in ops
    xs = [np.random.default_rng(seed).normal(0, 4, (1, 40, 5, 19)).astype(np.float32) for seed in range(4)]
    _same_outputs(program, result.program, xs)


def test_maxpool_on_floats_is_left_alone():
    inits = {"s": np.float32(0.05), "z": np.uint8(128)}
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["y"], name="q")]
    program = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                     [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    assert optimize_program(program, "O2").rewrites["nhwc_max_pool"] == 0


def test_a_pool_replacement_that_differs_is_refused(monkeypatch):
    """If the replacement's check fails (here: forced), the MaxPool stays."""
    monkeypatch.setattr(optimize, "_same_bits", lambda *a, **k: False)
    result = optimize_program(pool_program(), "O2")
    assert result.rewrites["nhwc_max_pool"] == 0
    assert "MaxPool" in [n.op_type for n in result.program.graph.node]


def silu_program(shared_dequantize: bool = True, dtype=np.uint8) -> onnx.ModelProto:
    """codes → DequantizeLinear → x · Sigmoid(x) (one DequantizeLinear read twice, or two equal ones as
    onnxruntime's offline pass leaves them) → QuantizeLinear."""
    zero = dtype(128) if dtype == np.uint8 else dtype(0)
    inits = {"s": np.float32(0.061), "z": zero, "so": np.float32(0.043)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"], name="dq")]
    other = "f"
    if not shared_dequantize:
        nodes.append(helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f2"], name="dq2"))
        other = "f2"
    nodes += [helper.make_node("Sigmoid", ["f"], ["g"], name="sigmoid"),
              helper.make_node("Mul", [other, "g"], ["m"], name="silu"),
              helper.make_node("QuantizeLinear", ["m", "so", "z"], ["y"], name="q")]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _model(nodes, [helper.make_tensor_value_info("x", elem, [1, 16, 16, 16])],
                  [helper.make_tensor_value_info("y", elem, None)], inits)


@pytest.mark.parametrize("shared", [True, False])
def test_silu_on_dequantized_codes_is_one_quick_gelu(shared):
    program = silu_program(shared)
    result = optimize_program(program, "O2")
    assert result.rewrites["silu_as_quick_gelu"] == 1 and result.checked and not result.fallback
    ops = Counter(n.op_type for n in result.program.graph.node)
    assert ops["QuickGelu"] == 1 and ops["Sigmoid"] == 0 and ops["Mul"] == 0 and ops["DequantizeLinear"] == 1
    every_code = np.random.default_rng(1).permutation(np.tile(np.arange(256, dtype=np.uint8), 16)).reshape(1, 16, 16, 16)
    _same_outputs(program, result.program, [every_code, *_codes((1, 16, 16, 16), 2)])


def test_silu_of_int8_codes_is_checked_on_every_int8_code():
    program = silu_program(dtype=np.int8)
    result = optimize_program(program, "O2")
    assert result.rewrites["silu_as_quick_gelu"] == 1
    x = np.random.default_rng(2).integers(-128, 128, (1, 16, 16, 16)).astype(np.int8)
    _same_outputs(program, result.program, [x])


def test_x_times_the_sigmoid_of_another_tensor_is_not_silu():
    inits = {"s": np.float32(0.061), "t": np.float32(0.02), "z": np.uint8(128)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"], name="dq"),
             helper.make_node("DequantizeLinear", ["x", "t", "z"], ["f2"], name="dq2"),  # another scale
             helper.make_node("Sigmoid", ["f2"], ["g"], name="sigmoid"),
             helper.make_node("Mul", ["f", "g"], ["m"], name="gate"),
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["y"], name="q")]
    program = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
                     [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    result = optimize_program(program, "O2")
    assert result.rewrites["silu_as_quick_gelu"] == 0
    assert "Sigmoid" in [n.op_type for n in result.program.graph.node]


def test_a_quick_gelu_that_differs_is_refused(monkeypatch):
    """QuickGelu with another alpha computes another function: the every-code check refuses it."""
    real = optimize._same_bits

    def with_other_alpha(original, replacement, *args, **kwargs):
        for n in replacement:
            for a in n.attribute:
                if n.op_type == "QuickGelu" and a.name == "alpha":
                    a.f = 1.0001
        return real(original, replacement, *args, **kwargs)

    monkeypatch.setattr(optimize, "_same_bits", with_other_alpha)
    result = optimize_program(silu_program(), "O2")
    assert result.rewrites["silu_as_quick_gelu"] == 0 and not result.fallback
    assert "Sigmoid" in [n.op_type for n in result.program.graph.node]

