"""fuse_conv_act / fuse_conv_add: fusion groups recorded in metadata, graph untouched."""

from __future__ import annotations

import json

import pytest

from engine.passes import fold_bn, fuse_conv_act, fuse_conv_add
from engine.passes.groups import KEY, FusionGroup, read_groups
from tests.support.models import onnx_text, op_types, residual_block, run_pass

CONV_ACT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x{extra_in}) => (float[1,4,6,6] y{extra_out}) <float lo = {{0.0}}, float hi = {{6.0}}> {{
    c = Conv <pads = [1,1,1,1]> (x, W)
    y = {act}
    {more}
}}""".replace("x{extra_in})", "x, float[4,3,3,3] W{extra_in})")


def _conv_act(act="Relu (c)", more="", extra_in="", extra_out=""):
    return onnx_text(CONV_ACT, act=act, more=more, extra_in=extra_in, extra_out=extra_out)


@pytest.mark.parametrize("act,op", [("Relu (c)", "Relu"), ("Clip (c, lo, hi)", "Clip"),
                                    ("LeakyRelu <alpha = 0.1> (c)", "LeakyRelu")])
def test_conv_activation_group(act, op):
    model = _conv_act(act)
    out, result = run_pass(fuse_conv_act, model)
    assert result.changed == 1 and op_types(out) == op_types(model)
    assert read_groups(out) == [FusionGroup(f"Conv_0+{op}_1", f"Conv+{op}", ("Conv_0", f"{op}_1"), "conv_act")]
    raw = json.loads(next(p.value for p in out.metadata_props if p.key == KEY))
    assert raw == [{"name": f"Conv_0+{op}_1", "type": f"Conv+{op}", "nodes": ["Conv_0", f"{op}_1"], "kind": "conv_act"}]
    again, second = run_pass(fuse_conv_act, out)
    assert second.changed == 0 and again.metadata_props == out.metadata_props


def test_conv_read_by_two_nodes_is_not_grouped():
    model = _conv_act(more="z = Neg (c)", extra_out=", float[1,4,6,6] z")
    out, result = run_pass(fuse_conv_act, model)
    assert result.changed == 0 and read_groups(out) == [] and "also feeds Neg_2" in result.skipped[0].reason


def test_clip_with_runtime_bounds_is_not_grouped():
    model = _conv_act(act="Clip (c, lo, top)", extra_in=", float top")
    out, result = run_pass(fuse_conv_act, model)
    assert result.changed == 0 and read_groups(out) == [] and "not constant" in result.skipped[0].reason


def test_groups_follow_the_graph():
    model = _conv_act()
    grouped, _ = run_pass(fuse_conv_act, model)
    del grouped.graph.node[1]  # the Relu is gone (say another pass removed it): its group goes too
    grouped.graph.node[0].output[0] = "y"
    _, result = run_pass(fuse_conv_act, grouped)
    assert result.changed == 1
    regrouped, _ = run_pass(fuse_conv_act, grouped)
    assert read_groups(regrouped) == []


def test_residual_add_group():
    model, _ = run_pass(fold_bn, residual_block())  # Conv → BN → Add(·, x) becomes Conv → Add(·, x)
    out, result = run_pass(fuse_conv_add, model)
    assert result.changed == 1 and op_types(out) == op_types(model)
    (group,) = read_groups(out)
    assert group.type == "Conv+Add" and group.kind == "conv_add" and group.nodes == ("Conv_3", "Add_5")


RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6,6] x, float[4,4,1,1] W, float[4,4,1,1] V{extra_in}) => (float[1,4,6,6] y{extra_out}) {{
    a = Conv (x, W)
    b = Conv (x, V)
    y = Add ({add})
    {more}
}}"""


def test_of_two_conv_inputs_the_later_conv_is_grouped():
    model = onnx_text(RESIDUAL, add="a, b", more="", extra_in="", extra_out="")
    out, _ = run_pass(fuse_conv_add, model)
    assert [g.nodes for g in read_groups(out)] == [("Conv_1", "Add_2")]


def test_broadcasting_add_is_not_grouped():
    model = onnx_text(RESIDUAL, add="a, s", more="", extra_in=", float[1,4,1,1] s", extra_out="")
    out, result = run_pass(fuse_conv_add, model)
    assert result.changed == 0 and read_groups(out) == [] and "broadcasts" in result.skipped[0].reason


def test_conv_read_elsewhere_is_not_grouped():
    model = onnx_text(RESIDUAL, add="a, x", more="z = Relu (a)", extra_in="", extra_out=", float[1,4,6,6] z")
    out, result = run_pass(fuse_conv_add, model)
    assert result.changed == 0 and read_groups(out) == [] and "read elsewhere" in result.skipped[0].reason
