"""fuse_hard_sigmoid: Clip(x+3, 0, 6)/6 and its spellings → HardSigmoid(1/6, 1/2); look-alikes stay."""

from __future__ import annotations

import pytest

from engine.passes import fuse_hard_sigmoid
from engine.passes.graph import attr
from tests.support.models import assert_same_outputs, hard_sigmoid_block, onnx_text, op_types, run_pass

HSIG = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,8] y) <float three = {{3.0}}, float lo = {{0.0}}, float hi = {{{hi}}}, float k = {{{k}}}> {{
    a = Add ({add})
    c = Clip (a, lo, hi)
    y = {end} (c, k)
}}"""


@pytest.mark.parametrize("add,end,k", [("x, three", "Div", "6.0"), ("three, x", "Div", "6.0"),
                                       ("x, three", "Mul", "0.16666667")])
def test_decomposed_hard_sigmoid_becomes_one_op(add, end, k):
    model = onnx_text(HSIG, add=add, end=end, k=k, hi="6.0")
    out, result = run_pass(fuse_hard_sigmoid, model)
    assert result.changed == 1 and op_types(out) == ["HardSigmoid"]
    node = out.graph.node[0]
    assert node.name == f"{end}_2" and list(node.input) == ["x"] and list(node.output) == ["y"]
    assert attr(node, "alpha") == pytest.approx(1 / 6) and attr(node, "beta") == 0.5
    assert_same_outputs(model, out)


def test_squeeze_excite_gate():
    model = hard_sigmoid_block()
    out, result = run_pass(fuse_hard_sigmoid, model)
    assert result.changed == 1 and "HardSigmoid" in op_types(out) and "Clip" not in op_types(out)
    assert_same_outputs(model, out)


@pytest.mark.parametrize("hi,k", [("5.0", "6.0"), ("6.0", "5.0")])
def test_look_alikes_are_verified_and_refused(hi, k):
    model = onnx_text(HSIG, add="x, three", end="Div", k=k, hi=hi)
    out, result = run_pass(fuse_hard_sigmoid, model)
    assert result.changed == 0 and op_types(out) == ["Add", "Clip", "Div"]
    assert "does not compute HardSigmoid" in result.skipped[0].reason


def test_hard_swish_spelling_is_left_for_fuse_activations():
    model = onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,8] x) => (float[2,8] y) <float three = {3.0}, float lo = {0.0}, float hi = {6.0}, float k = {6.0}> {
        a = Add (x, three)
        c = Clip (a, lo, hi)
        m = Mul (x, c)
        y = Div (m, k)
    }""")
    out, result = run_pass(fuse_hard_sigmoid, model)
    assert result.changed == 0 and result.skipped == [] and op_types(out) == op_types(model)
