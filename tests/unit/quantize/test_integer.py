"""The integer program (`*_quantized_model.bc`): each lowered op family against the fake-quant model,
names and the tensor map, determinism, si32 / int16 / CPU islands, and the Quantized Cosine.

Reference: the calibrated model (`build_calibrated_model`, the other helper's independent QDQ
emitter) on the same input. "Within one step" = |bc − calibrated| ≤ one quantization step of the
output, on ≥ 99 % of the elements. Models are generated (tests.support.models), optimized by the
real passes (so fusion groups are the real ones) and planned by the real planner with max
thresholds over a few random inputs.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.problems import StageError
from engine.quantize.calibrated import build_calibrated_model, calibration_map
from engine.quantize.integer import (
    EMULATED_KEY,
    NODE_MAP_KEY,
    TENSOR_MAP_KEY,
    integer_intermediates,
    lower_to_integer,
    quantized_similarity,
    read_tensor_map,
    session_options,
)
from engine.quantize.planner import QuantOptions
from engine.quantize.types import ActQuant, NodePlan, QuantPlan
from engine.similarity import compare, run_model
from tests.support.models import Builder, conv_transpose_up, random_inputs, residual_block, silu_block
from tests.unit.quantize.quant_support import optimized, plan_for

INT8_OUT = QuantOptions.build(optimization=["set_model_output_int8"])


def run_bc(bc: onnx.ModelProto, feeds: dict, threads: int = 1) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(bc.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def lowered(model: onnx.ModelProto, options: QuantOptions = INT8_OUT):
    opt = optimized(model)
    plan = plan_for(opt, options)
    return opt, plan, lower_to_integer(opt, plan)


def within_one_step(got: np.ndarray, ref: np.ndarray, step: float) -> float:
    """Fraction of elements where |got − ref| ≤ one step (a hair of float slack)."""
    return float(np.mean(np.abs(got.astype(np.float64) - ref) <= step * (1 + 1e-4) + 1e-7))


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


# ---- generated models, one per op family -------------------------------------------------------------
def conv_relu():
    b = Builder("conv_relu", seed=1)
    b.output(b.op("Relu", [b.conv(b.input("x", [1, 3, 16, 16]), 3, 8)], out="y"))
    return b.build()


def depthwise_relu6():
    b = Builder("depthwise", seed=2)
    x = b.input("x", [1, 8, 12, 12])
    b.output(b.op("Clip", [b.conv(x, 8, 8, group=8), b.const(0.0, "zero"), b.const(6.0, "six")], out="y"))
    return b.build()


def conv_leaky_relu():
    b = Builder("conv_leaky", seed=3)
    b.output(b.op("LeakyRelu", [b.conv(b.input("x", [1, 4, 12, 12]), 4, 8)], out="y", alpha=0.1))
    return b.build()


def gemm():
    b = Builder("gemm", seed=4)
    f = b.op("Flatten", [b.input("x", [4, 8, 2, 2])], axis=1)
    b.output(b.op("Gemm", [f, b.weight((16, 32)), b.weight((16,), 0.1)], out="y", transB=1))
    return b.build()


def matmul():
    b = Builder("matmul", seed=5)
    b.output(b.op("MatMul", [b.input("x", [2, 6, 16]), b.weight((16, 12))], out="y"))
    return b.build()


def residual_out():
    """Conv → Relu → Conv + x as the model output: the Conv+Add group's own output."""
    b = Builder("residual_out", seed=15)
    x = b.input("x", [1, 8, 12, 12])
    y = b.conv(b.op("Relu", [b.conv(x, 8, 8)]), 8, 8)
    b.output(b.op("Add", [y, x], out="y"))
    return b.build()


def concat_branches():
    b = Builder("concat", seed=6)
    x = b.input("x", [1, 4, 10, 10])
    left = b.op("Relu", [b.conv(x, 4, 4)])
    right = b.op("Relu", [b.conv(x, 4, 6, k=1)])
    b.output(b.op("Concat", [left, right], out="y", axis=1))
    return b.build()


def pools():
    b = Builder("pools", seed=7)
    x = b.conv(b.input("x", [1, 4, 16, 16]), 4, 8)
    m = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    a = b.op("AveragePool", [m], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    b.output(b.op("GlobalAveragePool", [a], out="y"))
    return b.build()


def resize(mode: str):
    b = Builder(f"resize_{mode}", seed=8)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 6)
    b.output(b.op("Resize", [x, "", b.const([1.0, 1.0, 2.0, 2.0], "scales")], out="y", mode=mode))
    return b.build()


def activation(op: str, **attrs):
    def build():
        b = Builder(f"act_{op}", seed=9)
        x = b.conv(b.input("x", [1, 4, 10, 10]), 4, 8)
        b.output(b.op(op, [x], out="y", **attrs))
        return b.build(opset=20 if op == "Gelu" else 17)
    return build


def softmax():
    b = Builder("softmax", seed=10)
    x = b.conv(b.input("x", [1, 4, 6, 6]), 4, 8, k=1)
    r = b.op("Reshape", [x, b.const([1, 8, 36], "shape", np.int64)])
    b.output(b.op("Softmax", [r], out="y", axis=-1))
    return b.build()


def cpu_island():
    """Conv → Conv (on the CPU: run_on_cpu) → Conv: a float island in the middle."""
    b = Builder("island", seed=11)
    x = b.op("Relu", [b.conv(b.input("x", [1, 4, 10, 10]), 4, 8)])
    x = b.op("Relu", [b.conv(x, 8, 8)])
    b.output(b.op("Relu", [b.conv(x, 8, 4)], out="y"))
    return b.build()


def silu_gelu():
    """SiLU (Mul·Sigmoid) and GELU (erf formula) left as node groups: two table lookups."""
    b = Builder("silu_gelu", seed=12)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8)
    s = b.op("Mul", [x, b.op("Sigmoid", [x])])
    inner = b.op("Add", [b.op("Erf", [b.op("Div", [s, b.const(np.sqrt(2.0), "sqrt2")])]), b.const(1.0, "one")])
    b.output(b.op("Mul", [b.op("Mul", [s, inner]), b.const(0.5, "half")], out="y"))
    return b.build()


# family → (model builder, ops the .bc must contain, ops it must not contain, options)
FAMILIES = {
    "conv_relu": (conv_relu, {"QLinearConv", "Clip"}, {"Conv", "ConvInteger"}, INT8_OUT),
    "depthwise_relu6": (depthwise_relu6, {"QLinearConv", "Clip"}, {"Conv"}, INT8_OUT),
    "conv_leaky_relu": (conv_leaky_relu, {"QLinearConv", "Max"}, {"Conv", "LeakyRelu"}, INT8_OUT),
    "conv_transpose": (lambda: conv_transpose_up(group=2), {"ConvTranspose", "QuantizeLinear"}, set(), INT8_OUT),
    "gemm": (gemm, {"QGemm"}, {"Gemm"}, INT8_OUT),
    "matmul": (matmul, {"QLinearMatMul"}, {"MatMul"}, INT8_OUT),
    "residual_add": (residual_block, {"QLinearConv", "QLinearAdd", "Sub", "Mul"}, {"Conv", "ConvInteger", "Where"},
                     INT8_OUT),
    "residual_add_output": (residual_out, {"QLinearConv", "QLinearAdd", "Sub", "Mul"}, {"Conv", "Where"}, INT8_OUT),
    "concat": (concat_branches, {"Concat"}, {"QLinearConcat"}, INT8_OUT),
    "pools": (pools, {"MaxPool", "QLinearAveragePool", "QLinearGlobalAveragePool"},
              {"AveragePool", "GlobalAveragePool"}, INT8_OUT),
    "resize_nearest": (lambda: resize("nearest"), {"Expand"}, {"Resize"}, INT8_OUT),
    "resize_linear": (lambda: resize("linear"), {"Resize"}, set(), INT8_OUT),
    # table ops: float kernels between DequantizeLinear / QuantizeLinear where onnxruntime's are
    # faster (short chains of cheap ops), a GatherElements table otherwise (lower/lut.py)
    "sigmoid": (activation("Sigmoid"), {"Sigmoid", "DequantizeLinear"}, {"GatherElements"}, INT8_OUT),
    "tanh": (activation("Tanh"), {"Tanh"}, {"GatherElements"}, INT8_OUT),
    "hardswish": (activation("HardSwish"), {"QLinearLeakyRelu", "QLinearMul"}, {"GatherElements", "HardSwish"},
                  INT8_OUT),
    "hardsigmoid": (activation("HardSigmoid", alpha=0.2, beta=0.5), {"HardSigmoid"}, {"GatherElements"},
                    INT8_OUT),
    "exp": (activation("Exp"), {"GatherElements"}, {"Exp"}, INT8_OUT),
    "gelu_op": (activation("Gelu"), {"GatherElements"}, {"Gelu"}, INT8_OUT),
    "silu_gelu_groups": (silu_gelu, {"GatherElements", "Sigmoid"}, {"Erf"}, INT8_OUT),
    "softmax": (softmax, {"QLinearSoftmax", "Reshape"}, {"Softmax"}, INT8_OUT),
    "cpu_island": (cpu_island, {"QLinearConv", "Conv", "DequantizeLinear", "QuantizeLinear"}, set(),
                   QuantOptions.build(run_on_cpu=["Conv_2"], optimization=["set_model_output_int8"])),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_within_one_step_of_fake_quant(family):
    build, present, absent, options = FAMILIES[family]
    opt, plan, bc = lowered(build(), options)
    kinds = ops(bc)
    assert present <= set(kinds), f"{family}: expected {present} in {dict(kinds)}"
    assert not absent & set(kinds), f"{family}: {absent & set(kinds)} should be lowered away ({dict(kinds)})"
    calibrated = build_calibrated_model(opt, plan)
    for seed in (11, 12):
        feeds = random_inputs(opt, seed)
        got, ref = run_bc(bc, feeds), run_model(calibrated, feeds)
        for out in (o.name for o in opt.graph.output):
            assert got[out].dtype == np.float32 and got[out].shape == ref[out].shape
            step = plan.acts[out].scale
            frac = within_one_step(got[out], ref[out], step)
            assert frac >= 0.99, f"{family} {out}: only {frac:.2%} within one step ({step:.4g})"


def test_conv_relu_is_bit_exact_fake_quant():
    """One QLinearConv + clamp: the .bc equals the ptq-style fake quant exactly on most elements
    (requantization with a float32 multiplier differs only at exact ties)."""
    opt, plan, bc = lowered(conv_relu())
    feeds = random_inputs(opt, 3)
    got, ref = run_bc(bc, feeds)["y"], run_model(build_calibrated_model(opt, plan), feeds)["y"]
    step = plan.acts["y"].scale
    assert np.all(got >= 0)  # the fused Relu clamps at code 128 (value 0)
    assert np.mean(np.abs(got - ref) < step / 2) > 0.995


def test_qlinear_concat_when_input_scales_differ():
    """The planner shares Concat scales; a plan that does not gets QLinearConcat (requantizing)."""
    opt = optimized(concat_branches())
    plan = plan_for(opt, INT8_OUT)
    left = next(n.input[0] for n in opt.graph.node if n.op_type == "Concat")
    plan.acts[left] = dataclasses.replace(plan.acts[left], threshold=plan.acts[left].threshold / 3)
    bc = lower_to_integer(opt, plan)
    assert ops(bc)["QLinearConcat"] == 1 and ops(bc)["Concat"] == 0
    feeds = random_inputs(opt, 5)
    got = run_bc(bc, feeds)["y"]
    ref = run_model(build_calibrated_model(opt, dataclasses.replace(plan, calibrated_acts={})), feeds)["y"]
    assert within_one_step(got, ref, plan.acts["y"].scale) >= 0.99


UPSAMPLINGS = {  # attributes, scales → repeats every pixel (Expand on codes) or not (Resize on codes)
    "half_pixel_x2": ({}, [1, 1, 2, 2], True),
    "asymmetric_floor_x4": ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                            [1, 1, 4, 4], True),
    "asymmetric_floor_x2x3": ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                              [1, 1, 2, 3], True),
    "align_corners_x3": ({"coordinate_transformation_mode": "align_corners"}, [1, 1, 3, 3], False),
    "asymmetric_round_x4": ({"coordinate_transformation_mode": "asymmetric"}, [1, 1, 4, 4], False),
    "fractional_x1_5": ({}, [1, 1, 1.5, 1.5], False),
}


@pytest.mark.parametrize("case", UPSAMPLINGS)
def test_nearest_upsampling_gives_resize_codes(case):
    """A nearest Resize that repeats each pixel runs as Expand on NHWC codes; its output codes are
    onnxruntime's Resize of the input codes, for every coordinate mode (others keep the Resize)."""
    attrs, scales, repeats = UPSAMPLINGS[case]
    b = Builder(f"upsample_{case}", seed=8)
    x = b.conv(b.input("x", [2, 4, 6, 8]), 4, 6)
    b.output(b.op("Resize", [x, "", b.const(scales, "scales")], out="y", mode="nearest", **attrs))
    opt, plan, bc = lowered(b.build())
    assert ("Expand" in ops(bc)) == repeats and ("Resize" in ops(bc)) != repeats
    resize_node = next(n for n in opt.graph.node if n.op_type == "Resize")
    tmap = read_tensor_map(bc)
    feeds = random_inputs(opt, 4)
    codes_in, codes_out = integer_raw(bc, feeds, [tmap[resize_node.input[0]]["tensor"], tmap["y"]["tensor"]])
    reference = onnx.helper.make_graph(
        [onnx.helper.make_node("Resize", ["c", "", "s"], ["r"], mode="nearest", **attrs)], "ref",
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.UINT8, codes_in.shape)],
        [onnx.helper.make_tensor_value_info("r", onnx.TensorProto.UINT8, None)],
        [onnx.numpy_helper.from_array(np.array(scales, np.float32), "s")])
    expected = run_bc(onnx.helper.make_model(reference, opset_imports=[onnx.helper.make_opsetid("", 17)]),
                      {"c": codes_in})["r"]
    np.testing.assert_array_equal(codes_out, expected)


# ---- names, inputs, outputs, maps ----------------------------------------------------------------------
def test_names_inputs_and_outputs():
    opt, plan, bc = lowered(conv_relu())
    conv_name = next(n.name for n in opt.graph.node if n.op_type == "Conv")
    relu_name = next(n.name for n in opt.graph.node if n.op_type == "Relu")
    by_name = {n.name: n for n in bc.graph.node}
    assert by_name[conv_name].op_type == "QLinearConv" and by_name[relu_name].op_type == "Clip"
    pre = by_name["HZ_PREPROCESS_FOR_x"]
    assert pre.op_type == "QuantizeLinear" and pre.input[0] == "x" and pre.output[0] == "x_quantized"
    assert by_name[conv_name].input[0] == "x_quantized"
    assert [i.name for i in bc.graph.input] == ["x"] and [o.name for o in bc.graph.output] == ["y"]
    assert bc.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    node_map = json.loads(next(p.value for p in bc.metadata_props if p.key == NODE_MAP_KEY))
    assert conv_name in node_map[conv_name] and relu_name in node_map[relu_name]
    tmap = read_tensor_map(bc)
    assert tmap["x"] == {"tensor": "x_quantized", "scale": pytest.approx(plan.acts["x"].scale, rel=1e-6),
                         "zero_point": 128, "dtype": "uint8"}
    assert tmap["y"]["tensor"] == "y_quantized" and tmap["y"]["dtype"] == "uint8"
    onnx.checker.check_model(bc, full_check=False)


def test_tensor_map_dequantizes_intermediates():
    """integer_intermediates = (codes − zp)·scale of the mapped tensors, each within one step of
    the calibrated model's fake-quantized tensor of the same name."""
    opt, plan, bc = lowered(silu_block())
    feeds = random_inputs(opt, 2)
    inter = integer_intermediates(bc, feeds)
    tmap = read_tensor_map(bc)
    raw = dict(zip([e["tensor"] for e in tmap.values()], integer_raw(bc, feeds, [e["tensor"] for e in tmap.values()])))
    calibrated = build_calibrated_model(opt, plan)
    cmap = calibration_map(calibrated)
    ref = run_model(calibrated, feeds, [cmap[t] for t in tmap if t in cmap])
    checked = 0
    for t, entry in tmap.items():
        expected = (raw[entry["tensor"]].astype(np.float32) - entry["zero_point"]) * np.float32(entry["scale"])
        np.testing.assert_array_equal(inter[t], expected)
        if t in cmap and entry["dtype"] == "uint8":
            assert within_one_step(inter[t], ref[cmap[t]], entry["scale"]) >= 0.99, t
            checked += 1
    assert checked >= 3  # input, first conv output, the SiLU table output


def integer_raw(bc: onnx.ModelProto, feeds: dict, names: list[str]) -> list[np.ndarray]:
    model = onnx.ModelProto()
    model.CopyFrom(bc)
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def test_quantized_cosine_fills_the_similarity_table():
    opt, plan, bc = lowered(residual_block())
    feeds = random_inputs(opt, 4)
    table = compare(opt, build_calibrated_model(opt, plan), feeds, plan)
    filled = quantized_similarity(table, opt, bc, feeds)
    assert [r.node for r in filled.nodes] == [r.node for r in table.nodes]
    for row in filled.nodes:
        assert row.quantized_cosine is not None and 0.99 < row.quantized_cosine <= 1.0, row
        assert row.quantized_cosine == pytest.approx(row.calibrated_cosine, abs=5e-3)
    assert all(o.quantized_cosine is not None and o.quantized_cosine > 0.99 for o in filled.outputs)


# ---- determinism -----------------------------------------------------------------------------------------
def integer_net():
    """Big enough (8×48×48) that onnxruntime splits the work across threads."""
    b = Builder("integer_net", seed=14)
    x = b.input("x", [1, 3, 48, 48])
    y = b.op("Relu", [b.conv(x, 3, 16)])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("Relu", [b.conv(y, 16, 16)])
    y = b.op("Sigmoid", [b.op("Concat", [y, z], axis=1)])
    b.output(b.op("GlobalAveragePool", [b.conv(y, 32, 8)], out="y"))
    return b.build()


@pytest.mark.parametrize("build", [integer_net, residual_block])
def test_integer_model_is_bit_identical_across_runs_and_threads(build):
    opt, plan, bc = lowered(build())
    assert json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY)) == {}
    feeds = random_inputs(opt, 6)
    first = integer_raw(bc, feeds, ["y_quantized"])[0]
    again = integer_raw(bc, feeds, ["y_quantized"])[0]
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    one, two = integer_intermediates(bc, feeds, threads=1), integer_intermediates(bc, feeds, threads=2)
    assert one.keys() == two.keys()
    for t in one:
        np.testing.assert_array_equal(one[t], two[t], err_msg=t)
    np.testing.assert_array_equal(run_bc(bc, feeds, threads=1)["y"], run_bc(bc, feeds, threads=2)["y"])


# ---- si32, int16, CPU islands, plan errors -----------------------------------------------------------------
def test_si32_output_is_the_dequantized_accumulator():
    """A model output made by a Conv stays the int32 accumulator at s_in·s_w per channel."""
    opt, plan, bc = lowered(single_conv(), QuantOptions())
    assert plan.nodes["Conv_0"].output_bits == 32
    tmap = read_tensor_map(bc)
    assert tmap["y"]["dtype"] == "int32" and tmap["y"]["axis"] == 1 and len(tmap["y"]["scale"]) == 6
    assert ops(bc)["ConvInteger"] == 1
    feeds = random_inputs(opt, 1)
    got = run_bc(bc, feeds)["y"]
    ref = run_model(build_calibrated_model(opt, plan), feeds)["y"]
    # no output quantization: only the input and weight rounding differ from float arithmetic
    np.testing.assert_allclose(got, ref, atol=1e-4 * float(np.abs(ref).max()))


def single_conv():
    b = Builder("single_conv", seed=13)
    b.output(b.conv(b.input("x", [1, 3, 8, 8]), 3, 6, out="y"))
    return b.build()


def test_int16_output_is_emulated_at_int16_precision():
    options = QuantOptions.build(node_info={"Conv_0": {"OutputType": "int16"}},
                                 optimization=["set_model_output_int16"])
    opt, plan, bc = lowered(single_conv(), options)
    assert plan.acts["y"].bits == 16
    tmap = read_tensor_map(bc)
    assert tmap["y"]["dtype"] == "int16" and tmap["y"]["zero_point"] == 0
    assert "Conv_0" in json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY))
    feeds = random_inputs(opt, 2)
    got, ref = run_bc(bc, feeds)["y"], run_model(build_calibrated_model(opt, plan), feeds)["y"]
    assert within_one_step(got, ref, plan.acts["y"].scale) >= 0.99


def test_cpu_island_reads_dequantized_and_requantizes():
    """DequantizeLinear → float Conv → (Relu, its own BPU op) QuantizeLinear → the next QLinearConv."""
    options = QuantOptions.build(run_on_cpu=["Conv_2"], optimization=["set_model_output_int8"])
    opt, plan, bc = lowered(cpu_island(), options)
    assert plan.nodes["Conv_2"].on == "CPU"
    producers = {o: n for n in bc.graph.node for o in n.output}
    island = next(n for n in bc.graph.node if n.name == "Conv_2")
    assert island.op_type == "Conv" and producers[island.input[0]].op_type == "DequantizeLinear"
    assert island.output[0] == "Conv_2_y"  # the float tensor keeps its name
    quantize = next(n for n in bc.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "Conv_2_y")
    assert quantize.output[0] == "Conv_2_y_quantized"
    tmap = read_tensor_map(bc)
    assert tmap["Conv_2_y"]["dtype"] == "uint8"  # a BPU op reads it: it has an integer form
    assert set(json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY))) == set()


def test_missing_quantization_is_a_named_planner_bug():
    opt = optimized(conv_relu())
    plan = plan_for(opt, INT8_OUT)
    del plan.acts["y"]
    with pytest.raises(StageError, match="'y'.*no quantization in the plan"):
        lower_to_integer(opt, plan)


def test_unplanned_node_is_a_named_planner_bug():
    opt = optimized(conv_relu())
    plan = plan_for(opt, INT8_OUT)
    del plan.nodes["Conv_0"]
    with pytest.raises(StageError, match="node 'Conv_0' \\(Conv\\) is not in the plan"):
        lower_to_integer(opt, plan)


def test_tensor_map_metadata_is_json_for_every_float_tensor():
    opt, plan, bc = lowered(conv_transpose_up(group=2))
    tmap = json.loads(next(p.value for p in bc.metadata_props if p.key == TENSOR_MAP_KEY))
    assert set(plan.acts) <= set(tmap)
    for entry in tmap.values():
        assert entry["dtype"] in ("uint8", "int16", "int32", "float32")
        assert entry["tensor"] in {o for n in bc.graph.node for o in n.output} | {i.name for i in bc.graph.input}


def test_per_channel_output_is_dequantized_per_channel():
    """A per-channel activation encoding (the planner keeps them on model outputs only) is held as
    uint8 with one scale per channel; the tensor map and integer_intermediates use them."""
    opt = optimized(single_conv())
    plan = plan_for(opt, QuantOptions())
    out_range = np.abs(run_model(opt, random_inputs(opt, 0))["y"]).max(axis=(0, 2, 3)) * 1.2
    plan.acts["y"] = ActQuant("y", out_range, 8, axis=1)
    plan.nodes["Conv_0"] = dataclasses.replace(plan.nodes["Conv_0"], output_bits=8)
    bc = lower_to_integer(opt, plan)
    entry = read_tensor_map(bc)["y"]
    assert entry["axis"] == 1 and entry["dtype"] == "uint8"
    np.testing.assert_allclose(entry["scale"], out_range / 127, rtol=1e-6)
    feeds = random_inputs(opt, 3)
    got = integer_intermediates(bc, feeds)["y"]
    ref = run_model(build_calibrated_model(opt, dataclasses.replace(plan, calibrated_acts={})), feeds)["y"]
    steps = (out_range / 127).reshape(1, -1, 1, 1)
    assert np.mean(np.abs(got - ref) <= steps * 1.0001) >= 0.99
    np.testing.assert_array_equal(got, run_bc(bc, feeds)["y"])


def test_matmul_of_two_activations_is_qlinear_matmul():
    """The planner keeps attention-style MatMuls on the CPU; a plan that puts one on the BPU gets
    QLinearMatMul on two uint8 operands."""
    b = Builder("attention", seed=16)
    q, k = b.input("q", [2, 6, 8]), b.input("k", [2, 8, 5])
    b.output(b.op("MatMul", [q, k], out="y"))
    model = b.build()
    plan = QuantPlan(nodes={"MatMul_0": NodePlan("MatMul_0", "MatMul", "BPU", act_inputs=("q", "k"))},
                     acts={"q": ActQuant("q", 3.0), "k": ActQuant("k", 3.0), "y": ActQuant("y", 12.0)})
    bc = lower_to_integer(model, plan)
    assert [n.op_type for n in bc.graph.node if n.name == "MatMul_0"] == ["QLinearMatMul"]
    feeds = random_inputs(model, 1)
    got = run_bc(bc, feeds)["y"]
    ref = run_model(build_calibrated_model(model, plan), feeds)["y"]
    assert within_one_step(got, ref, 12.0 / 127) >= 0.99


def test_inputs_are_fed_in_the_type_the_program_declares():
    """A runtime-format input (int8 yuv444_128, uint8 pixels) is fed as such, not as float."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [1, 3, 2, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 2, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Cast", ["x"], ["f"], name="Cast_0", to=1),
                                    onnx.helper.make_node("Relu", ["f"], ["y"], name="Relu_1")], "int8_in", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    plan = QuantPlan(nodes={"Cast_0": NodePlan("Cast_0", "Cast", "CPU"),
                            "Relu_1": NodePlan("Relu_1", "Relu", "BPU", act_inputs=("f",))},
                     acts={"f": ActQuant("f", 127.0), "y": ActQuant("y", 127.0)})
    bc = lower_to_integer(model, plan)
    sample = np.arange(-6, 6).reshape(1, 3, 2, 2)  # int64 here: cast to the declared int8
    inter = integer_intermediates(bc, {"x": sample})
    np.testing.assert_array_equal(inter["y"], np.maximum(sample, 0).astype(np.float32))
    np.testing.assert_array_equal(inter["f"], sample.astype(np.float32))


@pytest.mark.parametrize("options", [INT8_OUT, QuantOptions()], ids=["int8_output", "default_output"])
def test_gemm_with_a_one_element_bias_is_emulated_like_the_ptq_model(options):
    """Gemm(x, W, C=[0.5]) broadcasts C over N outputs: the plan keeps C float, so the node runs
    emulated (the ptq model adds C in float) instead of crashing on int32 codes for one value."""
    b = Builder("gemm_scalar_bias", seed=21)
    b.output(b.op("Gemm", [b.input("x", [1, 8]), b.weight((8, 4)), b.const(np.array([0.5], np.float32), "C")],
                  out="y"))
    opt, plan, bc = lowered(b.build(), options)
    assert "C" not in plan.biases and "QGemm" not in ops(bc) and "MatMulInteger" not in ops(bc)
    calibrated = build_calibrated_model(opt, plan)
    for seed in (11, 12):
        feeds = random_inputs(opt, seed)
        got, ref = run_bc(bc, feeds)["y"], run_model(calibrated, feeds)["y"]
        if "y" in plan.acts:  # an int8 output: the same codes
            assert np.array_equal(got, ref)
        else:  # a float (si32) output: within one accumulator step s_x · s_w, as a planned bias is
            step = float(plan.acts[opt.graph.input[0].name].scale * plan.weights[opt.graph.node[0].input[1]].scale.max())
            assert within_one_step(got, ref, step) == 1.0
