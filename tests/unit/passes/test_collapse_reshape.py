"""collapse_reshape: Reshape / Flatten chains become one Reshape."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from engine.passes import collapse_reshape
from tests.support.models import assert_same_outputs, onnx_text, op_types, reshape_chain, run_pass


def _shape_of(model, node):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == node.input[1]).tolist()


def test_reshape_reshape_flatten_chain_collapses_in_one_run():
    model = reshape_chain()  # Conv → Reshape [1,8,16] → Reshape [0,4,2,16] → Flatten → MatMul
    out, result = run_pass(collapse_reshape, model)
    assert result.changed == 2 and op_types(out) == ["Conv", "Reshape", "MatMul"]
    reshape = out.graph.node[1]
    assert reshape.name == "Flatten_3" and reshape.input[0] == "Conv_0_y" and _shape_of(out, reshape) == [1, 128]
    assert_same_outputs(model, out)


def test_flatten_then_reshape_with_zero_uses_the_inferred_shape():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[2,6,2] y) <int64[3] S = {0, 6, -1}> {
        f = Flatten <axis = 1> (x)
        y = Reshape (f, S)
    }""")
    out, result = run_pass(collapse_reshape, model)
    assert result.changed == 1 and op_types(out) == ["Reshape"] and _shape_of(out, out.graph.node[0]) == [2, 6, 2]
    assert_same_outputs(model, out)


def test_skips_intermediate_read_twice():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[24] y, float[2,12] r) <int64[2] A = {2, 12}, int64[1] B = {24}> {
        m = Reshape (x, A)
        y = Reshape (m, B)
        r = Relu (m)
    }""")
    _, result = run_pass(collapse_reshape, model)
    assert result.changed == 0 and "also feeds Relu_2" in result.skipped[0].reason


def test_skips_shape_that_is_not_constant():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x, int64[2] s) => (float[?,?] y) <int64[2] A = {6, 4}> {
        m = Reshape (x, A)
        y = Reshape (m, s)
    }""")
    out, result = run_pass(collapse_reshape, model)
    assert result.changed == 0 and op_types(out) == ["Reshape", "Reshape"]
    assert "not constant" in result.skipped[0].reason
    feeds = {"x": np.ones((2, 3, 4), np.float32), "s": np.array([4, 6], np.int64)}
    assert_same_outputs(model, out, feeds=feeds)
