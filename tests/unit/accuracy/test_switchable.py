"""The switchable model: one session, every quantization on or off by feed."""

from __future__ import annotations

import numpy as np

from engine.accuracy.switchable import Setting, build_switchable
from engine.quantize.calibrated import build_calibrated_model, calibration_map
from engine.quantize.ptq import build_ptq_model
from engine.similarity import cosine, run_model
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples


def test_all_on_is_the_fake_quant_model_and_all_off_is_float():
    model = outlier_chain()
    data = samples(model, 4)
    _, _, plan = calibrate(model, data)
    sw = build_switchable(model, plan)
    ptq = build_ptq_model(model, plan)  # the integer program computed in float
    for s in data:
        ref, q = run_model(model, s)["y"], run_model(ptq, s)["y"]
        on, off = sw.run(s, sw.all_on())["y"], sw.run(s, Setting())["y"]
        np.testing.assert_allclose(off, ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(on, q, rtol=0, atol=1e-5)  # int8 weights, int32 biases, shared scales
        assert cosine(on, ref) < 0.9 and cosine(off, ref) > 0.999999  # quantization does show


def test_one_switch_quantizes_one_tensor_for_all_its_readers():
    model = outlier_chain()
    data = samples(model, 2)
    _, _, plan = calibrate(model, data)
    sw = build_switchable(model, plan)
    row = sw.row("conv_b+relu_b")
    assert [s.target for s in row.of_kind("activation")] == ["rb"] and [s.target for s in row.of_kind("weight")] == ["Wb"]
    got = sw.run(data[0], sw.rows_on([row], ("activation",)), ["rb", "ra"])
    floats = run_model(model, data[0], ["rb", "ra"])
    step = plan.acts["rb"].threshold / 127
    codes = got["rb"] / step
    assert np.allclose(codes, np.rint(codes), atol=1e-3)  # on the int8 grid
    np.testing.assert_allclose(got["ra"], floats["ra"], atol=1e-5)  # its input stays float
    mapping = calibration_map(build_calibrated_model(model, plan))
    assert set(mapping) <= set(sw.mapping)


def test_int16_alternative_uses_its_own_threshold():
    model = outlier_chain()
    data = samples(model, 2)
    merged, _, plan = calibrate(model, data)
    sw = build_switchable(model, plan, int16={"rb"}, wide={"rb": merged["rb"].absmax})
    at8 = sw.run(data[0], Setting({"rb": 8}), ["rb"])["rb"]
    at16 = sw.run(data[0], Setting({"rb": 16}), ["rb"])["rb"]
    exact = run_model(model, data[0], ["rb"])["rb"]
    assert np.abs(at16 - exact).max() <= merged["rb"].absmax / 32767 + 1e-4
    assert np.abs(at8 - exact).max() > 50 * np.abs(at16 - exact).max()


def test_switches_are_ifs_and_a_constant_weight_model_answers_activation_questions_alike():
    model = outlier_chain()
    data = samples(model, 2)
    _, _, plan = calibrate(model, data)
    sw = build_switchable(model, plan)
    act_only = build_switchable(model, plan, weights=False)
    ops = [n.op_type for n in sw.model.graph.node]
    # activations switch through If (only the taken branch runs); weights were fake-quantized once
    # and folded into constants, so no QuantizeLinear reads a weight at run time
    assert ops.count("If") == len(sw.acts) and "QuantizeLinear" not in ops
    inits = {t.name for t in act_only.model.graph.initializer}
    assert not act_only.weights and {"Wa", "Wb", "Wc", "Wd"} <= inits
    assert not any(n.op_type == "Where" for n in act_only.model.graph.node)  # weights stay constant
    for row in ("conv_b+relu_b", "conv_c+relu_c"):
        setting = sw.rows_on([sw.row(row)], ("activation",))
        np.testing.assert_array_equal(act_only.run(data[0], setting)["y"], sw.run(data[0], setting)["y"])
    with_weights = sw.rows_on([sw.row("conv_c+relu_c")], ("weight",))
    assert not np.array_equal(sw.run(data[0], with_weights)["y"], act_only.run(data[0], Setting())["y"])


def test_fold_constants_stores_what_the_pairs_computed():
    from onnx import TensorProto, helper, numpy_helper

    from engine.accuracy.switchable import fold_constants

    w = np.linspace(-1.3, 1.1, 24, dtype=np.float32).reshape(2, 3, 2, 2)
    nodes = [helper.make_node("QuantizeLinear", ["W", "s", "z"], ["Wq"], axis=0),
             helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wdq"], axis=0),
             helper.make_node("Conv", ["x", "Wdq"], ["y"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([0.01, 0.03], np.float32), "s"),
             numpy_helper.from_array(np.zeros(2, np.int8), "z")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    before = run_model(m, x)["y"]
    assert fold_constants(m, ["Wdq"]) == 1
    assert [n.op_type for n in m.graph.node] == ["Conv"]
    assert {t.name for t in m.graph.initializer} == {"Wdq"}  # the float weight and its scales went
    np.testing.assert_array_equal(run_model(m, x)["y"], before)
    folded = numpy_helper.to_array(m.graph.initializer[0])
    assert np.allclose(folded[0] / 0.01, np.rint(folded[0] / 0.01), atol=1e-4)  # on channel 0's grid
