"""Requantization and lookup tables of the integer program, on constructed cases.

Plans are written by hand here (powers-of-two scales, so every grid point and every half-way tie
is exact in float32): the questions are arithmetic — half to even, saturation, table = function
at every code — not planning.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.quantize import luts
from engine.quantize.integer import lower_to_integer, read_tensor_map, session_options
from engine.quantize.lower.encoding import Encoding
from engine.quantize.types import ActQuant, NodePlan, QuantPlan, WeightQuant
from tests.support.models import Builder


def run_codes(bc: onnx.ModelProto, feeds: dict, tensor: str) -> np.ndarray:
    """The integer codes of `tensor` (its `<t>_quantized` form) on `feeds`."""
    name = read_tensor_map(bc)[tensor]["tensor"]
    model = onnx.ModelProto()
    model.CopyFrom(bc)
    model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return session.run([name], feeds)[0]


def model_of(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "constructed", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def fvi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def table_of(bc: onnx.ModelProto, tensor: str) -> np.ndarray:
    """The table the `.bc` looks `tensor` up in."""
    inits = {t.name: t for t in bc.graph.initializer}
    out = read_tensor_map(bc)[tensor]["tensor"]
    producers = {o: n for n in bc.graph.node for o in n.output}
    reshape = producers[out]
    gather = producers[reshape.input[0]]
    assert gather.op_type == "GatherElements"
    return numpy_helper.to_array(inits[gather.input[0]])


# ---- requantization: half to even, saturation ---------------------------------------------------------
def test_qlinear_conv_requantizes_half_to_even_and_saturates():
    """1×1 conv, x at scale 1, weights 1 and 4 at scale 1, y at scale 2:
    channel 0 = rint(x / 2) (…, 1.5 → 2, 2.5 → 2, …), channel 1 = 2x saturated to ±127 / -128."""
    w = np.array([1.0, 4.0], np.float32).reshape(2, 1, 1, 1)
    model = model_of([helper.make_node("Conv", ["x", "w"], ["y"], name="Conv_0")], [fvi("x", [1, 1, 1, 255])],
                     [fvi("y", [1, 2, 1, 255])], [numpy_helper.from_array(w, "w")])
    plan = QuantPlan(
        nodes={"Conv_0": NodePlan("Conv_0", "Conv", "BPU", act_inputs=("x",), weight="w")},
        acts={"x": ActQuant("x", 127.0), "y": ActQuant("y", 254.0)},
        weights={"w": WeightQuant("w", 0, np.array([1.0, 1.0], np.float32))})
    bc = lower_to_integer(model, plan)
    assert [n.op_type for n in bc.graph.node if n.name == "Conv_0"] == ["QLinearConv"]
    x = np.arange(-127, 128, dtype=np.float32).reshape(1, 1, 1, 255)
    codes = run_codes(bc, {"x": x}, "y").astype(np.int32) - 128
    values = x.reshape(-1)
    np.testing.assert_array_equal(codes[0, 0, 0], np.rint(values / 2))  # numpy's rint is half to even
    assert list(codes[0, 0, 0, [126, 128, 130, 132]]) == [0, 0, 2, 2]  # x = -1, 1, 3, 5: -0.5→0, 0.5→0, 1.5→2, 2.5→2
    np.testing.assert_array_equal(codes[0, 1, 0], np.clip(2 * values, -128, 127))
    assert codes[0, 1, 0].max() == 127 and codes[0, 1, 0].min() == -128


def test_requantization_table_rounds_half_to_even_and_saturates():
    table = luts.requantize_table(Encoding("uint8", 1.0, 128), Encoding("uint8", 2.0, 128))
    values = np.arange(-128, 128)
    np.testing.assert_array_equal(table.astype(int) - 128, np.rint(values / 2))
    assert table[128 + 1] == 128 and table[128 + 3] == 130 and table[128 - 3] == 126  # 0.5→0, 1.5→2, -1.5→-2
    narrow = luts.requantize_table(Encoding("uint8", 1.0, 128), Encoding("uint8", 0.25, 128))
    assert narrow[0] == 0 and narrow[255] == 255 and narrow[128 + 31] == 128 + 124  # ×4, saturated


def relu_to_new_scale(hi: float | None = None) -> QuantPlan:
    """Relu (or Clip(0, hi)) from scale 1 to scale 2 on 255 values: every code, ties at .5."""
    if hi is None:
        node, inits = helper.make_node("Relu", ["x"], ["y"], name="Relu_0"), []
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="Relu_0")
        inits = [numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    model = model_of([node], [fvi("x", [255])], [fvi("y", [255])], inits)
    plan = QuantPlan(nodes={"Relu_0": NodePlan("Relu_0", node.op_type, "BPU", act_inputs=("x",))},
                     acts={"x": ActQuant("x", 127.0), "y": ActQuant("y", 254.0)})
    return lower_to_integer(model, plan)


@pytest.mark.parametrize("hi", [None, 40.0])
def test_clamp_with_a_new_scale_rounds_half_to_even(hi):
    """Relu from scale 1 to scale 2 is onnxruntime's QLinearLeakyRelu (alpha 0: one lookup in its own
    table, which is ours at every code); Clip(0, 40) is not a LeakyRelu: Clip, then requantization."""
    bc = relu_to_new_scale(hi)
    middle = [n.op_type for n in bc.graph.node][1:-1]  # between the input's QuantizeLinear and the output's DQ
    assert middle == (["QLinearLeakyRelu"] if hi is None else ["Clip", "QLinearLeakyRelu"])
    x = np.arange(-127, 128, dtype=np.float32)
    codes = run_codes(bc, {"x": x}, "y").astype(int) - 128
    np.testing.assert_array_equal(codes, np.rint(np.clip(x, 0, hi) / 2))


def test_lookup_kernel_is_used_only_when_its_table_is_exact(monkeypatch):
    """onnxruntime's table one code off (as if it rounded a tie the other way): the lowering keeps
    Clip → DequantizeLinear → QuantizeLinear, with the right codes."""
    real = luts.onnxruntime_table

    def one_code_off(*args, **kwargs):
        table = real(*args, **kwargs).copy()
        table[129] += 1
        return table

    monkeypatch.setattr(luts, "onnxruntime_table", one_code_off)
    bc = relu_to_new_scale()
    assert "QLinearLeakyRelu" not in {n.op_type for n in bc.graph.node}
    x = np.arange(-127, 128, dtype=np.float32)
    np.testing.assert_array_equal(run_codes(bc, {"x": x}, "y").astype(int) - 128, np.rint(np.maximum(x, 0) / 2))


def test_residual_add_requantizes_half_to_even():
    """Conv+Add: y = Q(conv + r) with ties at .5 (x·1 + r at scale 2); x = ±100 takes the wide path."""
    b = Builder("tie", seed=0)
    x = b.input("x", [1, 1, 1, 8])
    r = b.input("r", [1, 1, 1, 8])
    conv = b.op("Conv", [x, b.const(np.ones((1, 1, 1, 1)), "w")])
    b.output(b.op("Add", [conv, r], out="y"))
    model = b.build()
    group_meta = '[{"name": "Conv_0+Add_1", "type": "Conv+Add", "nodes": ["Conv_0", "Add_1"], "kind": "conv_add"}]'
    helper.set_model_props(model, {"hb_fusion_groups": group_meta})
    from engine.quantize.types import FusionGroup

    plan = QuantPlan(
        nodes={"Conv_0": NodePlan("Conv_0", "Conv", "BPU", group="Conv_0+Add_1", act_inputs=("x",), weight="w"),
               "Add_1": NodePlan("Add_1", "Add", "BPU", group="Conv_0+Add_1", act_inputs=("r",))},
        acts={"x": ActQuant("x", 127.0), "r": ActQuant("r", 127.0), "y": ActQuant("y", 254.0)},
        weights={"w": WeightQuant("w", 0, np.array([1.0], np.float32))},
        groups=[FusionGroup("Conv_0+Add_1", "Conv+Add", ("Conv_0", "Add_1"), "conv_add")])
    bc = lower_to_integer(model, plan)
    assert {"QLinearConv", "QLinearAdd", "Sub", "Mul"} <= {n.op_type for n in bc.graph.node}
    xs = np.array([0, 1, 1, 2, 2, 100, -100, -3], np.float32).reshape(1, 1, 1, 8)
    rs = np.array([1, 0, 2, 3, 0, 100, -100, 0], np.float32).reshape(1, 1, 1, 8)
    codes = run_codes(bc, {"x": xs, "r": rs}, "y").astype(int) - 128
    np.testing.assert_array_equal(codes.reshape(-1), [0, 0, 2, 2, 1, 100, -100, -2])  # 0.5→0, 1.5→2, 2.5→2, -1.5→-2


def test_encoding_quantize_is_onnxruntime_quantize_linear():
    """The numpy side of every table: bit for bit QuantizeLinear (uint8/128 and int16), ties included."""
    rng = np.random.default_rng(0)
    for enc in (Encoding("uint8", 0.0123457, 128), Encoding("int16", 0.000731, 0)):
        x = (rng.standard_normal(100_000) * enc.scale * enc.qmax / 2).astype(np.float32)
        x[:200] = ((np.arange(200) - 100 + 0.5) * np.float32(enc.scale)).astype(np.float32)  # ties
        x[200:202] = [1e9, -1e9]  # saturation
        elem = TensorProto.UINT8 if enc.dtype == "uint8" else TensorProto.INT16
        model = model_of([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], [fvi("x", [x.size])],
                         [helper.make_tensor_value_info("q", elem, [x.size])],
                         [numpy_helper.from_array(np.array(enc.scale, np.float32), "s"),
                          numpy_helper.from_array(np.array(enc.zero_point, enc.np_dtype), "z")], opset=21)
        model.ir_version = 10
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(enc.quantize(x), got)


# ---- tables = the float function at every code -----------------------------------------------------------
def _erf(x):
    return np.vectorize(math.erf)(x)


FUNCTIONS = {  # op → (float64 reference, attributes, runs as a GatherElements table)
    "Sigmoid": (lambda x: 1 / (1 + np.exp(-x)), {}, False),
    "Tanh": (np.tanh, {}, False),
    "HardSigmoid": (lambda x: np.clip(0.2 * x + 0.5, 0, 1), {"alpha": 0.2, "beta": 0.5}, False),
    "LeakyRelu": (lambda x: np.where(x >= 0, x, 0.1 * x), {"alpha": 0.1}, False),
    "Exp": (np.exp, {}, True),
    "Gelu": (lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))), {}, True),
    "Softplus": (lambda x: np.log1p(np.exp(x)), {}, True),
}


def activation_plan(op: str, attrs: dict, in_threshold: float, out_threshold: float, bits=(8, 8), n: int = 256):
    model = model_of([helper.make_node(op, ["x"], ["y"], name=f"{op}_0", **attrs)], [fvi("x", [n])], [fvi("y", [n])],
                     opset=20)
    plan = QuantPlan(nodes={f"{op}_0": NodePlan(f"{op}_0", op, "BPU", act_inputs=("x",), output_bits=bits[1])},
                     acts={"x": ActQuant("x", in_threshold, bits[0]), "y": ActQuant("y", out_threshold, bits[1])})
    return model, plan


def assert_table_is_function(table: np.ndarray, fn, enc_in: Encoding, enc_out: Encoding) -> None:
    """Exact at every code, except where the float64 value lies so close to a rounding tie that
    onnxruntime's float32 kernel (relative error ~1e-6) may round the other way (there: one code)."""
    x = enc_in.dequantize(luts.input_codes(enc_in)).astype(np.float64)
    fx = fn(x)
    exact = fx / enc_out.scale
    expected = np.clip(np.rint(exact) + enc_out.zero_point, enc_out.qmin, enc_out.qmax)
    band = 1e-4 + 2e-6 * np.maximum(np.abs(fx), 1.0) / enc_out.scale
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < band
    diff = np.abs(table.astype(np.int64) - expected)
    assert table.size == x.size
    assert np.all(diff[~near_tie] == 0), f"{np.count_nonzero(diff[~near_tie])} codes differ"
    assert np.all(diff <= 1)


def every_code_through(bc: onnx.ModelProto, enc_in: Encoding) -> np.ndarray:
    """The `.bc`'s output code for every input code, fed in a scrambled order (so a kernel's
    vector body and tail both see every code)."""
    codes = luts.input_codes(enc_in)
    order = np.random.default_rng(0).permutation(codes.size)
    out = run_codes(bc, {"x": enc_in.dequantize(codes[order])}, "y")
    result = np.empty_like(out)
    result[order] = out
    return result


@pytest.mark.parametrize("op", FUNCTIONS)
def test_table_op_gives_the_float_function_at_every_code(op):
    """Whether it runs as a table or as float kernels, the `.bc` maps every input code to
    Q_y(f(DQ_x(code))); a table op's stored table is exactly that map."""
    fn, attrs, as_table = FUNCTIONS[op]
    in_t = 6.0
    out_t = float(np.max(np.abs(fn(np.linspace(-in_t, in_t, 1001)))))
    model, plan = activation_plan(op, attrs, in_t, out_t)
    bc = lower_to_integer(model, plan)
    tmap = read_tensor_map(bc)
    enc_in = Encoding("uint8", tmap["x"]["scale"], 128)
    enc_out = Encoding("uint8", tmap["y"]["scale"], 128)
    through = every_code_through(bc, enc_in)
    assert through.dtype == np.uint8
    assert_table_is_function(through, fn, enc_in, enc_out)
    kinds = {n.op_type for n in bc.graph.node}
    assert ("GatherElements" in kinds) == as_table and (op in kinds) != as_table
    if as_table:
        np.testing.assert_array_equal(table_of(bc, "y"), through)


def hardswish(x):
    return x * np.clip(x / 6 + 0.5, 0, 1)


@pytest.mark.parametrize("in_t,out_t", [(6.0, 6.0), (8.06, 4.2), (18.2, 9.3), (3.5, 3.5)])
def test_hardswish_is_a_gate_and_a_product_within_one_step_of_the_table(in_t, out_t):
    """uint8 HardSwish runs as QLinearLeakyRelu (the HardSigmoid gate's codes) → QLinearMul: every
    input code lands within one step of the table Q_y(HardSwish(DQ_x(code))), and on it for all but
    a few codes (the gate's 1/255 rounding, only where |x| < 3)."""
    model, plan = activation_plan("HardSwish", {}, in_t, out_t)
    bc = lower_to_integer(model, plan)
    assert sorted(n.op_type for n in bc.graph.node if n.domain == "com.microsoft") == ["QLinearLeakyRelu",
                                                                                      "QLinearMul"]
    assert not {"HardSwish", "HardSigmoid", "GatherElements"} & {n.op_type for n in bc.graph.node}
    tmap = read_tensor_map(bc)
    enc_in, enc_out = (Encoding("uint8", tmap[t]["scale"], 128) for t in ("x", "y"))
    through = every_code_through(bc, enc_in).astype(np.int64)
    x = enc_in.dequantize(luts.input_codes(enc_in)).astype(np.float64)
    table = np.clip(np.rint(hardswish(x) / enc_out.scale) + 128, 0, 255)
    off = through != table
    assert np.all(np.abs(through - table) <= 1)
    assert np.count_nonzero(off) <= 16, f"{np.count_nonzero(off)} of 256 codes off the table"
    assert np.all(np.abs(x[off]) < 3)  # the gate is exact where it saturates


def test_hardswish_with_thresholds_loaded_from_a_qdq_model_keeps_the_table():
    """calibration_type load: the QDQ model's own HardSwish (DQ → HardSigmoid → Mul → Q) at every code."""
    import dataclasses

    model, plan = activation_plan("HardSwish", {}, 6.0, 6.0)
    plan = dataclasses.replace(plan, acts={t: dataclasses.replace(a, method="load") for t, a in plan.acts.items()})
    bc = lower_to_integer(model, plan)
    kinds = {n.op_type for n in bc.graph.node}
    assert "HardSwish" in kinds and not {"QLinearLeakyRelu", "QLinearMul"} & kinds
    enc = Encoding("uint8", read_tensor_map(bc)["x"]["scale"], 128)
    assert_table_is_function(every_code_through(bc, enc), hardswish, enc,
                             Encoding("uint8", read_tensor_map(bc)["y"]["scale"], 128))


@pytest.mark.parametrize("scale", [6.0 / 127, 8.06 / 127, 18.2 / 127, 0.0598, 0.1435])
def test_hardswish_gate_is_unbiased(scale):
    """The gate's zero points put its codes at x·42.5 + 127.5 (+ a small ε), not + 128: a gate rounded
    half a code high on average moved a held-out digit's top-1 in the bundled example."""
    from engine.quantize.lower.lut import GATE_SCALE, _gate_offsets

    enc = Encoding("uint8", float(np.float32(scale)), 128)
    input_zero_point, gate_zero_point, miss = _gate_offsets(enc)
    offset = gate_zero_point - np.float32(scale) / np.float32(GATE_SCALE) * (input_zero_point - 128)
    assert abs(offset - 127.5) < 0.05 and miss == pytest.approx(abs(offset - 127.5), abs=1e-5)  # 128: 0.5 off
    codes = luts.onnxruntime_table("QLinearLeakyRelu", Encoding("uint8", enc.scale, input_zero_point),
                                   Encoding("uint8", GATE_SCALE, gate_zero_point), alpha=1.0).astype(np.float64)
    x = enc.dequantize(luts.input_codes(enc)).astype(np.float64)
    inside = np.abs(x) < 3
    error = codes / 255 - np.clip(x / 6 + 0.5, 0, 1)
    assert np.all(np.abs(error) <= 0.5 / 255 + 0.05 / 255)
    assert np.all(codes[x <= -3] == 0) and np.all(codes[x >= 3] == 255)
    assert abs(error[inside].mean()) < 0.15 / 255


@pytest.mark.parametrize("in_t", [1.9, 3.0, 6.0, 12.5])
def test_hardsigmoid_on_an_offset_range_is_one_lookup_kernel_equal_to_the_table(in_t):
    """A HardSigmoid whose output range [0, 1] has its own zero point (code 0 = value 0, as the planner
    gives a gate: squeeze-excitation) runs as one QLinearLeakyRelu whose table is ours at every code."""
    from engine.quantize.planner import OffsetAct

    model, plan = activation_plan("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, in_t, 1.0)
    plan.acts["y"] = OffsetAct("y", 1.0, zero_point=-128, step=float(np.float32(1 / 255)))
    bc = lower_to_integer(model, plan)
    assert [n.op_type for n in bc.graph.node] == ["QuantizeLinear", "QLinearLeakyRelu", "DequantizeLinear"]
    tmap = read_tensor_map(bc)
    enc_in, enc_out = Encoding("uint8", tmap["x"]["scale"], 128), Encoding("uint8", tmap["y"]["scale"], 0)
    x = enc_in.dequantize(luts.input_codes(enc_in)).astype(np.float64)
    np.testing.assert_array_equal(every_code_through(bc, enc_in),
                                  np.clip(np.rint(np.clip(0.2 * x + 0.5, 0, 1) / enc_out.scale), 0, 255))


def test_hardsigmoid_that_clips_inside_the_codes_stays_float():
    """With the usual zero point 128 the gate's 0 is code 128: onnxruntime's table saturates at code 0,
    not there, so no lookup kernel equals the table and the float kernels stay."""
    model, plan = activation_plan("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, 6.0, 1.0)
    bc = lower_to_integer(model, plan)
    assert "HardSigmoid" in {n.op_type for n in bc.graph.node}
    assert "QLinearLeakyRelu" not in {n.op_type for n in bc.graph.node}


def test_int16_table_has_every_int16_code():
    fn, attrs, _ = FUNCTIONS["Gelu"]
    model, plan = activation_plan("Gelu", attrs, 8.0, 8.0, bits=(16, 16), n=65536)
    bc = lower_to_integer(model, plan)
    table = table_of(bc, "y")
    enc_in, enc_out = Encoding("int16", 8.0 / 32767), Encoding("int16", 8.0 / 32767)
    assert table.dtype == np.int16 and table.shape == (65536,)
    assert_table_is_function(table, fn, enc_in, enc_out)
    np.testing.assert_array_equal(every_code_through(bc, enc_in), table)


def test_int16_float_kernel_op_gives_the_function_at_every_code():
    fn, attrs, _ = FUNCTIONS["Sigmoid"]
    model, plan = activation_plan("Sigmoid", attrs, 8.0, 1.0, bits=(16, 16), n=65536)
    bc = lower_to_integer(model, plan)
    enc_in, enc_out = Encoding("int16", 8.0 / 32767), Encoding("int16", 1.0 / 32767)
    assert_table_is_function(every_code_through(bc, enc_in), fn, enc_in, enc_out)


def test_activation_group_table_is_the_groups_function():
    """Mish left as Mul(x, Tanh(Softplus(x))) (a fusion group of kind activation) → one table."""
    b = Builder("mish", seed=0)
    x = b.input("x", [256])
    b.output(b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])], out="y"))
    model = b.build()
    from engine.quantize.types import FusionGroup

    group = FusionGroup("Softplus_0+Tanh_1+Mul_2", "Mish", ("Softplus_0", "Tanh_1", "Mul_2"), "activation")
    plan = QuantPlan(
        nodes={n: NodePlan(n, n.split("_")[0], "BPU", group=group.name, act_inputs=("x",)) for n in group.nodes},
        acts={"x": ActQuant("x", 6.0), "y": ActQuant("y", 6.0)}, groups=[group])
    bc = lower_to_integer(model, plan)
    assert [n.op_type for n in bc.graph.node if n.name == group.name] == ["GatherElements"]
    assert not {"Softplus", "Tanh", "Mul"} & {n.op_type for n in bc.graph.node}
    enc = Encoding("uint8", 6.0 / 127, 128)
    assert_table_is_function(table_of(bc, "y"), lambda v: v * np.tanh(np.log1p(np.exp(v))), enc, enc)
    np.testing.assert_array_equal(every_code_through(bc, enc), table_of(bc, "y"))


def test_a_table_between_convs_leaves_onnxruntime_no_layout_change():
    """Conv → HardSwish·w + b (a three-node activation group: a table) → Conv. onnxruntime runs the
    integer convs in NHWC; the table looks codes up in NHWC order, so the only Transposes in the
    graph onnxruntime executes are at the model's NCHW input and output."""
    b = Builder("conv_table_conv", seed=0)
    x = b.conv(b.input("x", [1, 8, 12, 12]), 8, 8)
    y = b.op("Add", [b.op("Mul", [b.op("HardSwish", [x]), b.const(0.83, "w")]), b.const(-0.21, "b")])
    b.output(b.conv(y, 8, 8, out="y"))
    model = b.build()
    from engine.quantize.types import FusionGroup

    names = [n.name for n in model.graph.node]
    act = names[1:4]
    group = FusionGroup("+".join(act), "HardSwish", tuple(act), "activation")
    weights = {n.input[1]: WeightQuant(n.input[1], 0, np.full(8, 0.02, np.float32)) for n in model.graph.node
               if n.op_type == "Conv"}
    plan = QuantPlan(
        nodes={n.name: NodePlan(n.name, n.op_type, "BPU", group=group.name if n.name in act else None,
                                act_inputs=(n.input[0],)) for n in model.graph.node},
        acts={t: ActQuant(t, 4.0) for t in ("x", x, y, "y")}, weights=weights, groups=[group])
    bc = lower_to_integer(model, plan)
    assert "GatherElements" in {n.op_type for n in bc.graph.node}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()
        options.optimized_model_filepath = f"{tmp}/run.onnx"
        ort.InferenceSession(bc.SerializeToString(), options, providers=["CPUExecutionProvider"])
        executed = onnx.load(f"{tmp}/run.onnx")
    convs = [n for n in executed.graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == 2 and all(n.domain == "com.microsoft" for n in convs)  # NHWC kernels
    assert sum(n.op_type == "Transpose" for n in executed.graph.node) == 2


def test_hardswish_with_a_tiny_input_scale_keeps_the_exact_table():
    """Review RV s7: where no shift of the input zero point brings the gate within GATE_EPSILON of its
    half-code offset (an input scale so small that 42.5·s_x·255 < 1), the gate would be biased by up to ½
    code: the exact table is kept."""
    from engine.quantize.lower.lut import GATE_EPSILON, _gate_offsets

    assert _gate_offsets(Encoding("uint8", float(np.float32(1e-5)), 128))[2] > GATE_EPSILON
    assert _gate_offsets(Encoding("uint8", float(np.float32(6.0 / 127)), 128))[2] <= GATE_EPSILON
