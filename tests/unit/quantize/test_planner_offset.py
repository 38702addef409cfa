"""Offset int8 ranges on lookup-table outputs whose table cannot reach one side of zero (OffsetAct)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.accuracy.switchable import fake_quant_session
from engine.quantize import planner
from engine.quantize.calibrated import MAP_KEY, build_calibrated_model
from engine.quantize.integer import lower_to_integer, session_options
from engine.quantize.planner import OffsetAct, make_plan, zero_point_of
from engine.quantize.ptq import build_ptq_model
from engine.similarity import run_model
from tests.support.models import Builder, learnable_affine, multi_io, random_inputs
from tests.unit.quantize.quant_support import max_thresholds, optimized


def _affine_model():
    """PP-LCNet's block: depthwise Conv → affine → HardSwish → 0.7·h − 0.1 → 1×1 Conv → y."""
    return optimized(learnable_affine())


def _table_output(model) -> str:
    """The tensor the last (1×1) Conv reads: the output of the HardSwish-affine table."""
    return [n for n in model.graph.node if n.op_type == "Conv"][-1].input[0]


def _no_offsets(monkeypatch):
    monkeypatch.setattr(planner, "OFFSET_SHARE", -1.0)  # every image counts as "spans the whole range"


def test_affine_hardswish_output_gets_an_offset_range_covering_its_table():
    model = _affine_model()
    t = _table_output(model)
    plan = make_plan(model, max_thresholds(model))
    act = plan.acts[t]
    assert isinstance(act, OffsetAct) and plan.calibrated_acts[t] == act
    threshold = float(act.threshold)  # the calibrated |x| threshold is kept (what the tables show)
    assert act.scale < 0.6 * threshold / 127  # 0.7·hswish − 0.1 ≥ −0.3625: most codes go to the positive side
    lowest = -0.1 - 0.375 * 0.7
    low, high = (-128 - act.zero_point) * act.scale, (127 - act.zero_point) * act.scale
    assert low <= lowest + act.scale / 2 and high >= threshold - act.scale / 2 and low < 0 < high
    assert zero_point_of(act) == act.zero_point < -64


def test_offset_range_brings_the_calibrated_model_closer_to_float(monkeypatch):
    model = _affine_model()
    thresholds = max_thresholds(model)
    feeds = [random_inputs(model, seed) for seed in range(3, 7)]

    t = _table_output(model)

    def errors(plan) -> tuple[float, float]:
        """Mean squared error against float of the table's fake-quantized output, and of the model output."""
        calibrated = build_calibrated_model(model, plan)
        fq = json.loads({p.key: p.value for p in calibrated.metadata_props}[MAP_KEY])[t]
        out = []
        for f in feeds:
            ref, got = run_model(model, f, [t, "y"]), run_model(calibrated, f, [fq, "y"])
            out.append(((got[fq] - ref[t]) ** 2).mean() / (ref[t] ** 2).mean())
            out.append(((got["y"] - ref["y"]) ** 2).mean() / (ref["y"] ** 2).mean())
        return float(np.mean(out[0::2])), float(np.mean(out[1::2]))

    table_with, output_with = errors(make_plan(model, thresholds))
    _no_offsets(monkeypatch)
    symmetric_plan = make_plan(model, thresholds)
    assert not any(isinstance(a, OffsetAct) for a in symmetric_plan.acts.values())
    table_without, output_without = errors(symmetric_plan)
    # the table's own rounding noise drops to ~a third (step × 0.56); what reaches it from the quantized
    # input and conv output does not: measured 0.72× at the table's output, 0.73× at the model's
    assert table_with < 0.8 * table_without, (table_with, table_without)
    assert output_with < 0.85 * output_without, (output_with, output_without)


def test_integer_program_keeps_the_offset_the_ptq_model_computes():
    model = _affine_model()
    plan = make_plan(model, max_thresholds(model))
    t = _table_output(model)
    assert zero_point_of(plan.acts[t]) != 0
    import onnxruntime as ort

    bc = lower_to_integer(model, plan)
    session = ort.InferenceSession(bc.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    ptq = fake_quant_session(build_ptq_model(model, plan))
    step = float(plan.acts["y"].scale) if "y" in plan.acts else 0.0
    for seed in range(3):
        feed = random_inputs(model, seed)
        got = session.run(["y"], feed)[0]
        want = ptq.run(["y"], feed)[0]
        # the `.bc` accumulates in int32 where the ptq model adds in float32: within one output step
        assert np.max(np.abs(got - want)) <= max(step, 1e-4 * float(np.max(np.abs(want)))) * 1.01


def test_model_outputs_and_tied_tensors_keep_symmetric_ranges():
    model = optimized(multi_io())  # its Sigmoid output 'score' is a model output
    plan = make_plan(model, max_thresholds(model))
    assert "score" in plan.acts and zero_point_of(plan.acts["score"]) == 0

    b = Builder("tied")
    x = b.input("x", [1, 4, 6, 6])
    gate = b.op("Sigmoid", [b.conv(x, 4, 4)])
    joined = b.op("Concat", [gate, b.conv(x, 4, 4)], axis=1)  # one scale for both inputs of the Concat
    b.output(b.conv(joined, 8, 4, k=1, out="y"))
    tied = optimized(b.build())
    plan = make_plan(tied, max_thresholds(tied))
    assert all(zero_point_of(a) == 0 for a in plan.acts.values())


@pytest.mark.parametrize("share", [0.0])
def test_no_offset_when_the_table_spans_both_sides(share, monkeypatch):
    """OFFSET_SHARE 0: an image must be empty to count as narrow, so nothing gets an offset."""
    monkeypatch.setattr(planner, "OFFSET_SHARE", share)
    model = _affine_model()
    plan = make_plan(model, max_thresholds(model))
    assert all(zero_point_of(a) == 0 for a in plan.acts.values())


def _conv_output(model) -> str:
    """The first Conv's output: the input of the HardSwish-affine table."""
    return [n for n in model.graph.node if n.op_type == "Conv"][0].output[0]


def test_a_conv_output_read_only_by_a_hardswish_table_gets_a_range_from_minus_3(monkeypatch):
    """HardSwish is 0 for every x <= -3: the codes below -3 all make one table entry, so the range
    starts there and 255 codes cover [-3, T] instead of [-T, T] (NARROW_INPUTS, off by default)."""
    assert planner.NARROW_INPUTS is False
    model = _affine_model()
    assert zero_point_of(make_plan(model, max_thresholds(model)).acts[_conv_output(model)]) == 0
    monkeypatch.setattr(planner, "NARROW_INPUTS", True)
    t = _conv_output(model)
    plan = make_plan(model, max_thresholds(model))
    act = plan.acts[t]
    assert isinstance(act, OffsetAct) and plan.calibrated_acts[t] == act
    threshold = float(act.threshold)
    low, high = (-128 - act.zero_point) * act.scale, (127 - act.zero_point) * act.scale
    assert -3.0 - 2 * act.scale <= low <= -3.0  # covers -3 (the table's last change), not much more
    assert high == pytest.approx(threshold, abs=act.scale)
    assert act.scale < 0.9 * threshold / 127 and act.scale == pytest.approx((threshold + 3.0) / 255, rel=0.02)


def test_the_table_reads_its_narrowed_input_with_less_error(monkeypatch):
    """Where the table changes (x > -3), the conv output's rounding error falls with the step."""
    model = _affine_model()
    thresholds = max_thresholds(model)
    t = _conv_output(model)
    feeds = [random_inputs(model, seed) for seed in range(3, 7)]

    def error(plan) -> float:
        """Mean squared error against float of the fake-quantized conv output, on the values above -3."""
        calibrated = build_calibrated_model(model, plan)
        fq = json.loads({p.key: p.value for p in calibrated.metadata_props}[MAP_KEY])[t]
        errs = []
        for f in feeds:
            ref, got = run_model(calibrated, f, [t])[t], run_model(calibrated, f, [fq])[fq]
            live = ref > -3.0
            errs.append(float(((got[live] - ref[live]) ** 2).mean()))
        return float(np.mean(errs))

    symmetric = make_plan(model, thresholds)
    monkeypatch.setattr(planner, "NARROW_INPUTS", True)
    narrowed = make_plan(model, thresholds)
    assert zero_point_of(symmetric.acts[t]) == 0 and zero_point_of(narrowed.acts[t]) != 0
    ratio = (narrowed.acts[t].scale / symmetric.acts[t].scale) ** 2  # rounding noise goes with step²: 0.76 here
    assert error(narrowed) < 1.1 * ratio * error(symmetric) and ratio < 0.8, (error(narrowed), error(symmetric))


def test_a_table_input_another_op_reads_too_keeps_its_symmetric_range(monkeypatch):
    monkeypatch.setattr(planner, "NARROW_INPUTS", True)
    b = Builder("shared_input")
    x = b.input("x", [1, 4, 6, 6])
    c = b.conv(x, 4, 4)
    h = b.op("HardSwish", [c])
    b.output(b.conv(b.op("Add", [h, b.conv(c, 4, 4)]), 4, 4, k=1, out="y"))  # c is read by a Conv as well
    model = optimized(b.build())
    conv_out = [n for n in model.graph.node if n.op_type == "Conv"][0].output[0]
    plan = make_plan(model, max_thresholds(model))
    assert conv_out in plan.acts and zero_point_of(plan.acts[conv_out]) == 0


def test_integer_program_reads_the_narrowed_conv_output_as_the_ptq_model_does(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(planner, "NARROW_INPUTS", True)
    model = _affine_model()
    plan = make_plan(model, max_thresholds(model))
    assert zero_point_of(plan.acts[_conv_output(model)]) != 0
    bc = lower_to_integer(model, plan)
    session = ort.InferenceSession(bc.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    ptq = fake_quant_session(build_ptq_model(model, plan))
    for seed in range(3):
        feed = random_inputs(model, seed)
        got, want = session.run(["y"], feed)[0], ptq.run(["y"], feed)[0]
        assert np.max(np.abs(got - want)) <= 1e-4 * float(np.max(np.abs(want))) + 1e-5 or \
            np.mean(np.abs(got - want) > 1e-3 * float(np.max(np.abs(want)))) < 0.01
