"""O2 `untranspose_float_side_tables`: a table whose codes come from a QuantizeLinear is looked up in the
tensor's own (NCHW) layout when its readers are NCHW-only kernels (DequantizeLinear, ConvInteger), or
NHWC integer kernels reading a table that narrows int16 codes to uint8; otherwise it keeps the
lowering's NHWC Transposes. Every case gives the program's codes bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import optimize_program
from engine.runtime.session import open_session

SHAPE = [1, 8, 24, 24]


def table_program(reader: str, wide_input: bool = True) -> onnx.ModelProto:
    """float → int16 (or uint8) codes → a table to uint8 as the lowering writes it for a 4-D tensor
    (Transpose to NHWC, Cast, [Add 32 768], flat GatherElements, Reshape to the Transpose's Shape,
    Transpose back) → `reader`: ConvInteger or QLinearConv (1×1, 8 → 4)."""
    rng = np.random.default_rng(4)
    entries = 65536 if wide_input else 256
    inits = {"s": np.float32(1.0), "z": np.int16(0) if wide_input else np.uint8(128), "flat": np.array([-1], np.int64),
             "table": rng.integers(0, 256, entries).astype(np.uint8), "zx": np.uint8(128),
             "w": rng.integers(0, 256, (4, 8, 1, 1)).astype(np.uint8), "zw": np.uint8(128),
             "ws": np.full(4, 0.01, np.float32), "w8": rng.integers(-127, 128, (4, 8, 1, 1)).astype(np.int8),
             "wz8": np.zeros(4, np.int8), "xs": np.float32(0.05), "ys": np.float32(0.2)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("Transpose", ["q"], ["q_nhwc"], name="t_Transpose", perm=[0, 2, 3, 1]),
             helper.make_node("Shape", ["q_nhwc"], ["nhwc_shape"], name="t_Shape"),
             helper.make_node("Cast", ["q_nhwc"], ["i"], name="t_Cast", to=TensorProto.INT32)]
    index = "i"
    if wide_input:
        inits["offset"] = np.int32(32768)
        nodes.append(helper.make_node("Add", ["i", "offset"], ["j"], name="t_Add"))
        index = "j"
    nodes += [helper.make_node("Reshape", [index, "flat"], ["j_flat"], name="t_Reshape"),
              helper.make_node("GatherElements", ["table", "j_flat"], ["t_flat"], name="t", axis=0),
              helper.make_node("Reshape", ["t_flat", "nhwc_shape"], ["t_nhwc"], name="t_Reshape_1"),
              helper.make_node("Transpose", ["t_nhwc"], ["codes"], name="t_Transpose_1", perm=[0, 3, 1, 2])]
    if reader == "ConvInteger":
        nodes.append(helper.make_node("ConvInteger", ["codes", "w", "zx", "zw"], ["y"], name="conv", kernel_shape=[1, 1]))
        out = helper.make_tensor_value_info("y", TensorProto.INT32, None)
    else:
        nodes.append(helper.make_node("QLinearConv", ["codes", "xs", "zx", "w8", "ws", "wz8", "ys", "zx"], ["y"],
                                      name="conv", kernel_shape=[1, 1]))
        out = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)], [out],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def same_codes(a: onnx.ModelProto, b: onnx.ModelProto, wide_input: bool) -> None:
    rng = np.random.default_rng(2)
    sa, sb = open_session(a.SerializeToString()), open_session(b.SerializeToString())
    for _ in range(3):
        x = (rng.integers(-32768, 32768, SHAPE) if wide_input else rng.integers(-128, 128, SHAPE)).astype(np.float32)
        assert sa.run(None, {"x": x})[0].tobytes() == sb.run(None, {"x": x})[0].tobytes()


@pytest.mark.parametrize("reader", ["ConvInteger", "QLinearConv"])
def test_a_narrowing_table_after_a_quantize_linear_loses_its_transposes(reader):
    program = table_program(reader)
    result = optimize_program(program, "O2")
    assert result.rewrites["untranspose_float_side_tables"] == 1 and result.checked and not result.fallback
    assert "Transpose" not in [n.op_type for n in result.program.graph.node]
    same_codes(program, result.program, wide_input=True)


def test_an_8_bit_table_read_by_an_nhwc_kernel_keeps_its_layout():
    """uint8 → uint8 read by a QLinearConv: onnxruntime cancels the Transpose back against its NHWC
    conv, and moving the one in to the output would save nothing."""
    program = table_program("QLinearConv", wide_input=False)
    result = optimize_program(program, "O2")
    assert result.rewrites["untranspose_float_side_tables"] == 0
    assert [n.op_type for n in result.program.graph.node].count("Transpose") == 2
    same_codes(program, result.program, wide_input=False)


def test_an_8_bit_table_read_by_conv_integer_runs_in_nchw():
    program = table_program("ConvInteger", wide_input=False)
    result = optimize_program(program, "O2")
    assert result.rewrites["untranspose_float_side_tables"] == 1
    assert "Transpose" not in [n.op_type for n in result.program.graph.node]
    same_codes(program, result.program, wide_input=False)
