"""calibration_type: default picks by output cosine, mix per tensor, load reads scales back, skip."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.calibration import merge_samples, observe, percentile_threshold, tensor_stats
from engine.calibration.stats import merge
from engine.problems import CalibrationDataError
from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.planner import make_plan, plan_tensors
from engine.quantize.search import (
    SearchSettings,
    candidates,
    choose_thresholds,
    fake_quant_mse,
    load_thresholds,
    search_default,
    search_load,
    search_mix,
    search_skip,
)
from tests.support.models import Builder, multi_io
from tests.unit.quantize.quant_support import optimized, plan_for


def conv_model():
    """x → Conv 1x1 → Relu → y (one Conv+Relu group): x's threshold decides most of the cosine."""
    b = Builder("conv1x1")
    b.output(b.op("Relu", [b.conv(b.input("x", [1, 3, 32, 32]), 3, 4, k=1)], out="y"))
    return optimized(b.build())


def outlier_samples(n=8, at=5):
    """Gaussian samples; in sample `at` a fifth of the values are spread up to ±200 (an over-exposed
    calibration image): max sets the step to 200/127, which rounds every typical value away."""
    rng = np.random.default_rng(7)
    samples = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(n)]
    flat = samples[at]["x"].reshape(-1)
    idx = rng.choice(flat.size, flat.size // 5, replace=False)
    flat[idx] = rng.uniform(-200, 200, idx.size)
    return samples


def test_default_selects_kl_when_outliers_ruin_max_and_logs_it(hb_log):
    model = conv_model()
    samples = outlier_samples()
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    result = search_default(model, merged, samples)
    assert result.method == "kl" and result.acts["x"].method == "kl"
    # hb's three candidates, plus mix's per-tensor least-error thresholds (an addition of ours)
    assert set(result.cosines) == {"max", "max-percentile:percentile=0.99995", "kl", "mix"}
    assert result.cosines["kl"] > 0.9 > 0.8 > result.cosines["max"]  # measured: kl 0.93, max 0.76
    messages = [r.getMessage() for r in hb_log]
    assert "Run calibration model with modelwise search method." in messages and "Select kl method." in messages
    plan = make_plan(model, result.acts)
    assert plan.acts["x"].method == "kl" and plan.acts["x"].threshold == result.acts["x"].threshold


def test_default_keeps_max_when_nothing_needs_clipping(hb_log):
    model = conv_model()
    rng = np.random.default_rng(3)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    result = choose_thresholds(SearchSettings("default", cosine_samples=2), model, merged, samples)
    assert result.method == "max" and result.acts["x"].method == "max"
    assert "Select max method." in [r.getMessage() for r in hb_log]
    assert result.cosines["max"] >= result.cosines["kl"]  # uniform data: clipping only loses
    assert result.detail["samples"] == 2 and result.detail["gain_over_max"]["max"] == [0.0, 0.0]


def raw_mse(x: np.ndarray, t: float) -> float:
    s = t / 127
    return float(np.mean((x - np.clip(np.rint(x / s), -127, 127) * s) ** 2))


def test_mix_chooses_per_tensor_by_its_own_quantization_error():
    rng = np.random.default_rng(1)
    spiky = rng.uniform(-1, 1, 1 << 20).astype(np.float32)
    spiky[:2] = [20.0, -18.0]  # two glitches in a million values: clipping them costs less than coarse steps
    flat = rng.uniform(-4, 4, 1 << 16).astype(np.float32)
    data = {"spiky": spiky, "flat": flat}
    merged = {k: merge([tensor_stats(v, channel_axis=None)]) for k, v in data.items()}
    result = search_mix(merged)
    options = candidates(merged)
    for name, x in data.items():
        errors = {m: raw_mse(x, options[m][name].value) for m in options}
        assert raw_mse(x, result.acts[name].threshold) <= 1.05 * min(errors.values()), (name, errors)
    assert result.acts["spiky"].method != "max" and result.acts["flat"].method in ("max", "max-percentile:percentile=0.99995")
    assert result.method == "mix" and sum(result.detail["methods"].values()) == 2


def test_fake_quant_mse_prices_clipping_and_rounding():
    stats = merge([tensor_stats(np.linspace(-8, 8, 4097, dtype=np.float32), channel_axis=None)])
    mse = fake_quant_mse(stats, np.array([8.0, 4.0, 1.0]))
    assert mse[0] == pytest.approx((8 / 127) ** 2 / 12, rel=0.05)  # pure rounding error of a uniform spread
    assert mse[0] < mse[1] < mse[2]  # clipping half (and most) of the range costs far more


def test_least_mse_is_the_argmin_of_the_full_error_with_ties_to_the_earlier():
    """Pricing the non-empty bins first only narrows the thresholds: the pick is `fake_quant_mse`'s
    argmin (first of equals) on sparse, pixel-like, smooth and spiky histograms, with repeated thresholds."""
    from engine.quantize.search import least_mse

    rng = np.random.default_rng(4)
    pixels = np.repeat(np.arange(256, dtype=np.float32) / 255, 40)  # a uint8 image / 255: every 8th bin
    spiky = rng.uniform(-1, 1, 1 << 16).astype(np.float32)
    spiky[:2] = [20.0, -18.0]
    laplace = merge([tensor_stats(rng.laplace(size=1 << 16).astype(np.float32), channel_axis=None)])
    # redistributed (fractional) counts, as merged histograms hold, with a sparse far tail
    fractional = dataclasses.replace(laplace, hist=laplace.hist * rng.random(2048) * (rng.random(2048) < 0.7))
    for stats in [merge([tensor_stats(x, channel_axis=None)]) for x in (pixels, spiky, np.zeros(64, np.float32))] + \
            [laplace, fractional]:
        base = max(stats.absmax, 1e-6)
        thresholds = np.concatenate([[base, base * 0.9, base], base * np.geomspace(0.02, 1.0, 48)])
        assert least_mse(stats, thresholds) == int(np.argmin(fake_quant_mse(stats, thresholds)))
        fine = base * np.linspace(0.05, 0.2, 200)  # neighbours that differ by little
        assert least_mse(stats, fine) == int(np.argmin(fake_quant_mse(stats, fine)))
    broken = dataclasses.replace(laplace, absmax=np.inf)  # no bounds to take: fake_quant_mse's own argmin
    with np.errstate(all="ignore"):
        assert least_mse(broken, np.array([1.0, 2.0])) == int(np.argmin(fake_quant_mse(broken, np.array([1.0, 2.0]))))


def test_the_bounds_keep_every_threshold_that_can_be_least_and_drop_most():
    """Lower bound (clipping only) ≤ the error ≤ upper bound (plus half a step per unclipped value)."""
    from engine.quantize.search import _possible_least

    stats = merge([tensor_stats(np.random.default_rng(2).laplace(size=1 << 16).astype(np.float32), channel_axis=None)])
    thresholds = stats.absmax * np.geomspace(0.02, 1.0, 48)
    held = np.flatnonzero(stats.hist)
    alive = _possible_least(stats.hist[held], (held + 0.5) * stats.bin_width, thresholds, 127)
    mse = fake_quant_mse(stats, thresholds)
    assert alive[np.argmin(mse)] and alive.sum() <= 0.3 * len(thresholds)


def qdq_model() -> onnx.ModelProto:
    """Hand-written QDQ model: int8 on x, uint8 (zero point 128) on r, per-channel int8 on c, a weight pair."""
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "sx"), numpy_helper.from_array(np.array(0, np.int8), "zx"),
             numpy_helper.from_array(np.array(0.01, np.float32), "sr"), numpy_helper.from_array(np.array(128, np.uint8), "zr"),
             numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "sc"), numpy_helper.from_array(np.zeros(2, np.int8), "zc"),
             numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "sr", "zr"], ["rq"]), helper.make_node("DequantizeLinear", ["rq", "sr", "zr"], ["rd"]),
             helper.make_node("QuantizeLinear", ["w", "sc", "zc"], ["wq"], axis=0), helper.make_node("DequantizeLinear", ["wq", "sc", "zc"], ["wd"], axis=0),
             helper.make_node("Conv", ["rd", "wd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"], axis=1), helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_load_reads_a_qdq_models_scales_back_exactly():
    found = load_thresholds(qdq_model())
    assert set(found) == {"x", "r", "c"}  # the weight's pair is not an activation
    assert found["x"] == float(np.float32(0.02)) * 127
    assert found["r"] == float(np.float32(0.01)) * 127  # uint8 around 128: symmetric, 127 · s (not 128 · s)
    assert np.array_equal(found["c"], np.float32([0.1, 0.2]).astype(np.float64) * 127)


def test_load_covers_the_larger_side_of_an_asymmetric_range(tmp_path):
    """onnxruntime's quantize_static writes uint8 activations with a zero point fitted to [min, max]:
    the threshold covers the larger side (here about 10), not the small negative one (about 0.5)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    b = Builder("asym")
    b.output(b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 4, k=1)], out="y"))
    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(b.build(), str(float_path))
    x = np.random.default_rng(0).uniform(-0.5, 10.0, (1, 3, 8, 8)).astype(np.float32)
    x.flat[0], x.flat[1] = -0.5, 10.0

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": x}]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    q = next(n for n in onnx.load(str(qdq_path)).graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(qdq_path)).graph.initializer}
    scale, zp = float(inits[q.input[1]]), int(inits[q.input[2]])
    assert 0 < zp < 128  # asymmetric: the case at stake
    found = load_thresholds(qdq_path)
    assert found["x"] == pytest.approx(scale * (255 - zp)) and 9.9 < found["x"] < 10.1


def test_load_round_trips_our_own_calibrated_model(tmp_path):
    model = optimized(multi_io())
    plan = plan_for(model)
    path = tmp_path / "calibrated.onnx"
    onnx.save(build_calibrated_model(model, plan), str(path))
    found = load_thresholds(path)
    expected = {t: float(np.float32(a.threshold / 127)) * 127 for t, a in plan.calibrated_acts.items()
                if a.method != "const"}
    assert {t: found[t] for t in expected} == expected  # graph outputs too (their pair sits before the name)
    result = search_load(path, plan_tensors(model))
    assert {a.method for a in result.acts.values()} == {"load"} and result.method == "load"


def test_load_reads_a_json_map_and_names_what_is_missing(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"x": 2.5, "y": [1.0, 2.0]}))
    assert load_thresholds(path)["x"] == 2.5 and np.array_equal(load_thresholds(path)["y"], [1.0, 2.0])
    with pytest.raises(CalibrationDataError, match="no threshold for 'z' in the loaded"):
        search_load(path, ["x", "z"])
    path.write_text(json.dumps({"x": -1}))
    with pytest.raises(CalibrationDataError, match="threshold of tensor 'x' .* must be a positive number"):
        load_thresholds(path)
    path.write_text("{not json")
    with pytest.raises(CalibrationDataError, match="cannot read thresholds from"):
        load_thresholds(path)
    with pytest.raises(CalibrationDataError, match="Can not find file specified"):
        load_thresholds(tmp_path / "absent.onnx")


def test_skip_uses_random_data_and_warns(hb_log):
    model = optimized(multi_io())
    tensors = plan_tensors(model)
    result = search_skip(model, tensors, samples=2)
    assert set(result.acts) == set(tensors) and {a.method for a in result.acts.values()} == {"skip"}
    assert result.acts["img"].threshold > 200  # uniform 0..255 in the train view
    assert any(r.levelno == logging.WARNING and "random data" in r.getMessage() for r in hb_log)
    assert make_plan(model, result.acts).acts  # enough to plan with


def test_max_with_max_percentile_is_max_percentile():
    model = conv_model()
    samples = outlier_samples(4, at=1)
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    result = choose_thresholds(SearchSettings("max", max_percentile=0.99), model, merged)
    assert result.method == "max-percentile:percentile=0.99"
    assert result.acts["x"].threshold == percentile_threshold(merged["x"], 0.99).value


def test_candidates_share_one_session_and_score_as_their_own_calibrated_models():
    from engine.quantize.planner import QuantOptions
    from engine.quantize.search import CandidateScorer, _acts, same_layout
    from engine.similarity import mean_output_cosine, run_model

    model = conv_model()
    samples = outlier_samples()
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    tried = {name: _acts(found) for name, found in candidates(merged).items()}
    plans = [make_plan(model, acts) for acts in tried.values()]
    assert all(same_layout(plans[0], p) for p in plans)  # only the activation scales change
    models = [build_calibrated_model(model, p) for p in plans]
    assert len({m.SerializeToString() for m in models}) == len(models)  # the candidates do differ
    got = CandidateScorer(model, samples[:3], QuantOptions()).cosines(tried)
    for name, calibrated in zip(tried, models, strict=True):
        alone = mean_output_cosine([run_model(model, s) for s in samples[:3]],
                                   [run_model(calibrated, s) for s in samples[:3]], ["y"])
        assert got[name] == pytest.approx(alone, abs=1e-9)
    assert len(set(got.values())) > 1  # the candidates did differ
    # int16 for a tensor is another layout (a session of its own)
    wide = make_plan(model, tried["max"], QuantOptions.build(optimization=["set_model_output_int16"]))
    assert wide.calibrated_acts["y"].bits == 16 and not same_layout(plans[0], wide)


def test_candidates_with_another_layout_are_scored_by_their_own_model():
    """A per-channel threshold on the conv's model output keeps per-channel scales (another scale shape,
    so another model): that candidate gets its own session and still scores as its own model."""
    from engine.quantize.planner import QuantOptions
    from engine.quantize.search import CandidateScorer, _acts, same_layout
    from engine.quantize.types import ActQuant
    from engine.similarity import mean_output_cosine, run_model

    model = conv_model()
    samples = outlier_samples()
    merged = merge_samples(list(observe(model, samples, plan_tensors(model))))
    plain = _acts(candidates(merged)["max"])
    wide = dict(plain)
    wide["y"] = ActQuant("y", np.asarray(merged["y"].channel_absmax, np.float64), axis=1, method="max")
    tried = {"max": plain, "per-channel": wide}
    options = QuantOptions(per_channel=True)
    plans = {k: make_plan(model, acts, options) for k, acts in tried.items()}
    assert np.ndim(plans["per-channel"].calibrated_acts["y"].threshold) == 1
    assert not same_layout(plans["max"], plans["per-channel"])
    got = CandidateScorer(model, samples[:3], options).cosines(tried)
    for name, plan in plans.items():
        calibrated = build_calibrated_model(model, plan)
        alone = mean_output_cosine([run_model(model, s) for s in samples[:3]],
                                   [run_model(calibrated, s) for s in samples[:3]], ["y"])
        assert got[name] == pytest.approx(alone, abs=1e-9)
    assert got["per-channel"] != got["max"]


