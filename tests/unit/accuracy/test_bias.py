"""Bias correction: the mean shift int8 weights add is measured and folded into the bias."""

from __future__ import annotations

import numpy as np

from engine.accuracy import bias
from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.planner import Calibration, CorrectedBias, make_plan
from engine.quantize.ptq import build_ptq_model
from engine.similarity import run_model
from tests.unit.accuracy.acc_models import biased_input_conv, calibrate, samples


def _error(model, quantized, data) -> tuple[float, float]:
    """(mean squared error, |mean error| per channel averaged) of `quantized` against float."""
    diffs = [run_model(quantized, s)["y"] - run_model(model, s)["y"] for s in data]
    d = np.concatenate(diffs)
    return float(np.mean(d ** 2)), float(np.mean(np.abs(d.mean(axis=(0, 2, 3)))))


def test_bias_correction_removes_the_mean_shift_of_a_biased_activation():
    model = biased_input_conv()
    data = samples(model, 8, offset=4.0)  # the activation's mean is far from zero
    _, calibration, plan = calibrate(model, data)
    layers, notes = bias.layers(model, plan)
    assert [(layer.node, layer.bias) for layer in layers] == [("conv", "B")] and notes == []
    means = bias.merge_means([bias.channel_means(run_model(model, s, ["x"]), {"x": 1}) for s in data])
    np.testing.assert_allclose(means["x"].mean, np.mean([s["x"].mean(axis=(0, 2, 3)) for s in data], axis=0),
                               rtol=1e-5)
    shifts = bias.corrections(model, plan, means)
    corrected = make_plan(model, Calibration(calibration, bias_corrections=shifts))
    assert isinstance(corrected.biases["B"], CorrectedBias)

    held = samples(model, 6, seed=5, offset=4.0)
    mse_before, shift_before = _error(model, build_ptq_model(model, plan), held)
    mse_after, shift_after = _error(model, build_ptq_model(model, corrected), held)
    assert shift_after < 0.2 * shift_before  # measured: the channel means move 10x less
    assert mse_after < 0.7 * mse_before
    # the calibrated model (float bias, fake-quant weights) carries the same correction
    cal_before, _ = _error(model, build_calibrated_model(model, plan), held)
    cal_after, _ = _error(model, build_calibrated_model(model, corrected), held)
    assert cal_after < 0.7 * cal_before


def test_channel_means_merge_exactly_and_round_trip():
    rng = np.random.default_rng(0)
    parts = [{"t": rng.standard_normal((1, 3, 4, 4))} for _ in range(3)]
    merged = bias.merge_means([bias.channel_means(p, {"t": 1}) for p in parts])
    np.testing.assert_allclose(merged["t"].mean, np.concatenate([p["t"] for p in parts]).mean(axis=(0, 2, 3)))
    again = bias.from_bytes(bias.to_bytes(merged))
    np.testing.assert_array_equal(again["t"].sums, merged["t"].sums)
    assert again["t"].count == merged["t"].count == 48


def test_a_corrected_bias_goes_with_its_int8_weight_in_the_switchable_model():
    """The correction undoes the int8 weight's error: with the weight float (switch off, or the
    constant-weight model of the activation questions) the bias must be the model's own, else every
    sensitivity question carries the corrections as an error of their own."""
    from engine.accuracy.switchable import Setting, build_switchable

    model = biased_input_conv()
    data = samples(model, 8, offset=4.0)
    _, calibration, plan = calibrate(model, data)
    means = bias.merge_means([bias.channel_means(run_model(model, s, ["x"]), {"x": 1}) for s in data])
    corrected = make_plan(model, Calibration(calibration, bias_corrections=bias.corrections(model, plan, means)))
    assert np.abs(corrected.biases["B"].correction).max() > 1e-3  # a correction worth seeing
    ptq = build_ptq_model(model, corrected)
    for weights in (True, False):
        sw = build_switchable(model, corrected, weights=weights)
        for s in data[:2]:
            off = sw.run(s, Setting())["y"]
            np.testing.assert_allclose(off, run_model(model, s)["y"], rtol=0, atol=1e-5)
            if weights:
                np.testing.assert_allclose(sw.run(s, sw.all_on())["y"], run_model(ptq, s)["y"], rtol=0, atol=1e-4)
