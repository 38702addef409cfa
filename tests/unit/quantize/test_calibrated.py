"""The calibrated and ptq models: names, wiring, exact fake-quant values, int16, ptq ≈ calibrated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.quantize.calibrated import MAP_KEY, build_calibrated_model, calibration_map
from engine.quantize.planner import QuantOptions
from engine.quantize.ptq import build_ptq_model
from engine.similarity import cosine, run_model
from tests.support.models import CORPUS, Builder, conv_bn_relu_chain, multi_io, random_inputs
from tests.unit.quantize.quant_support import fake_quant, initializer, node, optimized, plan_for

S = 2.0 ** -4  # a power-of-two scale: grid points and half-way ties are exact in float32


def lut_model(opset: int = 17):
    """x → Sigmoid → Conv(1x1) → y (x and the Sigmoid output are quantized; y stays si32)."""
    b = Builder("lut")
    s = b.op("Sigmoid", [b.input("x", [1, 2, 4, 4])])
    b.output(b.conv(s, 2, 2, k=1, out="y"))
    return optimized(b.build(opset))


TIES = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]  # in units of S: round half to even → 0, 2, 2, -0, -2, -2, 126
TIES_ROUNDED = [0, 2, 2, 0, -2, -2, 126]
BEYOND = [200.0, -300.0]  # saturate to 127 and -128 (onnxruntime uses the whole int8 range)


def ties_input() -> dict[str, np.ndarray]:
    """Half-way values (round half to even decides), values beyond ±127·S, and grid points."""
    grid = np.arange(-11, 12, dtype=np.float32)[:32 - len(TIES) - len(BEYOND)]
    x = np.array(TIES + BEYOND + list(grid), np.float32) * np.float32(S)
    return {"x": x.reshape(1, 2, 4, 4)}


def test_qdq_pairs_are_named_after_their_tensor_and_outputs_keep_their_names():
    model = optimized(multi_io())  # outputs stem (Conv, also read by Add), fused (Add), score (Sigmoid)
    plan = plan_for(model)
    cal = build_calibrated_model(model, plan)
    onnx.checker.check_model(cal)
    q_names = {n.name for n in cal.graph.node if n.op_type == "QuantizeLinear"}
    assert {f"{t}_HzCalibration" for t in plan.acts} <= q_names
    assert [o.name for o in cal.graph.output] == [o.name for o in model.graph.output]
    for out in ("stem", "fused", "score"):  # each output is now written by its DequantizeLinear
        producer = next(n for n in cal.graph.node if out in n.output)
        assert producer.op_type == "DequantizeLinear" and producer.name == f"{out}_HzCalibration_dequantize"
    assert node(cal, "Add_2").input[0] == "stem"  # the Add reads the fake-quantized stem
    assert calibration_map(cal)["feat"] == "feat_HzCalibration_output"
    assert next(p.value for p in cal.metadata_props if p.key == MAP_KEY)
    feeds = random_inputs(model)
    ref, got = run_model(model, feeds), run_model(cal, feeds)
    assert all(cosine(ref[o], got[o]) > 0.999 for o in ref) and any(not np.array_equal(ref[o], got[o]) for o in ref)


def test_fake_quant_values_are_round_half_even_and_saturate():
    model = lut_model()
    plan = plan_for(model, x=127 * S, Sigmoid_0_y=1.0)
    cal = build_calibrated_model(model, plan)
    feeds = ties_input()
    got = run_model(cal, feeds, ["x_HzCalibration_output", "Sigmoid_0_y_HzCalibration_output"])
    assert np.array_equal(got["x_HzCalibration_output"], fake_quant(feeds["x"], 127 * S))
    flat = got["x_HzCalibration_output"].reshape(-1) / np.float32(S)
    assert flat[:len(TIES)].tolist() == TIES_ROUNDED and flat[len(TIES):len(TIES) + 2].tolist() == [127, -128]
    sig = 1 / (1 + np.exp(-fake_quant(feeds["x"], 127 * S).astype(np.float64)))
    assert np.allclose(got["Sigmoid_0_y_HzCalibration_output"], fake_quant(sig.astype(np.float32), 1.0), atol=1 / 127)


def test_weights_are_fake_quantized_per_output_channel():
    model = lut_model()
    plan = plan_for(model)
    cal = build_calibrated_model(model, plan)
    conv = node(model, "Conv_1")
    w = initializer(model, conv.input[1])
    got = run_model(cal, random_inputs(model), [f"{conv.input[1]}_HzCalibration_output"])
    s = plan.weights[conv.input[1]].scale.reshape(-1, 1, 1, 1)
    expected = (np.clip(np.rint(w / s), -128, 127) * s).astype(np.float32)
    assert np.array_equal(got[f"{conv.input[1]}_HzCalibration_output"], expected)
    assert node(cal, "Conv_1").input[1] == f"{conv.input[1]}_HzCalibration_output"


def test_cpu_readers_of_a_cpu_tensor_keep_the_float_value():
    b = Builder("mixed")
    e = b.op("Erf", [b.input("x", [1, 2, 4, 4])])  # CPU
    b.output(b.conv(e, 2, 2, k=1, out="y"), b.op("Erf", [e], out="z"))  # a BPU and a CPU reader
    model = optimized(b.build())
    cal = build_calibrated_model(model, plan_for(model, QuantOptions.build(optimization=["set_model_output_int8"])))
    assert node(cal, "Conv_1").input[0] == "Erf_0_y_HzCalibration_output"
    assert node(cal, "Erf_2").input[0] == "Erf_0_y"


@pytest.mark.parametrize("opset,domain", [(17, "com.microsoft"), (21, "")])
def test_int16_activations_run_with_the_domain_the_opset_allows(opset, domain):
    model = lut_model(opset)
    options = QuantOptions.build(node_info={"Sigmoid_0": {"OutputType": "int16", "InputType": "int16"}})
    plan = plan_for(model, options, x=32767 * S / 2, Sigmoid_0_y=1.0)
    assert plan.acts["x"].bits == 16 and plan.nodes["Sigmoid_0"].output_dtype == "si16"
    cal = build_calibrated_model(model, plan)
    onnx.checker.check_model(cal)
    q = node(cal, "x_HzCalibration")
    assert q.domain == domain and initializer(cal, q.input[2]).dtype == np.int16
    feeds = ties_input()
    got = run_model(cal, feeds, ["x_HzCalibration_output"])
    assert np.array_equal(got["x_HzCalibration_output"], fake_quant(feeds["x"], 32767 * S / 2, bits=16))
    assert np.array_equal(got["x_HzCalibration_output"], feeds["x"])  # int8's ties are on the int16 grid (S/2)


def test_ptq_holds_int8_weights_int32_biases_and_matches_the_calibrated_model():
    model = optimized(conv_bn_relu_chain())
    plan = plan_for(model)
    cal, ptq = build_calibrated_model(model, plan), build_ptq_model(model, plan)
    onnx.checker.check_model(ptq)
    inits = {t.name: t for t in ptq.graph.initializer}
    for w in plan.weights:
        assert onnx.helper.tensor_dtype_to_np_dtype(inits[f"{w}_quantized"].data_type) == np.int8 and w not in inits
    for b in plan.biases:
        assert onnx.helper.tensor_dtype_to_np_dtype(inits[f"{b}_quantized"].data_type) == np.int32
    for seed in range(3):
        feeds = random_inputs(model, seed)
        c, p, f = run_model(cal, feeds), run_model(ptq, feeds), run_model(model, feeds)
        assert cosine(c["pooled"], p["pooled"]) >= 0.9999 and cosine(f["pooled"], p["pooled"]) >= 0.999


def test_ptq_applies_shared_scales_the_calibrated_model_does_not():
    model = optimized(multi_io())
    plan = plan_for(model, stem=3.0, feat=7.0)
    cal, ptq = build_calibrated_model(model, plan), build_ptq_model(model, plan)
    assert initializer(cal, "stem_HzCalibration_scale") == np.float32(3.0 / 127)
    assert initializer(ptq, "stem_HzCalibration_scale") == np.float32(7.0 / 127)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_corpus_model_gives_runnable_calibrated_and_ptq_models(name):
    model = optimized(CORPUS[name]())
    plan = plan_for(model)
    feeds = random_inputs(model, 5)
    ref = run_model(model, feeds)
    for built in (build_calibrated_model(model, plan), build_ptq_model(model, plan)):
        onnx.checker.check_model(built)
        got = run_model(built, feeds)
        assert sorted(got) == sorted(ref)
        assert min(cosine(ref[o], got[o]) for o in ref) > 0.99, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 1, 1), (0,)])
def test_initializer_is_numpy_helpers_message(dtype, shape):
    from onnx import numpy_helper

    from engine.quantize.calibrated import initializer

    value = (np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype)
    assert initializer(value, "t").SerializeToString() == numpy_helper.from_array(value, "t").SerializeToString()
    view = np.arange(12, dtype=dtype).reshape(3, 4).T  # not C-contiguous: numpy_helper's own path
    assert np.array_equal(numpy_helper.to_array(initializer(view, "v")), view)
