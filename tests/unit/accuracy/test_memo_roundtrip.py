"""engine.accuracy.memo: the accuracy steps' result through JSON and back, exactly, and the key
that files it (every input `improve` reads moves it; what it does not read does not)."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.accuracy import AccuracyResult, AccuracySettings, improve
from engine.accuracy import bias as bias_mod
from engine.accuracy.checks import DataCheck
from engine.accuracy.memo import (
    MERGED_FIELDS,
    AccuracyMemo,
    memo_key,
    merged_digest,
    result_from_json,
    result_to_json,
)
from engine.accuracy.mixed import MixedPrecision, Move, Searched
from engine.accuracy.sensitivity import NodeSensitivity, Sensitivity
from engine.quantize.planner import Calibration, QuantOptions, make_plan
from engine.quantize.types import ActQuant
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples

SPECS = [{"name": "x", "shape": [1, 3, 16, 16], "input_type_train": "rgb", "input_layout_train": "NCHW",
          "mean_value": [127.5], "scale_value": [0.0078125]}]
SETTINGS = AccuracySettings(target=0.999, budget=0.5, sensitivity=3, samples=4, check_data=True, bias_correction=True)


@dataclasses.dataclass
class Inputs:
    model: onnx.ModelProto
    calibration: Calibration
    options: QuantOptions
    merged: dict
    samples: list
    corrections: dict

    def key(self, **change) -> str:
        args = {"model": self.model, "calibration": self.calibration, "options": self.options, "merged": self.merged,
                "samples": self.samples, "specs": SPECS, "settings": SETTINGS, "bias_corrections": self.corrections}
        args.update(change)
        return memo_key(**args)


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    """The outlier chain (mixed precision moves a node), max thresholds and measured bias corrections."""
    model = outlier_chain(read_outlier=True)
    data = samples(model, 6)
    merged, calibration, plan = calibrate(model, data)
    layers, _ = bias_mod.layers(model, plan)
    means = bias_mod.merge_means([bias_mod.channel_means(_float_values(model, s, [la.input for la in layers]),
                                                         {la.input: la.channel_axis for la in layers}) for s in data])
    return Inputs(model, calibration, QuantOptions(), merged, data, bias_mod.corrections(model, plan, means))


def _float_values(model, sample, names):
    from engine.similarity import run_model

    return run_model(model, sample, names)


@pytest.fixture(scope="module")
def computed(inputs) -> AccuracyResult:
    return improve(inputs.model, inputs.calibration, inputs.options, inputs.merged, inputs.samples, SPECS, SETTINGS,
                   inputs.corrections)


def roundtrip(result: AccuracyResult) -> AccuracyResult:
    return result_from_json(json.loads(json.dumps(result_to_json(result))))


def assert_same(a, b, where: str = "result") -> None:
    """Equal field by field, with the same types: arrays by dtype, shape and bytes, floats bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, Calibration):
        assert list(a) == list(b), f"{where}: tensors"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k}]")
        assert set(vars(a)) == set(vars(b)), f"{where}: attributes"
        for k in vars(a):
            assert_same(getattr(a, k), getattr(b, k), f"{where}.{k}")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{where}: {a!r} vs {b!r}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_a_computed_result_comes_back_field_by_field(computed):
    # the fixture exercises every part: checks, bias corrections, int16 thresholds, sensitivity, moves
    assert computed.checks and computed.bias_corrected and computed.calibration.bias_corrections
    assert computed.sensitivity is not None and computed.mixed is not None and computed.mixed.moves
    assert computed.calibration.node_info and any(q.method == "max (int16)" for q in computed.calibration.values())
    back = roundtrip(computed)
    assert_same(computed, back)
    assert back.to_json() == computed.to_json()
    assert (back.mixed.sensitivity is back.sensitivity) == (computed.mixed.sensitivity is computed.sensitivity)


def test_the_plan_of_a_read_back_calibration_is_the_same(inputs, computed):
    a = make_plan(inputs.model, computed.calibration, inputs.options)
    b = make_plan(inputs.model, roundtrip(computed).calibration, inputs.options)
    assert {t: (q.bits, np.asarray(q.threshold).tobytes()) for t, q in a.acts.items()} == \
        {t: (q.bits, np.asarray(q.threshold).tobytes()) for t, q in b.acts.items()}
    assert {k: v.value.tobytes() for k, v in a.biases.items() if getattr(v, "value", None) is not None} == \
        {k: v.value.tobytes() for k, v in b.biases.items() if getattr(v, "value", None) is not None}


def awkward_result() -> AccuracyResult:
    """Values JSON alone would change: numpy scalars, per-channel arrays, NaN / inf, tuples, tensor names
    that look like the format's markers, non-string keys, a sensitivity shared by two fields."""
    cal = Calibration({"a": ActQuant("a", 1.5), "$array": ActQuant("$array", np.float32(0.1)),
                       "pc": ActQuant("pc", np.array([0.5, 1e-30, 3.0]), axis=1, method="max"),
                       "w": ActQuant("w", 65504.0, bits=16, method="max (int16)")},
                      {"n1": {"OutputType": "int16"}, "n2": {"ON": "CPU", "InputType1": "int16"}},
                      {"b": np.array([0.1, -2.5e-8, np.float32(np.pi)], np.float32)})
    rows = [NodeSensitivity("conv+relu", "Conv", "t", 0.25, None, float("nan"), 1e-310, ("conv", "relu")),
            NodeSensitivity("x", "input", "x", None, None, None, 0.0)]
    sens = Sensitivity(rows, 0.9123456789012345, 1, 0.123456789, 2, ["ranked on the centre 8x8 crop"])
    mixed = MixedPrecision(0.99, 0.5, float("inf"), [Move("conv+relu", ("conv", "relu"), "int16", 0.1, 1.25, "why")],
                           {"relu": {"OutputType": "int16"}}, {"t": 3.0000000000000004}, 3, False, 7, 1.5, sens,
                           None, ["stops"])
    return AccuracyResult(cal, [DataCheck("x", "channels swapped", 0.6931471805599453, float("nan"), False)], sens,
                          mixed, 2, 1, np.float64(0.987654321), ["note", "$dict"])


def test_awkward_values_come_back_exactly():
    result = awkward_result()
    back = roundtrip(result)
    assert_same(result, back)
    assert back.mixed.sensitivity is back.sensitivity
    assert isinstance(back.calibration["$array"].threshold, np.float32)
    assert back.calibration["pc"].threshold.dtype == np.float64 and math.isnan(back.checks[0].entropy_variant)


@pytest.mark.parametrize("damage", [
    lambda d: {**d, "memo_version": 0},
    lambda d: {k: v for k, v in d.items() if k != "result"},
    lambda d: {**d, "result": {**d["result"], "$dataclass": "os.system"}},
    lambda d: {**d, "result": {**d["result"], "fields": {k: v for k, v in d["result"]["fields"].items()
                                                          if k != "notes"}}},
    lambda d: {**d, "result": {"$array": "<f8", "shape": [2], "data": "AAAA"}},
    lambda d: {**d, "result": {"$ref": 5}},
    lambda d: {**d, "result": {"$oops": 1}},
    lambda d: [d],
], ids=["version", "no result", "unknown class", "missing field", "bad array", "bad ref", "unknown marker", "list"])
def test_a_damaged_memo_is_refused(damage):
    data = json.loads(json.dumps(result_to_json(awkward_result())))
    with pytest.raises(ValueError):
        result_from_json(damage(data))


def test_a_value_that_cannot_be_written_exactly_is_not_memoised(tmp_path):
    result = awkward_result()
    result.notes.append(object())
    memo = AccuracyMemo(tmp_path, "f" * 64)
    memo.save("k" * 64, result)
    assert list(tmp_path.iterdir()) == [] and memo.load("k" * 64) is None


def test_the_store_refuses_corrupt_and_foreign_files_and_keeps_the_latest(tmp_path, computed, monkeypatch):
    import engine.accuracy.memo as memo_mod

    memo = AccuracyMemo(tmp_path, "a" * 64)
    key = "1" * 64
    memo.save(key, computed)
    assert_same(computed, memo.load(key))
    assert memo.load("1" * 32 + "2" * 32) is None  # same file name, another key written inside
    memo.path(key).write_text(memo.path(key).read_text()[:-40])
    assert memo.load(key) is None
    monkeypatch.setattr(memo_mod, "KEEP_PER_OWNER", 2)
    other = AccuracyMemo(tmp_path, "b" * 64)
    other.save("9" * 64, computed)
    for i in range(4):
        memo.save(str(i) * 64, computed)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and sum(n.startswith("a" * 16) for n in names) == 2  # another owner's file stays
    assert memo.path("3" * 64).name in names


# ------------------------------------------------------------------------------------------- the key
def _with_weight_changed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    w = numpy_helper.to_array(out.graph.initializer[0]).copy()
    w.flat[0] += 0.01
    out.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, out.graph.initializer[0].name))
    return out


def _threshold_changed(cal: Calibration) -> Calibration:
    t = next(iter(cal))
    return Calibration({**cal, t: dataclasses.replace(cal[t], threshold=float(np.max(cal[t].threshold)) * 1.001)},
                       cal.node_info, cal.bias_corrections)


def _stats_changed(merged: dict, field: str) -> dict:
    t = next(t for t, s in merged.items() if s.channel_absmax is not None and s.absmax > 0)
    s = merged[t]
    value = {"absmax": s.absmax * 1.01, "hist": s.hist + np.eye(1, s.hist.shape[0], 3)[0],
             "channel_absmax": None if s.channel_absmax is None else s.channel_absmax * 1.01,
             "min": s.min - 1.0, "max": s.max + 1.0, "count": s.count + 1, "absmax_sample": "elsewhere"}[field]
    return {**merged, t: dataclasses.replace(s, **{field: value})}


def _sample_changed(data: list, index: int) -> list:
    out = [dict(s) for s in data]
    out[index] = {"x": out[index]["x"] + np.float32(1e-3)}
    return out


MISSES = {
    "model": lambda i: {"model": _with_weight_changed(i.model)},
    "threshold": lambda i: {"calibration": _threshold_changed(i.calibration)},
    "node_info in": lambda i: {"calibration": Calibration(i.calibration, {"conv_c": {"OutputType": "int16"}})},
    "bias correction in": lambda i: {"calibration": Calibration(i.calibration, {}, {"Bb": np.ones(8, np.float32)})},
    "bias corrections": lambda i: {"bias_corrections": {k: v * 2 for k, v in i.corrections.items()}},
    "stats absmax": lambda i: {"merged": _stats_changed(i.merged, "absmax")},
    "stats hist": lambda i: {"merged": _stats_changed(i.merged, "hist")},
    "stats channel_absmax": lambda i: {"merged": _stats_changed(i.merged, "channel_absmax")},
    "first sample": lambda i: {"samples": _sample_changed(i.samples, 0)},
    "last accuracy sample": lambda i: {"samples": _sample_changed(i.samples, SETTINGS.samples - 1)},
    "spec": lambda i: {"specs": [{**SPECS[0], "input_type_train": "bgr"}]},
    "run_on_cpu": lambda i: {"options": dataclasses.replace(i.options, run_on_cpu=frozenset({"conv_c"}))},
    "per_channel": lambda i: {"options": dataclasses.replace(i.options, per_channel=True)},
    "the search's cosine given": lambda i: {"searched": Searched(0.9999, 4)},
    **{f"settings {f.name}": (lambda i, f=f: {"settings": dataclasses.replace(
        SETTINGS, **{f.name: {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2}[
            type(getattr(SETTINGS, f.name))](getattr(SETTINGS, f.name))})})
       for f in dataclasses.fields(AccuracySettings)},
}


@pytest.mark.parametrize("change", list(MISSES), ids=list(MISSES))
def test_any_input_improve_reads_moves_the_key(inputs, change):
    assert inputs.key(**MISSES[change](inputs)) != inputs.key()


SAME = {
    "stats min / max / count / absmax_sample": lambda i: {"merged": _stats_changed(
        _stats_changed(_stats_changed(_stats_changed(i.merged, "min"), "max"), "count"), "absmax_sample")},
    "a sample past the accuracy samples": lambda i: {"samples": _sample_changed(i.samples, SETTINGS.samples)},
    "the same values in other bytes": lambda i: {"samples": [{"x": np.asfortranarray(s["x"])} for s in i.samples]},
    "the model as bytes": lambda i: {"model": i.model.SerializeToString(deterministic=True)},
}


@pytest.mark.parametrize("change", list(SAME), ids=list(SAME))
def test_what_improve_does_not_read_keeps_the_key(inputs, change):
    assert inputs.key(**SAME[change](inputs)) == inputs.key()


def test_improve_reads_no_other_statistics_than_the_key_holds(inputs):
    """If the accuracy steps start reading another MergedStats field, the key must include it."""
    read: set[str] = set()

    class Recording:
        def __init__(self, stats):
            self._stats = stats

        def __getattr__(self, name):
            read.add(name)
            return getattr(self._stats, name)

    watched = {t: Recording(s) for t, s in inputs.merged.items()}
    plain = improve(inputs.model, inputs.calibration, inputs.options, inputs.merged, inputs.samples, SPECS, SETTINGS,
                    inputs.corrections)
    seen = improve(inputs.model, inputs.calibration, inputs.options, watched, inputs.samples, SPECS, SETTINGS,
                   inputs.corrections)
    assert read and read <= set(MERGED_FIELDS), read - set(MERGED_FIELDS)
    assert seen.calibration.node_info == plain.calibration.node_info  # the proxies changed nothing


def test_merged_digest_follows_values_not_objects(inputs):
    copy = {t: dataclasses.replace(s, hist=s.hist.copy()) for t, s in inputs.merged.items()}
    assert merged_digest(copy) == merged_digest(inputs.merged)


def test_a_result_decided_by_the_searchs_cosine_comes_back(tmp_path, inputs):
    """No ptq run (verified None, no evaluations) is a result like any other: stored and read back."""
    from engine.accuracy.memo import AccuracyMemo

    easy = dataclasses.replace(SETTINGS, target=0.3)
    searched = Searched(0.99999, 4)
    res = improve(inputs.model, inputs.calibration, inputs.options, inputs.merged, inputs.samples, SPECS, easy,
                  searched=searched)
    assert res.mixed.evaluations == 0 and res.verified_cosine is None
    memo, key = AccuracyMemo(tmp_path, "a" * 16), inputs.key(settings=easy, searched=searched)
    memo.save(key, res)
    back = memo.load(key)
    assert back is not None and back.mixed.before == searched.cosine and back.to_json() == res.to_json()
    assert key != inputs.key(settings=easy, searched=Searched(0.99998, 4))
