"""O2 `full_size_channel_scales`: a QLinearMul whose one operand is a per-channel code [N, C, 1, 1] (a
squeeze-excitation scale) reads it expanded to the other operand's shape; every output code stays."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import full_size_channel_scales, optimize_program
from engine.runtime.session import open_session

SHAPE = [1, 8, 12, 16]


def se_program(scale_first: bool = False, full_operands: bool = False) -> onnx.ModelProto:
    """uint8 codes x → QLinearGlobalAveragePool → QLinearMul(x, pooled): the SE multiply as the lowering
    writes it (`scale_first` puts the pooled code in QLinearMul's first slot; `full_operands` multiplies
    x by itself instead, where there is nothing to expand)."""
    inits = {"xs": np.float32(0.05), "xz": np.uint8(128), "ps": np.float32(0.004), "pz": np.uint8(3),
             "ys": np.float32(0.07), "yz": np.uint8(128)}
    pooled = "x" if full_operands else "p"
    operands = [pooled, "ps" if not full_operands else "xs", "pz" if not full_operands else "xz"]
    image = ["x", "xs", "xz"]
    mul_inputs = (operands + image if scale_first else image + operands) + ["ys", "yz"]
    nodes = [helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ps", "pz"], ["p"], name="pool",
                              domain="com.microsoft", channels_last=0),
             helper.make_node("QLinearMul", mul_inputs, ["y"], name="se_mul", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                               helper.make_tensor_value_info("p", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model


def outputs(model: onnx.ModelProto, seeds: int = 4) -> list[bytes]:
    session = open_session(model.SerializeToString())
    rng = np.random.default_rng(7)
    got = []
    for _ in range(seeds):
        x = rng.integers(0, 256, SHAPE).astype(np.uint8)
        got += [y.tobytes() for y in session.run(None, {"x": x})]
    return got


@pytest.mark.parametrize("scale_first", [False, True])
def test_se_scale_is_expanded_and_codes_stay(scale_first):
    model = se_program(scale_first)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert full_size_channel_scales(rewritten) == 1
    mul = next(n for n in rewritten.graph.node if n.op_type == "QLinearMul")
    expand = next(n for n in rewritten.graph.node if n.op_type == "Expand")
    assert mul.input[0 if scale_first else 3] == expand.output[0] and expand.input[0] == "p"
    shape = next(t for t in rewritten.graph.initializer if t.name == expand.input[1])
    assert numpy_helper.to_array(shape).tolist() == SHAPE
    assert outputs(rewritten) == outputs(model)


def test_two_full_operands_are_left_alone():
    model = se_program(full_operands=True)
    assert full_size_channel_scales(model) == 0
    assert not any(n.op_type == "Expand" for n in model.graph.node)


def test_o2_program_expands_and_stays_bit_identical():
    model = se_program()
    result = optimize_program(model, "O2")
    assert result.fallback == "" and result.checked
    assert result.rewrites["full_size_channel_scales"] == 1
    assert outputs(result.program) == outputs(model)
