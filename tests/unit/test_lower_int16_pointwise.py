"""A 1×1 Conv from an 8-bit input to an int16 output runs on integer kernels (ConvInteger, then one
requantization by QLinearConv's multiplier), not as float kernels: its int16 codes are the exact
int32 accumulator's, rounded once."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.integer import EMULATED_KEY, lower_to_integer, read_tensor_map
from engine.quantize.lower.encoding import Encoding
from engine.quantize.planner import QuantOptions, bias_value, quantize_bias, quantize_weight
from engine.runtime.session import session_options
from engine.similarity import run_model
from tests.support.models import Builder, random_inputs
from tests.unit.quantize.quant_support import optimized, plan_for

INT16_OUT = QuantOptions.build(node_info={"Conv_0": {"OutputType": "int16"}}, optimization=["set_model_output_int16"])


def pointwise(k: int = 1, group: int = 1) -> onnx.ModelProto:
    b = Builder("pointwise", seed=21)
    b.output(b.conv(b.input("x", [1, 8, 10, 10]), 8, 16 if group == 1 else 8, k=k, group=group, out="y"))
    return b.build()


def lowered(model: onnx.ModelProto):
    opt = optimized(model)
    plan = plan_for(opt, INT16_OUT)
    return opt, plan, lower_to_integer(opt, plan)


def run_codes(bc: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The int16 codes of `y` (its integer form, exposed as an extra output)."""
    name = read_tensor_map(bc)["y"]["tensor"]
    model = onnx.ModelProto()
    model.CopyFrom(bc)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    return session.run([name], feeds)[0]


def test_pointwise_int16_conv_is_an_integer_kernel():
    _, plan, bc = lowered(pointwise())
    assert plan.acts["y"].bits == 16
    emulated = json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY))
    assert "Conv_0" not in emulated
    ops = {n.name: n.op_type for n in bc.graph.node}
    assert ops["Conv_0"] == "ConvInteger" and "Conv" not in ops.values()
    assert read_tensor_map(bc)["y"]["dtype"] == "int16"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int16_codes_are_the_exact_accumulator_rounded_once(seed):
    opt, plan, bc = lowered(pointwise())
    feeds = random_inputs(opt, seed)
    x_enc = Encoding.of(plan.acts["x"])
    x = x_enc.quantize(feeds["x"]).astype(np.int64) - x_enc.zero_point
    conv = next(n for n in opt.graph.node if n.name == "Conv_0")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in opt.graph.initializer}
    wq = plan.weights[conv.input[1]]
    w = quantize_weight(inits[conv.input[1]], wq).astype(np.int64)[:, :, 0, 0]
    s_xw = np.float32(x_enc.scale) * np.asarray(wq.scale, np.float32).reshape(-1)
    planned = plan.biases.get(conv.input[2])
    bias = quantize_bias(bias_value(inits[conv.input[2]], planned), planned.scale if planned else s_xw).astype(np.int64)
    acc = np.einsum("oc,nchw->nohw", w, x) + bias.reshape(1, -1, 1, 1)
    multiplier = (s_xw / np.float32(plan.acts["y"].scale)).astype(np.float32).reshape(1, -1, 1, 1)
    want = np.clip(np.rint(acc.astype(np.float32) * multiplier), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(run_codes(bc, feeds), want)


def test_int16_output_stays_within_one_step_of_the_calibrated_model():
    opt, plan, bc = lowered(pointwise())
    feeds = random_inputs(opt, 3)
    session = ort.InferenceSession(bc.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    got = session.run(["y"], feeds)[0]
    ref = run_model(build_calibrated_model(opt, plan), feeds)["y"]
    step = float(plan.acts["y"].scale)
    assert np.mean(np.abs(got - ref) <= step * (1 + 1e-4) + 1e-7) >= 0.99


@pytest.mark.parametrize("k,group", [(3, 1), (1, 8)])
def test_other_int16_convs_stay_float_kernels(k, group):
    """3×3 and depthwise ConvInteger measured no faster than the float kernel (or far slower)."""
    _, _, bc = lowered(pointwise(k, group))
    emulated = json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY))
    assert "Conv_0" in emulated and "ConvInteger" not in {n.op_type for n in bc.graph.node}
