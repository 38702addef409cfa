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
