"""Emulated convolutions (an int16 operand: float kernels between integer tensors) get a bias that
onnxruntime folds to a constant, so their float Conv runs in its NCHWc kernels — in the `.bc` and the
`.hbm` alike — with the same values DequantizeLinear of the int32 bias codes gives."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from engine.quantize.integer import EMULATED_KEY, lower_to_integer
from engine.quantize.planner import QuantOptions
from engine.runtime.session import session_options
from tests.support.models import Builder, random_inputs
from tests.unit.quantize.quant_support import optimized, plan_for

INT16_MIDDLE = QuantOptions.build(node_info={"Conv_0": {"OutputType": "int16"}},
                                  optimization=["set_model_output_int8"])


def int16_chain() -> onnx.ModelProto:
    """1×1 conv (int16 output by node_info) → depthwise 3×3 reading it (emulated) → 1×1 conv."""
    b = Builder("int16_chain", seed=3)
    x = b.input("x", [1, 16, 12, 12])
    h = b.conv(x, 16, 16, k=1)
    y = b.conv(h, 16, 16, group=16)
    b.output(b.conv(y, 16, 16, k=1, out="y"))
    return b.build()


def ort_optimized(model: onnx.ModelProto, options: ort.SessionOptions) -> onnx.ModelProto:
    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        options.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(path)
    finally:
        os.unlink(path)


def basic_level() -> ort.SessionOptions:
    options = session_options(1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return options


def lowered_chain():
    opt = optimized(int16_chain())
    plan = plan_for(opt, INT16_MIDDLE)
    return opt, plan, lower_to_integer(opt, plan)


def test_emulated_conv_reads_only_constants_after_constant_folding():
    _, plan, bc = lowered_chain()
    emulated = json.loads(next(p.value for p in bc.metadata_props if p.key == EMULATED_KEY))
    assert plan.acts["Conv_0_y"].bits == 16 and "Conv_1" in emulated
    folded = ort_optimized(bc, basic_level())
    constants = {t.name for t in folded.graph.initializer}
    float_convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert float_convs, "the emulated conv is a float Conv in the program"
    for conv in float_convs:
        assert all(i in constants for i in conv.input[1:] if i), f"{conv.name} reads a computed weight or bias"


def _nchwc_available() -> bool:
    """onnxruntime's NCHWc kernels exist on this CPU (MLAS block size > 1: AVX2 / AVX-512)."""
    b = Builder("plain", seed=0)
    b.output(b.conv(b.input("x", [1, 16, 12, 12]), 16, 16, out="y"))
    ops = ort_optimized(b.build(), session_options(1)).graph.node
    return any(n.domain == "com.microsoft.nchwc" for n in ops)


def test_emulated_conv_runs_in_nchwc_kernels():
    if not _nchwc_available():
        import pytest

        pytest.skip("onnxruntime has no NCHWc kernels on this CPU")
    _, _, bc = lowered_chain()
    running = ort_optimized(bc, session_options(1))
    assert any(n.op_type == "Conv" and n.domain == "com.microsoft.nchwc" and n.name.startswith("Conv_1")
               for n in running.graph.node), [(n.op_type, n.domain, n.name) for n in running.graph.node]


def test_folded_bias_is_dequantize_linear_of_the_codes_bit_for_bit():
    opt, _, bc = lowered_chain()
    inits = {t.name: numpy_helper.to_array(t) for t in bc.graph.initializer}
    bias = next(n.input[2] for n in opt.graph.node if n.name == "Conv_1")
    codes, scale = inits[f"{bias}_quantized"], inits[f"{bias}_scale"]
    assert codes.dtype == np.int32 and scale.dtype == np.float32
    dq = helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["v"], axis=0)], "dq", [],
        [helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(codes, "q"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros_like(codes), "z")]), opset_imports=[helper.make_opsetid("", 19)])
    expected = ort.InferenceSession(dq.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    folded = ort_optimized(bc, basic_level())
    conv = next(n for n in folded.graph.node if n.op_type == "Conv" and n.name.startswith("Conv_1"))
    got = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == conv.input[2]))
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()


def test_program_still_runs_the_calibrated_values():
    """The `.bc` with the folded bias against the fake-quant model: within one output step."""
    from engine.quantize.calibrated import build_calibrated_model
    from engine.similarity import run_model

    opt, plan, bc = lowered_chain()
    feeds = random_inputs(opt, 4)
    session = ort.InferenceSession(bc.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    got = session.run(["y"], feeds)[0]
    ref = run_model(build_calibrated_model(opt, plan), feeds)["y"]
    step = float(np.max(np.atleast_1d(plan.acts["y"].scale)))
    assert np.mean(np.abs(got - ref) <= step * (1 + 1e-4) + 1e-7) >= 0.99
