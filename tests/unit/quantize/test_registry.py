"""Which op runs where and how it is quantized: the registry's rules and the user's overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config_text
from engine.quantize.planner import NodeInfo, QuantOptions, plan_tensors
from engine.quantize.registry import NodeView, decide
from tests.support.models import Builder, onnx_text
from tests.unit.quantize.quant_support import max_thresholds, optimized, plan_for

F = (True,)


def view(op: str, n_inputs: int = 1, const=(), attrs=None, shapes=(), floating=None, domain="") -> NodeView:
    inputs = tuple(f"i{k}" for k in range(n_inputs))
    return NodeView(f"{op}_0", op, inputs, ("y",), attrs or {}, tuple(k in const for k in range(n_inputs)),
                    floating or (True,) * n_inputs, shapes or (None,) * n_inputs, domain)


@pytest.mark.parametrize("op,kw,expect", [
    ("Conv", dict(n_inputs=3, const=(1, 2)), dict(on="BPU", acts=(0,), axis=0, bias=2, accumulates=True)),
    ("ConvTranspose", dict(n_inputs=2, const=(1,), attrs={"group": 2}), dict(on="BPU", axis=1, groups=2, bias=None)),
    ("Gemm", dict(n_inputs=2, const=(1,), attrs={"transB": 1}, shapes=(None, (8, 4))), dict(axis=0)),
    ("Gemm", dict(n_inputs=2, const=(1,), shapes=(None, (4, 8))), dict(axis=1)),
    ("MatMul", dict(n_inputs=2, const=(1,), shapes=(None, (2, 4, 8))), dict(on="BPU", axis=2)),
    ("Reshape", dict(n_inputs=2, const=(1,), floating=(True, False)), dict(on="BPU", acts=(0,), output="input")),
    ("MaxPool", {}, dict(output="input")),
    ("GlobalAveragePool", {}, dict(output="own")),
    ("ReduceMean", {}, dict(on="BPU", output="own")),
    ("Concat", dict(n_inputs=3), dict(acts=(0, 1, 2), shared_inputs=True, output="input")),
    ("Add", dict(n_inputs=2, const=(1,)), dict(acts=(0, 1), shared_inputs=True, output="own")),
    ("Mul", dict(n_inputs=2), dict(acts=(0, 1), shared_inputs=False)),
    ("Resize", dict(n_inputs=3, const=(2,), attrs={"mode": "nearest"}), dict(output="input")),
    ("Resize", dict(n_inputs=3, const=(2,), attrs={"mode": "linear"}), dict(output="own")),
    ("Sigmoid", {}, dict(on="BPU", lut=True)),
    ("Softmax", {}, dict(on="BPU", lut=True)),
])
def test_integer_ops_and_their_scales(op, kw, expect):
    rule = decide(view(op, **kw))
    got = {"on": rule.on, "acts": rule.acts, "bias": rule.bias, "output": rule.output, "lut": rule.lut,
           "shared_inputs": rule.shared_inputs, "accumulates": rule.accumulates}
    if rule.weight is not None:
        got.update(axis=rule.weight.axis, groups=rule.weight.groups)
    assert {k: got[k] for k in expect} == expect


@pytest.mark.parametrize("v,reason", [
    (view("TopK", 2, const=(1,)), "operator TopK has no integer form here"),
    (view("MatMul", 2), "MatMul of two activations has no integer form here (only a constant B)"),
    (view("Conv", 2), "Conv with a non-constant weight has no integer form here"),
    (view("Concat", 2, floating=(False, False)), "Concat on non-float tensors (shape or index arithmetic) stays on the CPU"),
    (view("MyOp", domain="custom"), "operator custom.MyOp (custom domain) has no integer form here"),
])
def test_cpu_ops_say_why(v, reason):
    rule = decide(v)
    assert (rule.on, rule.reason) == ("CPU", reason)


def test_gemm_bias_is_int32_only_when_it_is_one_value_per_channel_of_a_unit_product():
    base = dict(n_inputs=3, const=(1, 2), attrs={"transB": 1})
    assert decide(view("Gemm", shapes=(None, (8, 4), (8,)), **base)).bias == 2
    assert decide(view("Gemm", shapes=(None, (8, 4), (1, 8)), **base)).bias == 2
    assert decide(view("Gemm", shapes=(None, (8, 4), (2, 8)), **base)).bias is None
    scaled = dict(base, attrs={"transB": 1, "beta": 2.0})
    assert decide(view("Gemm", shapes=(None, (8, 4), (8,)), **scaled)).bias is None


def chain(opset: int = 17):
    """Conv_0 → Relu_1 (fused: Conv_0+Relu_1) → Erf_2 (no integer form) → Conv_3 → y, optimized."""
    b = Builder("chain")
    x = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 4)])
    b.output(b.conv(b.op("Erf", [x]), 4, 2, k=1, out="y"))
    return optimized(b.build(opset))


def test_ops_without_integer_form_run_on_cpu_with_quantize_at_the_borders():
    model = chain()
    plan = plan_for(model)
    erf = plan.nodes["Erf_2"]
    assert (erf.on, erf.reason, erf.output_dtype) == ("CPU", "operator Erf has no integer form here", "f32")
    assert plan.nodes["Conv_3"].act_inputs == ("Erf_2_y",)  # the CPU output is quantized for the next Conv
    assert {"Relu_1_y", "Erf_2_y"} <= set(plan.acts)
    assert plan.nodes["Conv_3"].output_dtype == "si32"  # a model output left as the int32 accumulator


def test_run_on_cpu_moves_a_conv_off_the_bpu_and_leaves_its_weight_float():
    plan = plan_for(chain(), QuantOptions.build(run_on_cpu=["Conv_0"]))
    conv = plan.nodes["Conv_0"]
    assert (conv.on, conv.reason, conv.weight, conv.act_inputs) == ("CPU", "run_on_cpu places it on the CPU", None, ())
    assert conv.node not in {n for n in plan.weights} and plan.nodes["Conv_3"].weight in plan.weights
    assert "x" not in plan.acts  # only the CPU Conv reads the model input now


def test_node_info_on_wins_over_run_on_cpu_with_a_note():
    options = QuantOptions.build(run_on_cpu=["Conv_0"], node_info={"Conv_0": {"ON": "BPU"}})
    plan = plan_for(chain(), options)
    assert plan.nodes["Conv_0"].on == "BPU" and plan.nodes["Conv_0"].reason == "node_info places it on the BPU"
    assert "node_info takes priority over run_on_cpu for node 'Conv_0': it runs on BPU, not CPU" in plan.notes


def test_run_on_bpu_cannot_give_an_op_an_integer_form():
    plan = plan_for(chain(), QuantOptions.build(run_on_bpu=["Erf_2"]))
    assert plan.nodes["Erf_2"].on == "CPU"
    assert any("run_on_bpu asks for node 'Erf_2' on the BPU" in n for n in plan.notes)


def test_node_info_output_int16():
    plan = plan_for(chain(), QuantOptions.build(node_info={"Conv_0": {"OutputType": "int16"}}))
    assert plan.acts["Relu_1_y"].bits == 16 and plan.nodes["Conv_0"].output_dtype == "si16"
    assert plan.acts["x"].bits == 8


def test_node_info_input_type_widens_the_producer_output():
    plan = plan_for(chain(), QuantOptions.build(node_info={"Conv_3": {"InputType0": "int16"}}))
    assert plan.acts["Erf_2_y"].bits == 16 and plan.acts["Relu_1_y"].bits == 8


def test_set_conv_output_int16():
    plan = plan_for(chain(), QuantOptions.build(optimization=["set_Conv_output_int16"]))
    assert plan.acts["Relu_1_y"].bits == 16  # the Conv+Relu group's output
    assert plan.nodes["Conv_3"].output_dtype == "si16"  # asked for, so no longer si32


@pytest.mark.parametrize("opt,dtype", [([], "si32"), (["set_model_output_int16"], "si16"),
                                       (["set_model_output_int8"], "si8")])
def test_model_output_bits(opt, dtype):
    plan = plan_for(chain(), QuantOptions.build(optimization=opt))
    assert plan.nodes["Conv_3"].output_dtype == dtype
    assert ("y" in plan.acts) == (dtype != "si32")


def test_from_config_reads_calibration_parameters_and_node_info():
    text = """
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  node_info: {Conv_0: {'ON': BPU, OutputType: int16}, Conv_3: {InputType0: int16}}
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x8x8
calibration_parameters:
  calibration_type: max
  cal_data_dir: cal
  run_on_cpu: 'Conv_0; Erf_2'
  optimization: set_Relu_output_int16,set_model_output_int8,asymmetric,set_Softmax_input_int8
  per_channel: true
compiler_parameters:
  compile_mode: latency
"""
    result = load_config_text(text, Path("/nonexistent"), check_files=False)
    assert result.config is not None, [p.message for p in result.problems]
    options = QuantOptions.from_config(result.config)
    assert options.run_on_cpu == {"Conv_0", "Erf_2"} and options.per_channel and options.asymmetric
    assert options.model_output_bits == 8 and options.op_output_bits == {"Relu": 16}
    assert options.op_input_bits == {"Softmax": 8}
    assert options.node_info["Conv_0"] == NodeInfo("BPU", None, {}, 16)
    assert options.node_info["Conv_3"] == NodeInfo(None, None, {0: 16}, None)
    plan = plan_for(chain(), options)
    assert plan.nodes["Conv_0"].on == "BPU" and plan.nodes["Erf_2"].on == "CPU"
    assert any("node_info takes priority over run_on_cpu for node 'Conv_0'" in n for n in plan.notes)
    assert "optimization asymmetric is recorded, but activations stay symmetric (zero point 0) here" in plan.notes


def test_shape_arithmetic_stays_on_cpu_and_is_not_observed():
    model = optimized(onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,48] y) <int64[1] I = {0}, int64[1] M = {-1}> {
        s = Shape (x)
        n = Gather <axis = 0> (s, I)
        shape = Concat <axis = 0> (n, M)
        y = Reshape (x, shape)
    }"""))
    assert [n.op_type for n in model.graph.node] == ["Reshape"]  # the static shape arithmetic folded away
    assert [p.on for p in plan_for(model).nodes.values()] == ["BPU"]
    assert set(plan_tensors(model)) == {"x"}  # the Reshape keeps x's scale: nothing else to observe
    # integer arithmetic the optimizer cannot fold (runtime indices): it stays on the CPU, unobserved
    model = optimized(onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,3,4,4] y) {
        a = ArgMax <axis = 1, keepdims = 1> (x)
        c = Concat <axis = 1> (a, a)
        f = Cast <to = 1> (c)
        s = ReduceSum <keepdims = 1> (f)
        y = Add (x, s)
    }"""))
    ops = {p.op_type: p for p in plan_for(model).nodes.values()}
    assert ops["Concat"].on == "CPU" and "shape or index arithmetic" in ops["Concat"].reason
    assert ops["Add"].on == "BPU"
    assert set(plan_tensors(model)) == {"x", "s", "y"}  # a and c (int64) are not observed


def test_a_node_the_mixed_precision_search_moved_says_so_not_node_info():
    """Review §11: advice.json said "node_info places it on the CPU" for a conv the search moved; the user
    wrote no node_info."""
    from engine.quantize.planner import MIXED_PRECISION, Calibration, make_plan

    model = chain()
    thresholds = Calibration(max_thresholds(model, QuantOptions.build(node_info={"Conv_0": {"ON": "CPU"}})),
                             node_info={"Conv_0": {"ON": "CPU"}})
    moved = make_plan(model, thresholds, QuantOptions())
    assert moved.nodes["Conv_0"].on == "CPU" and moved.nodes["Conv_0"].reason == f"{MIXED_PRECISION} places it on the CPU"
    mine = make_plan(model, thresholds, QuantOptions.build(node_info={"Conv_0": {"ON": "CPU"}}))
    assert mine.nodes["Conv_0"].reason == "node_info places it on the CPU"  # the user's own wins, and is told so
