"""The planner keeps what a plan reads of the model alone (issue #8: a calibrate stage makes ~7 plans of
one model, and ~2/3 of each was shape inference, the graph view and the registry's rules). A kept
analysis must give exactly the plan a fresh one gives, follow the model's bytes, and never be changed
by a plan that moves nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import engine.quantize.planner as planner
from engine.quantize.planner import QuantOptions, make_plan, plan_tensors, weight_scales
from tests.unit.quantize.quant_support import max_thresholds
from tests.unit.quantize.test_planner import head, residual


@pytest.fixture(autouse=True)
def empty_memos():
    planner._facts_memo.clear()
    planner._prepared_memo.clear()
    yield
    planner._facts_memo.clear()
    planner._prepared_memo.clear()


def inferences(monkeypatch) -> list[onnx.ModelProto]:
    """The models shape inference runs on from now on (one per analysis the planner builds)."""
    seen: list[onnx.ModelProto] = []
    real = planner._infer

    def counting(model):
        seen.append(model)
        return real(model)

    monkeypatch.setattr(planner, "_infer", counting)
    return seen


def same_plan(a, b) -> bool:
    def acts(p):
        return {t: (q.threshold, q.bits, q.axis, q.method, float(q.scale)) for t, q in p.acts.items()}

    return (acts(a) == acts(b) and a.nodes == b.nodes and a.notes == b.notes and a.shared == b.shared
            and list(a.weights) == list(b.weights)
            and all(np.array_equal(a.weights[w].scale, b.weights[w].scale) for w in a.weights)
            and all(np.array_equal(a.biases[k].scale, b.biases[k].scale) for k in a.biases))


def test_plans_of_one_model_share_one_analysis_and_equal_fresh_ones(monkeypatch):
    model = residual()
    thresholds = max_thresholds(model)
    planner._facts_memo.clear()
    planner._prepared_memo.clear()
    seen = inferences(monkeypatch)
    first = make_plan(model, thresholds)
    again = make_plan(onnx.load_from_string(model.SerializeToString()), {t: 2 * v for t, v in thresholds.items()})
    assert plan_tensors(model) == ["x", "Relu_1_y", "Add_3_y", "y"]
    assert len(seen) == 1  # one analysis for the three calls (the second is another object, same bytes)
    planner._facts_memo.clear()
    planner._prepared_memo.clear()
    assert same_plan(first, make_plan(model, thresholds))  # a kept analysis plans what a fresh one does
    assert len(seen) == 2
    assert again.acts["y"].threshold == 2 * first.acts["y"].threshold


def test_options_are_keyed_by_value(monkeypatch):
    model = residual()
    seen = inferences(monkeypatch)
    thresholds = max_thresholds(model)  # plan_tensors: the model's first analysis
    cpu = make_plan(model, thresholds, QuantOptions.build(run_on_cpu=["Relu_4"]))
    bpu = make_plan(model, thresholds, QuantOptions())
    assert cpu.nodes["Relu_4"].on == "CPU" and bpu.nodes["Relu_4"].on == "BPU"
    make_plan(model, thresholds, QuantOptions.build(run_on_cpu=["Relu_4"]))  # equal options, another object
    assert len(seen) == 1  # the graph facts are shared by every option set
    assert len(planner._prepared_memo) == 2


def test_a_model_edited_in_place_is_planned_as_it_is_now():
    model = residual()
    thresholds = max_thresholds(model)
    before = make_plan(model, thresholds)
    w = next(t for t in model.graph.initializer if t.name == before.nodes["Conv_0"].weight)
    tripled = 3 * onnx.numpy_helper.to_array(w)
    w.CopyFrom(onnx.numpy_helper.from_array(tripled, w.name))
    after = make_plan(model, thresholds)
    np.testing.assert_array_equal(after.weights[w.name].scale, weight_scales(tripled, 0))
    assert not np.array_equal(after.weights[w.name].scale, before.weights[w.name].scale)


def test_a_plan_that_moves_an_output_concat_leaves_the_kept_analysis_as_it_was():
    model = head()
    thresholds = max_thresholds(model)
    split = make_plan(model, {**thresholds, "Conv_0_y": 640.0, "Sigmoid_2_y": 1.0})
    assert split.nodes["Concat_3"].on == "CPU" and "y" not in split.acts
    joined = make_plan(model, {**thresholds, "Conv_0_y": 6.0, "Sigmoid_2_y": 1.0})
    assert joined.nodes["Concat_3"].on == "BPU" and joined.acts["Sigmoid_2_y"].threshold == 6.0
    assert not any("very different ranges" in n for n in joined.notes)  # notes are the plan's own
    kept = next(iter(planner._prepared_memo._entries.values())).analysis
    assert kept.unit_of["Concat_3"].on == "BPU" and kept.unit_of["Concat_3"].acts


def test_kept_weight_scales_are_read_only():
    model = residual()
    plan = make_plan(model, max_thresholds(model))
    scale = plan.weights[plan.nodes["Conv_0"].weight].scale
    with pytest.raises(ValueError):
        scale[0] = 1.0  # shared by every later plan of the model: no caller may change it
