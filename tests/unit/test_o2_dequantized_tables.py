"""O2 `dequantized_tables`: a lookup table read only by DequantizeLinear holds the dequantized values
(GatherElements of DQ(T)), and the DequantizeLinear pass over the tensor goes; bit for bit on every code."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import optimize_program
from engine.runtime.session import open_session

SHAPE = [1, 4, 128, 128]  # 65 536 values: every int16 code once


def table_program(other_reader: bool = False) -> onnx.ModelProto:
    """float → int16 codes → a 65 536-entry int16 table (Cast, Add 32 768, flat GatherElements,
    Reshape) → DequantizeLinear → y; with `other_reader` the codes are also a second output."""
    table = np.random.default_rng(3).integers(-32768, 32768, 65536).astype(np.int16)
    inits = {"s": np.float32(1.0), "z": np.int16(0), "offset": np.int32(32768), "flat": np.array([-1], np.int64),
             "shape": np.array(SHAPE, np.int64), "table": table, "ts": np.float32(0.000731), "tz": np.int16(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("Cast", ["q"], ["i"], name="t_Cast", to=TensorProto.INT32),
             helper.make_node("Add", ["i", "offset"], ["j"], name="t_Add"),
             helper.make_node("Reshape", ["j", "flat"], ["j_flat"], name="t_Reshape"),
             helper.make_node("GatherElements", ["table", "j_flat"], ["t_flat"], name="t", axis=0),
             helper.make_node("Reshape", ["t_flat", "shape"], ["codes"], name="t_Reshape_1"),
             helper.make_node("DequantizeLinear", ["codes", "ts", "tz"], ["y"], name="dq")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)]
    if other_reader:
        nodes.append(helper.make_node("Identity", ["codes"], ["codes_out"], name="id"))
        outputs.append(helper.make_tensor_value_info("codes_out", TensorProto.INT16, SHAPE))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)], outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def every_code() -> np.ndarray:
    return np.random.default_rng(1).permutation(np.arange(-32768, 32768)).astype(np.float32).reshape(SHAPE)


def test_a_table_read_by_dequantize_linear_holds_float_values():
    program = table_program()
    result = optimize_program(program, "O2")
    assert result.rewrites["dequantized_tables"] == 1 and result.checked and not result.fallback
    ops = [n.op_type for n in result.program.graph.node]
    assert "DequantizeLinear" not in ops and "GatherElements" in ops
    gather = next(n for n in result.program.graph.node if n.op_type == "GatherElements")
    values = next(t for t in result.program.graph.initializer if t.name == gather.input[0])
    assert values.data_type == TensorProto.FLOAT
    x = every_code()
    a = open_session(program.SerializeToString()).run(None, {"x": x})[0]
    b = open_session(result.program.SerializeToString()).run(None, {"x": x})[0]
    assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()


def test_a_table_whose_codes_are_read_elsewhere_keeps_them():
    result = optimize_program(table_program(other_reader=True), "O2")
    assert result.rewrites["dequantized_tables"] == 0
    assert "DequantizeLinear" in [n.op_type for n in result.program.graph.node]
