"""fold_bn: BatchNormalization folded into Conv / ConvTranspose / Gemm, and every refusal."""

from __future__ import annotations

import pytest

from engine.passes import fold_bn
from tests.support.models import assert_same_outputs, onnx_text, op_types, run_pass

BN = "Gamma, Beta, Mean, Var"
BN_DECL = "float[{m}] Gamma, float[{m}] Beta, float[{m}] Mean, float[{m}] Var"

CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6,6] x, float[8,{cin},3,3] W{bias_decl}, """ + BN_DECL.format(m=8) + """) => (float[1,8,6,6] y) {{
    c = Conv <group = {group}, pads = [1,1,1,1]> (x, W{bias_arg})
    y = BatchNormalization <epsilon = 0.001> (c, """ + BN + """)
}}"""

CONVT_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,5,5] x, float[4,{mg},2,2] W{bias_decl}, """ + BN_DECL.format(m=6) + """) => (float[1,6,10,10] y) {{
    c = ConvTranspose <group = {group}, strides = [2,2]> (x, W{bias_arg})
    y = BatchNormalization (c, """ + BN + """)
}}"""

GEMM_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3,5] x, float[{wshape}] W{bias_decl}, """ + BN_DECL.format(m=7) + """) => (float[3,7] y) {{
    c = Gemm <transB = {transB}, alpha = 0.5, beta = 1.5> (x, W{bias_arg})
    y = BatchNormalization (c, """ + BN + """)
}}"""


def _bias(bias: bool, shape: str) -> dict:
    return {"bias_decl": f", float[{shape}] B" if bias else "", "bias_arg": ", B" if bias else ""}


@pytest.mark.parametrize("bias,group", [(False, 1), (True, 1), (True, 2), (False, 4)])
def test_fold_bn_into_conv(bias, group):
    model = onnx_text(CONV_BN, cin=4 // group, group=group, **_bias(bias, "8"))
    out, result = run_pass(fold_bn, model)
    assert result.changed == 1 and op_types(out) == ["Conv"]
    conv = out.graph.node[0]
    assert conv.name == model.graph.node[0].name and conv.output[0] == "y" and len(conv.input) == 3
    assert_same_outputs(model, out)


@pytest.mark.parametrize("bias,group", [(False, 1), (True, 1), (True, 2)])
def test_fold_bn_into_conv_transpose(bias, group):
    model = onnx_text(CONVT_BN, mg=6 // group, group=group, **_bias(bias, "6"))
    out, result = run_pass(fold_bn, model)
    assert result.changed == 1 and op_types(out) == ["ConvTranspose"]
    assert_same_outputs(model, out)


@pytest.mark.parametrize("bias", ["", "7", "1,7", "3,7", "1"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_bn_into_gemm(bias, trans_b):
    wshape = "7,5" if trans_b else "5,7"
    model = onnx_text(GEMM_BN, wshape=wshape, transB=trans_b, **_bias(bool(bias), bias))
    out, result = run_pass(fold_bn, model)
    assert result.changed == 1 and op_types(out) == ["Gemm"]
    assert_same_outputs(model, out)


def test_fold_bn_keeps_graph_output_name_and_other_readers():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[5,3,1,1] W, """ + BN_DECL.format(m=5) + """) => (float[1,5,4,4] y, float[1,5,4,4] r) {
        c = Conv (x, W)
        y = BatchNormalization (c, """ + BN + """)
        r = Relu (y)
    }""")
    out, result = run_pass(fold_bn, model)
    assert result.changed == 1 and op_types(out) == ["Conv", "Relu"]
    assert [o.name for o in out.graph.output] == ["y", "r"] and out.graph.node[0].output[0] == "y"
    assert_same_outputs(model, out)


def _refused(text: str, **fmt):
    model = onnx_text(text, **fmt)
    out, result = run_pass(fold_bn, model)
    assert result.changed == 0 and op_types(out) == op_types(model)
    assert len(result.skipped) >= 1
    return result.skipped[0].reason


def test_fold_bn_skips_shared_weight():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] W, """ + BN_DECL.format(m=3) + """) => (float[1,3,4,4] y, float[1,3,4,4] r) {
        a = Conv (x, W)
        b = Conv (x, W)
        y = BatchNormalization (a, """ + BN + """)
        r = Relu (b)
    }""")
    assert "shared" in reason


def test_fold_bn_skips_non_constant_weight():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] w, """ + BN_DECL.format(m=3) + """) => (float[1,3,4,4] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, """ + BN + """)
    }""")
    assert "not a constant initializer" in reason


def test_fold_bn_skips_conv_feeding_two_consumers():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] W, """ + BN_DECL.format(m=3) + """) => (float[1,3,4,4] y, float[1,3,4,4] r) {
        c = Conv (x, W)
        y = BatchNormalization (c, """ + BN + """)
        r = Relu (c)
    }""")
    assert "also feeds" in reason


def test_fold_bn_skips_conv_output_that_is_a_graph_output():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] W, """ + BN_DECL.format(m=3) + """) => (float[1,3,4,4] y, float[1,3,4,4] c) {
        c = Conv (x, W)
        y = BatchNormalization (c, """ + BN + """)
    }""")
    assert "graph output" in reason


def test_fold_bn_skips_non_constant_statistics():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] W, float[3] Gamma, float[3] Beta, float[3] mean, float[3] Var) => (float[1,3,4,4] y) {
        c = Conv (x, W)
        y = BatchNormalization (c, Gamma, Beta, mean, Var)
    }""")
    assert "not constant" in reason


def test_fold_bn_skips_training_mode():
    reason = _refused("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x, float[3,3,1,1] W, """ + BN_DECL.format(m=3) + """) => (float[1,3,4,4] y) {
        c = Conv (x, W)
        y, rm, rv = BatchNormalization <training_mode = 1> (c, """ + BN + """)
    }""")
    assert "training mode" in reason
