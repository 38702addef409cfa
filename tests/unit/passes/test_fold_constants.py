"""constant_folding: constant subgraphs become initializers; what must stay, stays (with a reason)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.passes import fold_constants
from tests.support.models import assert_same_outputs, onnx_text, op_types, run_pass, shape_arithmetic


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_folds_shape_arithmetic_into_a_constant_reshape_shape():
    model = shape_arithmetic()
    out, result = run_pass(fold_constants, model)
    assert result.changed == 4  # Shape, Gather, Constant, Concat
    assert op_types(out) == ["Conv", "Relu", "Reshape", "Softmax"]
    reshape = out.graph.node[2]
    assert _init(out, reshape.input[1]).tolist() == [1, -1]
    assert_same_outputs(model, out)


def test_folds_constant_nodes_and_arithmetic_on_weights_keeping_tensor_names():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x, float[3,3] W) => (float[2,3] y) {
        two = Constant <value = float {2.0}> ()
        w2 = Mul (W, two)
        wt = Transpose (w2)
        y = MatMul (x, wt)
    }""")
    out, result = run_pass(fold_constants, model)
    assert result.changed == 3 and op_types(out) == ["MatMul"]
    assert out.graph.node[0].input[1] == "wt"
    assert np.array_equal(_init(out, "wt"), (_init(model, "W") * 2).T)
    assert_same_outputs(model, out)


def test_refuses_folds_that_grow_the_model():
    # 1.2 M floats = 4.6 MB from an 8-byte shape: shape inference knows the size, nothing is evaluated
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,1200,1000] x) => (float[1,1200,1000] y) <int64[3] S = {1, 1200, 1000}> {
        big = ConstantOfShape <value = float[1] {0.5}> (S)
        y = Add (x, big)
    }""")
    out, result = run_pass(fold_constants, model)
    assert result.changed == 0 and op_types(out) == ["ConstantOfShape", "Add"]
    assert "MB of constants" in result.skipped[0].reason


def test_refuses_growth_found_only_after_evaluation():
    # Expand to a shape computed by Concat: shape inference cannot size it, the evaluated value can
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,1200,1000] x) => (float[1,1200,1000] y) <float[1] v = {0.5}, int64[1] a = {1}, int64[2] b = {1200, 1000}> {
        s = Concat <axis = 0> (a, b)
        big = Expand (v, s)
        y = Add (x, big)
    }""")
    out, result = run_pass(fold_constants, model)
    assert result.changed == 1 and op_types(out) == ["Expand", "Add"]  # the Concat folds
    assert any("MB of constants" in s.reason for s in result.skipped)
    assert max(t.ByteSize() for t in out.graph.initializer) < 1000


def test_keeps_random_and_quantization_nodes_and_graph_output_producers():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,2] x) => (float[2,2] y, float[2] k) <int8[2,2] Q = {1, 2, 3, 4}, float s = {0.1}, int8 z = {0}> {
        r = RandomNormal <shape = [2,2]> ()
        w = DequantizeLinear (Q, s, z)
        k = Constant <value = float[2] {1.0, 2.0}> ()
        t = Add (x, r)
        y = MatMul (t, w)
    }""")
    out, result = run_pass(fold_constants, model)
    assert result.changed == 0 and op_types(out) == op_types(model)
    reasons = {s.node: s.reason for s in result.skipped}
    assert "random" in reasons["RandomNormal_0"]
    assert "calibration_type load" in reasons["DequantizeLinear_1"]
    assert "graph output" in reasons["Constant_2"]


def test_a_node_that_cannot_be_evaluated_keeps_itself_only():
    # Built by hand: the bad Reshape (6 values into 4) passes the checker, not evaluation
    nodes = [helper.make_node("Reshape", ["six", "four"], ["bad"], name="Reshape_0"),
             helper.make_node("Neg", ["ok"], ["neg"], name="Neg_1"),
             helper.make_node("Add", ["x", "neg"], ["y"], name="Add_2"),
             helper.make_node("Add", ["x", "bad"], ["z"], name="Add_3")]
    inits = [numpy_helper.from_array(np.arange(6, dtype=np.float32), "six"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.ones(4, np.float32), "ok")]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4]) for n in ("x", "y", "z")]
    model = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, result = run_pass(fold_constants, model)
    assert result.changed == 1 and op_types(out) == ["Reshape", "Add", "Add"]
    assert _init(out, "neg").tolist() == [-1.0] * 4
    assert [s.node for s in result.skipped] == ["Reshape_0"] and "cannot be evaluated" in result.skipped[0].reason


def test_nothing_constant_nothing_changed():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x, float[3,4] W) => (float[2,4] y) {
        y = MatMul (x, W)
    }""")
    out, result = run_pass(fold_constants, model)
    assert result.changed == 0 and result.skipped == [] and out == model
