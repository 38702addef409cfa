"""fold_conv_mul_add: per-channel Mul / Add by a constant folded into the Conv before it."""

from __future__ import annotations

import numpy as np
import pytest

from engine.passes import fold_conv_mul_add
from engine.passes.channels import per_channel
from tests.support.models import assert_same_outputs, learnable_affine, onnx_text, op_types, run_pass

CONV_OP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6,6] x, float[6,{cin},3,3] W{bias_decl}, float[{cshape}] C) => (float[1,6,6,6] y) {{
    c = Conv <group = {group}, pads = [1,1,1,1]> (x, W{bias_arg})
    y = {op} ({args})
}}"""


def _model(op="Mul", cshape="6,1,1", bias=True, group=1, args="c, C"):
    return onnx_text(CONV_OP, op=op, cshape=cshape, group=group, cin=4 // group, args=args,
                     bias_decl=", float[6] B" if bias else "", bias_arg=", B" if bias else "")


@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("cshape", ["6,1,1", "1,6,1,1", "1", "1,1,1"])
@pytest.mark.parametrize("bias,group", [(True, 1), (False, 2)])
def test_folds_per_channel_constant(op, cshape, bias, group):
    model = _model(op, cshape, bias, group)
    out, result = run_pass(fold_conv_mul_add, model)
    assert result.changed == 1 and op_types(out) == ["Conv"]
    assert out.graph.node[0].output[0] == "y" and out.graph.node[0].name == "Conv_0"
    assert_same_outputs(model, out)


def test_constant_on_the_left_and_a_chain_fold_in_one_run():
    model = learnable_affine()  # Conv → Mul(a, ·) → Add(·, b) → HardSwish → ...
    out, result = run_pass(fold_conv_mul_add, model)
    assert result.changed == 2 and op_types(out)[:2] == ["Conv", "Add"]  # the Add of x + 3 stays
    assert_same_outputs(model, out)


def test_folds_into_grouped_conv_transpose():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,3,3] x, float[4,3,2,2] W, float[6] B, float[1,6,1,1] C) => (float[1,6,6,6] y) {
        c = ConvTranspose <group = 2, strides = [2,2]> (x, W, B)
        y = Mul (C, c)
    }""")
    out, result = run_pass(fold_conv_mul_add, model)
    assert result.changed == 1 and op_types(out) == ["ConvTranspose"]
    assert_same_outputs(model, out)


@pytest.mark.parametrize("cshape,yshape", [("1,1,6,6", "1,6,6,6"), ("6", "1,6,6,6"), ("2,6,1,1", "2,6,6,6"),
                                           ("1,1,6,1,1", "1,1,6,6,6")])
def test_skips_constant_that_is_not_per_channel(cshape, yshape):
    text = CONV_OP.replace("float[1,6,6,6] y", f"float[{yshape}] y")  # spatial, batch or rank-5 constants
    model = onnx_text(text, op="Add", cshape=cshape, group=1, cin=4, args="c, C", bias_decl="", bias_arg="")
    out, result = run_pass(fold_conv_mul_add, model)
    assert result.changed == 0 and op_types(out) == ["Conv", "Add"]
    assert "not per output channel" in result.skipped[0].reason


def test_skips_conv_output_read_twice():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6,6] x, float[6,4,1,1] W, float[6,1,1] C) => (float[1,6,6,6] y, float[1,6,6,6] r) {
        c = Conv (x, W)
        y = Mul (c, C)
        r = Relu (c)
    }""")
    _, result = run_pass(fold_conv_mul_add, model)
    assert result.changed == 0 and "also feeds Relu_2" in result.skipped[0].reason


def test_skips_shared_bias_and_non_constant_weight():
    shared = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6,6] x, float[6,4,1,1] W, float[6,4,1,1] V, float[6] B, float[6,1,1] C) => (float[1,6,6,6] y, float[1,6,6,6] z) {
        c = Conv (x, W, B)
        y = Add (c, C)
        z = Conv (x, V, B)
    }""")
    _, result = run_pass(fold_conv_mul_add, shared)
    assert result.changed == 0 and "bias 'B' is shared" in result.skipped[0].reason
    dynamic = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6,6] x, float[6,4,1,1] w, float[6,1,1] C) => (float[1,6,6,6] y) {
        c = Conv (x, w)
        y = Mul (c, C)
    }""")
    _, result = run_pass(fold_conv_mul_add, dynamic)
    assert result.changed == 0 and "weight 'w' is not a constant initializer" in result.skipped[0].reason


def test_per_channel_shapes():
    assert per_channel(np.ones((6, 1, 1)), 4, 6).shape == (6,)
    assert per_channel(np.full((1,), 2.0), 4, 6).tolist() == [2.0] * 6
    assert per_channel(np.ones(6), 4, 6) is None  # [6] broadcasts along W, not channels
    assert per_channel(np.ones((1, 6, 1, 1)), 4, 6) is not None
    assert per_channel(np.ones((1, 3, 1, 1)), 4, 6) is None
