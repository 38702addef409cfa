"""fuse_activations: decomposed HardSwish / SiLU / GELU / Mish → one op where ONNX and onnxruntime
have it, otherwise one `activation` fusion group; look-alikes are refused by evaluation."""

from __future__ import annotations

import pytest

from engine.passes import fuse_activations, fuse_hard_sigmoid
from engine.passes.graph import attr
from engine.passes.groups import FusionGroup, read_groups
from tests.support.models import (
    assert_same_outputs,
    gelu_block,
    hardswish_block,
    mish_block,
    onnx_text,
    op_types,
    run_pass,
    silu_block,
)


@pytest.mark.parametrize("form", ["clip_div", "hardsigmoid"])
def test_hard_swish_becomes_one_op(form):
    model = hardswish_block(form)
    out, result = run_pass(fuse_activations, model)
    assert result.changed == 1 and op_types(out) == ["Conv", "HardSwish", "Conv"]
    hswish = out.graph.node[1]
    assert list(hswish.input) == ["Conv_0_y"] and hswish.name == model.graph.node[-2].name
    assert read_groups(out) == []
    assert_same_outputs(model, out)


def test_hard_swish_with_scaled_clip_after_hard_sigmoid_pass():
    model = hardswish_block("clip_mul")  # x · (Clip(3 + x, 0, 6) · ⅙)
    mid, first = run_pass(fuse_hard_sigmoid, model)
    out, second = run_pass(fuse_activations, mid)
    assert (first.changed, second.changed) == (1, 1) and op_types(out) == ["Conv", "HardSwish", "Conv"]
    assert_same_outputs(model, out)


def test_hard_swish_below_opset_14_is_grouped():
    model = hardswish_block("clip_div", opset=13)
    out, result = run_pass(fuse_activations, model)
    assert op_types(out) == op_types(model) and result.changed == 1  # one new group
    assert read_groups(out) == [FusionGroup("Add_1+Clip_2+Mul_3+Div_4", "HardSwish",
                                            ("Add_1", "Clip_2", "Mul_3", "Div_4"), "activation")]
    assert "opset 13 has no HardSwish (needs 14)" in result.skipped[0].reason


@pytest.mark.parametrize("build,kind,count", [
    (silu_block, "SiLU", 3),
    (lambda: gelu_block("erf"), "GELU", 5),
    (lambda: gelu_block("erf_prescaled"), "GELU", 5),
    (lambda: gelu_block("tanh"), "GELU_tanh", 8),
    (mish_block, "Mish", 3),
])
def test_activations_without_an_op_at_opset_17_are_grouped(build, kind, count):
    model = build()
    out, result = run_pass(fuse_activations, model)
    assert op_types(out) == op_types(model)
    (group,) = read_groups(out)
    assert group.type == kind and group.kind == "activation" and len(group.nodes) == count
    assert group.name == "+".join(group.nodes) and result.changed == 1
    assert group.nodes[-1] == next(n.name for n in out.graph.node if n.output[0] in {
        i for m in out.graph.node if m.op_type in ("Conv", "MatMul") for i in m.input})
    again, second = run_pass(fuse_activations, out)
    assert second.changed == 0 and read_groups(again) == read_groups(out)


@pytest.mark.parametrize("form,approximate", [("erf", "none"), ("erf_prescaled", "none"), ("tanh", "tanh")])
def test_gelu_at_opset_20_becomes_gelu(form, approximate):
    model = gelu_block(form, opset=20)
    out, result = run_pass(fuse_activations, model)
    assert result.changed == 1 and op_types(out) == ["MatMul", "Gelu", "MatMul"]
    assert attr(out.graph.node[1], "approximate", b"none").decode() == approximate
    assert_same_outputs(model, out)


def test_mish_at_opset_18_becomes_mish():
    from tests.support.models import Builder

    b = Builder("mish18")
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8)
    b.output(b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])], out="y"))
    model = b.build(opset=18)
    out, result = run_pass(fuse_activations, model)
    assert result.changed == 1 and op_types(out) == ["Conv", "Mish"] and out.graph.node[1].output[0] == "y"
    assert_same_outputs(model, out)


LOOKALIKE = """
<ir_version: 8, opset_import: ["" : 20]>
g (float[2,8] x, float[2,8] z) => (float[2,8] y{extra}) <float half = {{0.6}}, float one = {{1.0}}, float r2 = {{1.4142135}}> {{
    d = Div (x, r2)
    e = Erf (d)
    a = Add (e, one)
    m = Mul ({mul})
    y = Mul (m, half)
}}"""


@pytest.mark.parametrize("mul,extra", [
    ("x, a", ""),  # 0.6 · x · (1 + erf(x/√2)): not GELU
    ("z, a", ""),  # gated by another tensor
])
def test_look_alikes_are_not_fused(mul, extra):
    model = onnx_text(LOOKALIKE, mul=mul, extra=extra)
    out, result = run_pass(fuse_activations, model)
    assert result.changed == 0 and op_types(out) == op_types(model) and read_groups(out) == []


def test_intermediate_read_elsewhere_is_not_fused():
    text = LOOKALIKE.replace("{{0.6}}", "{{0.5}}")
    model = onnx_text(text, mul="x, a", extra=", float[2,8] e")  # erf(x/√2) is also a graph output
    out, result = run_pass(fuse_activations, model)
    assert result.changed == 0 and op_types(out) == op_types(model)
    fused, ok = run_pass(fuse_activations, onnx_text(text, mul="x, a", extra=""))
    assert ok.changed == 1 and op_types(fused) == ["Gelu"]  # the same graph without the extra reader
