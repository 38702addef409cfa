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
