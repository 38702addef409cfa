"""The plan's numbers: observed tensors, weight and bias scales, shared scales, fusion groups."""

from __future__ import annotations

import numpy as np
import pytest

from engine.calibration import Threshold
from engine.quantize.planner import (
    INT32_MAX,
    MissingThresholdError,
    QuantOptions,
    make_plan,
    plan_tensors,
    quantize_bias,
    weight_scales,
)
from engine.quantize.ptq import build_ptq_model
from tests.support.models import Builder, concat_resize, conv_transpose_up, multi_io
from tests.unit.quantize.quant_support import initializer, max_thresholds, node, optimized, plan_for


def residual():
    """x → Conv_0 → Relu_1 → Conv_2 → Add_3(+x) → Relu_4 → y: groups Conv_0+Relu_1, Conv_2+Add_3."""
    b = Builder("residual")
    x = b.input("x", [1, 4, 6, 6])
    y = b.conv(b.op("Relu", [b.conv(x, 4, 4)]), 4, 4)
    b.output(b.op("Relu", [b.op("Add", [y, x])], out="y"))
    return optimized(b.build())


def test_plan_tensors_lists_group_outputs_not_their_insides():
    model = residual()
    assert plan_tensors(model) == ["x", "Relu_1_y", "Add_3_y", "y"]


def test_fusion_groups_quantize_only_the_last_output_and_the_residual_input():
    plan = plan_for(residual())
    assert [(g.name, g.type, g.kind) for g in plan.groups] == [
        ("Conv_0+Relu_1", "Conv+Relu", "conv_act"), ("Conv_2+Add_3", "Conv+Add", "conv_add")]
    assert plan.nodes["Add_3"].act_inputs == ("x",) and plan.nodes["Add_3"].group == "Conv_2+Add_3"
    assert plan.nodes["Conv_2"].act_inputs == ("Relu_1_y",)
    assert set(plan.acts) == {"x", "Relu_1_y", "Add_3_y", "y"}  # Conv_0_y, Conv_2_y stay int32 inside
    assert plan.shared == []  # the residual Add inside a Conv+Add group needs no shared input scale


def test_user_cpu_placement_of_a_member_dissolves_the_group():
    plan = plan_for(residual(), QuantOptions.build(run_on_cpu=["Relu_1"]))
    assert [g.name for g in plan.groups] == ["Conv_2+Add_3"]
    assert "fusion group Conv_0+Relu_1 is not fused: Relu_1 is placed on the CPU" in plan.notes
    assert plan.nodes["Conv_0"].group is None and "Conv_0_y" in plan.acts


def test_a_missing_threshold_is_a_planner_bug_with_the_tensor_named():
    model = residual()
    thresholds = max_thresholds(model)
    del thresholds["Add_3_y"]
    with pytest.raises(MissingThresholdError, match="'Add_3_y' \\(from Conv_2\\+Add_3\\)"):
        make_plan(model, thresholds)


def test_conv_weight_scales_are_max_abs_per_output_channel():
    model = residual()
    plan = plan_for(model)
    conv = node(model, "Conv_0")
    w = initializer(model, conv.input[1])
    wq = plan.weights[conv.input[1]]
    expected = np.array([np.abs(w[c]).max() / 127 for c in range(w.shape[0])], np.float32)
    assert wq.axis == 0 and wq.groups == 1 and np.array_equal(wq.scale, expected)


def test_grouped_conv_transpose_scales_follow_its_output_channels():
    model = optimized(conv_transpose_up(group=2))  # W: [8, 6, 2, 2], group 2 → 12 output channels
    plan = plan_for(model)
    convt = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    w = initializer(model, convt.input[1])
    wq = plan.weights[convt.input[1]]
    expected = []
    for g in range(2):
        for j in range(6):
            expected.append(np.abs(w[g * 4:(g + 1) * 4, j]).max() / 127)
    assert (wq.axis, wq.groups) == (1, 2) and np.array_equal(wq.scale, np.array(expected, np.float32))
    # the ptq model's int8 weights dequantize to W rounded per output channel, in W's own layout
    ptq = build_ptq_model(model, plan)
    q = initializer(ptq, f"{convt.input[1]}_quantized")
    assert q.dtype == np.int8 and q.shape == (4, 12, 2, 2)  # regrouped: axis 1 = output channel
    back = q.reshape(4, 2, 6, 2, 2).swapaxes(0, 1).reshape(8, 6, 2, 2)
    for g in range(2):
        for j in range(6):
            s = np.float32(expected[g * 6 + j])
            block = w[g * 4:(g + 1) * 4, j].astype(np.float64)
            assert np.array_equal(back[g * 4:(g + 1) * 4, j], np.clip(np.rint(block / s), -127, 127))


def test_weight_scales_of_an_all_zero_channel_stay_valid():
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1] = -2.54
    assert np.array_equal(weight_scales(w, 0), np.array([1 / 127, 0.02], np.float32))


def test_a_subnormal_weight_channel_counts_as_zero_and_its_bias_scale_stays_positive():
    """PP-OCRv4 rec has a channel at 3e-40: max|W| / 127 was 2.5e-42, and s_in · s_w underflowed to 0."""
    w = np.ones((2, 3, 1, 1), np.float32)
    w[0] = 3e-40
    assert np.array_equal(weight_scales(w, 0), np.array([1 / 127, 1 / 127], np.float32))
    b = Builder("subnormal_channel")
    x = b.input("x", [1, 3, 4, 4])
    b.output(b.op("Conv", [x, b.const(w, "w"), b.const([0.0, 0.5], "b")], out="y"))
    model = optimized(b.build())
    plan = plan_for(model, QuantOptions.build(node_info={"Conv_0": {"InputType0": "int16"}}), x=1e-3)
    assert np.all(plan.biases["b"].scale > 0) and plan.acts["x"].bits == 16
    assert np.array_equal(quantize_bias(np.array([0.0, 0.5]), plan.biases["b"].scale)[:1], [0])


def test_bias_is_int32_at_input_scale_times_weight_scale():
    model = residual()
    plan = plan_for(model, x=2.54)
    conv = node(model, "Conv_0")
    b = initializer(model, conv.input[2])
    bq = plan.biases[conv.input[2]]
    s_in = 2.54 / 127
    s_w = plan.weights[conv.input[1]].scale.astype(np.float64)
    assert np.array_equal(bq.scale, (s_in * s_w).astype(np.float32))
    ptq = build_ptq_model(model, plan)
    stored = initializer(ptq, f"{conv.input[2]}_quantized")
    assert stored.dtype == np.int32
    assert np.array_equal(stored, np.rint(b.astype(np.float64) / bq.scale.astype(np.float64)).astype(np.int32))
    assert not any(t.name == conv.input[2] for t in ptq.graph.initializer)  # the float bias is gone


def test_a_near_zero_weight_channel_gets_a_scale_its_bias_fits_in():
    b = Builder("dead_channel")
    w = np.random.default_rng(0).standard_normal((3, 2, 1, 1)).astype(np.float32)
    w[1] = 1e-9  # a channel BN folding nearly zeroed, with a real bias
    x = b.input("x", [1, 2, 4, 4])
    b.output(b.op("Conv", [x, b.const(w, "w"), b.const([0.1, 0.5, -0.2], "b")], out="y"))
    model = optimized(b.build())
    plan = plan_for(model, QuantOptions.build(optimization=["set_model_output_int8"]), x=1.27)
    s_w = plan.weights["w"].scale
    assert s_w[0] == np.float32(np.abs(w[0]).max() / 127) and s_w[2] == np.float32(np.abs(w[2]).max() / 127)
    assert s_w[1] == np.float32(0.5 / (0.01 * 2**30))  # |b| / (s_in · 2^30): the bias fits, with headroom
    assert "weight 'w' of Conv_0: the scale of 1 near-zero channels is raised so their bias fits int32" in plan.notes
    q = quantize_bias(np.array([0.1, 0.5, -0.2]), plan.biases["b"].scale)
    assert abs(int(q[1])) <= 2**30 and q[0] == np.rint(0.1 / np.float64(plan.biases["b"].scale[0]))
    assert not any("saturated" in n for n in plan.notes) and INT32_MAX > 2**30


def test_concat_inputs_and_output_share_the_largest_threshold():
    model = optimized(concat_resize())
    plan = plan_for(model, Relu_1_y=2.0, Relu_3_y=5.0, Concat_5_y=4.5)
    tied = ("Relu_1_y", "Relu_3_y", "Resize_4_y", "Concat_5_y")
    assert [set(s) for s in plan.shared] == [set(tied)]
    assert {t: plan.acts[t].threshold for t in tied} == dict.fromkeys(tied, 5.0)
    assert {t: plan.calibrated_acts[t].threshold for t in tied} == {
        "Relu_1_y": 2.0, "Relu_3_y": 5.0, "Resize_4_y": 5.0, "Concat_5_y": 4.5}  # Resize (nearest) keeps its input's
    conv = node(model, "Conv_6")  # the Conv reading the Concat: its bias scale uses the shared scale
    assert np.allclose(plan.biases[conv.input[2]].scale, (5.0 / 127) * plan.weights[conv.input[1]].scale)


def test_add_inputs_share_one_scale():
    model = optimized(multi_io())
    plan = plan_for(model, stem=3.0, feat=7.0)
    assert ("stem", "feat") in plan.shared
    assert plan.acts["stem"].threshold == plan.acts["feat"].threshold == 7.0
    assert plan.acts["fused"].threshold != 7.0  # the Add's output keeps its own


def head(reshape: bool = False):
    """Box regression (large range) and class scores (0..1) concatenated into one model output."""
    b = Builder("head")
    x = b.input("x", [1, 4, 8, 8])
    box = b.conv(x, 4, 4, k=1)
    score = b.op("Sigmoid", [b.conv(x, 4, 2, k=1)])
    cat = b.op("Concat", [box, score], axis=1, out=None if reshape else "y")
    if reshape:
        cat = b.op("Reshape", [cat, b.const([1, 6, 64], "shape", np.int64)], out="y")
    b.output(cat)
    return optimized(b.build())


@pytest.mark.parametrize("reshape", [False, True])
def test_output_concat_of_very_different_ranges_stays_float(reshape):
    model = head(reshape)
    plan = plan_for(model, Conv_0_y=640.0, Sigmoid_2_y=1.0)
    assert plan.nodes["Concat_3"].on == "CPU" and plan.nodes["Concat_3"].output_dtype == "f32"
    assert "very different ranges (640×)" in plan.nodes["Concat_3"].reason
    if reshape:
        assert plan.nodes["Reshape_4"].on == "CPU"
    assert plan.acts["Conv_0_y"].threshold == 640.0 and plan.acts["Sigmoid_2_y"].threshold == 1.0
    assert plan.shared == [] and "y" not in plan.acts
    assert any("Concat_3 joins model-output tensors with thresholds 1 to 640 (640×)" in n for n in plan.notes)


def test_similar_ranges_still_share_one_int8_scale():
    plan = plan_for(head(), Conv_0_y=6.0, Sigmoid_2_y=1.0)
    assert plan.nodes["Concat_3"].on == "BPU" and plan.acts["Sigmoid_2_y"].threshold == 6.0


def test_a_user_forced_output_concat_shares_int16_instead():
    plan = plan_for(head(), QuantOptions.build(run_on_bpu=["Concat_3"]), Conv_0_y=640.0, Sigmoid_2_y=1.0)
    assert plan.nodes["Concat_3"].on == "BPU" and plan.nodes["Concat_3"].output_dtype == "si16"
    assert {plan.acts[t].bits for t in ("Conv_0_y", "Sigmoid_2_y", "y")} == {16}
    assert any("shares one int16 scale" in n for n in plan.notes)


def test_constant_operands_are_quantized_from_their_values():
    b = Builder("affine")
    x = b.op("Relu", [b.conv(b.input("x", [1, 2, 4, 4]), 2, 2)])
    b.output(b.op("Add", [b.op("Mul", [x, b.const([[[[0.5]], [[-1.5]]]], "gain")]), b.const([0.25], "shift")],
                  out="y"))
    model = optimized(b.build())
    plan = plan_for(model, Mul_2_y=3.0)
    assert plan.acts["gain"].threshold == 1.5 and plan.acts["gain"].method == "const"
    assert plan.shared == [] and plan.acts["shift"].threshold == 0.25  # not tied to Mul_2_y's coarser step
    assert "gain" not in plan_tensors(model) and "shift" not in plan_tensors(model)


def _per_channel_plan(last_op: str):
    """x → Conv → Relu → Conv 1×1 → `last_op` → y, every threshold per channel, planned with per_channel."""
    b = Builder("pc")
    x = b.op("Relu", [b.conv(b.input("x", [1, 2, 4, 4]), 2, 3)])
    b.output(b.op(last_op, [b.conv(x, 3, 3, k=1)], out="y"))
    model = optimized(b.build())
    found = {t: Threshold(float(v), "max", channels=np.array([v, v / 2, v / 4]), axis=1)
             for t, v in max_thresholds(model).items() if t != "x"}
    found["x"] = 3.0
    return make_plan(model, found, QuantOptions.build(per_channel=True)), found


def test_per_channel_thresholds_are_kept_only_on_model_outputs():
    plan, found = _per_channel_plan("Relu")
    assert plan.acts["y"].axis == 1 and np.allclose(plan.acts["y"].threshold, found["y"].channels)
    assert plan.acts["Relu_1_y"].axis is None and plan.acts["Relu_1_y"].threshold == found["Relu_1_y"].value
    assert any(n.startswith("per_channel: 1 activation tensors use one threshold") for n in plan.notes)


def test_per_channel_thresholds_need_a_writer_that_requantizes_per_channel():
    """A Sigmoid's integer kernel has one output scale: its output stays per-tensor under per_channel."""
    plan, found = _per_channel_plan("Sigmoid")
    assert plan.acts["y"].axis is None and plan.acts["y"].threshold == found["y"].value


def test_plans_of_every_corpus_model_are_complete():
    from tests.support.models import CORPUS

    for name, build in CORPUS.items():
        model = optimized(build())
        plan = plan_for(model)
        assert set(plan.nodes) == {n.name for n in model.graph.node}, name
        for p in plan.nodes.values():
            assert all(t in plan.acts for t in p.act_inputs), (name, p.node)
            assert p.weight is None or p.weight in plan.weights
