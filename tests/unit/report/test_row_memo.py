"""The report's row memo (issue #8): a row is read from the memo only when its value is computed exactly as
before — same reference (model, sample, tensors) and the same graph above it, constants included
(`tensor_digests`) — and every table compared through the memo equals one compared afresh."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper

import engine.similarity as similarity
from engine.pipeline import Engine
from engine.quantize.planner import QuantOptions, make_plan
from engine.similarity import Reference, RowMemo, compare, compared_tensors, run_model, tensor_digests
from engine.stages.calibrate import load_thresholds
from tests.pipeline.test_incremental import CONFIG, write_samples


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(optimized model, calibrated model, first sample, plan) of the tiny Conv → Relu → GlobalAveragePool project."""
    import numpy as np

    from tests.conftest import conv_relu_model

    root = tmp_path_factory.mktemp("rows")
    onnx.save(conv_relu_model(), str(root / "model.onnx"))
    write_samples(root / "cal")
    (root / "config.yaml").write_text(CONFIG)
    run = Engine().run(root / "config.yaml", until="calibrate")
    assert run.ok, [p.render() for p in run.problems]
    cache = root / "model_output" / ".hb_cache"
    optimized = onnx.load(str(cache / "optimize" / run.stage("optimize").key / "model.onnx"))
    entry = cache / "calibrate" / run.stage("calibrate").key
    with np.load(entry / "first_sample.npz") as z:
        sample = {k: z[k] for k in z.files}
    plan = make_plan(optimized, load_thresholds(entry / "thresholds.json"), QuantOptions.from_config(run.config))
    return optimized, onnx.load(str(entry / "model.onnx")), sample, plan


def rescaled(model: onnx.ModelProto, scale: str, factor: float) -> onnx.ModelProto:
    """A copy of `model` with the initializer `scale` (a calibration node's scale) times `factor`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    t = next(t for t in out.graph.initializer if t.name == scale)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, scale))
    return out


def fetched(monkeypatch) -> list:
    """The `fetch` argument of every run_model call from now on."""
    calls: list = []
    real = similarity.run_model

    def spy(*args, **kwargs):
        calls.append(sorted(kwargs.get("fetch") or []))
        return real(*args, **kwargs)

    monkeypatch.setattr(similarity, "run_model", spy)
    return calls


def test_digests_change_below_a_changed_constant_only(calibrated):
    _, model, _, _ = calibrated
    before = tensor_digests(model)
    after = tensor_digests(rescaled(model, "relu_out_HzCalibration_scale", 1.25))
    assert before == tensor_digests(model)  # a function of the model alone
    changed = {t for t in before if before[t] != after[t]}
    assert changed == {"relu_out_HzCalibration_scale", "relu_out_HzCalibration_quantized",
                       "relu_out_HzCalibration_output", "output_HzCalibration_input", "output_HzCalibration_quantized",
                       "output"}
    assert before["bn_out"] == after["bn_out"] and before["relu_out"] == after["relu_out"]  # above the moved scale


def test_rows_above_a_moved_threshold_come_from_the_memo_and_all_equal_a_fresh_comparison(calibrated, monkeypatch):
    optimized, model, sample, plan = calibrated
    tensors = compared_tensors(optimized, plan)
    reference = Reference(run_model(optimized, sample, tensors), key="tiny/first-sample")
    memo = RowMemo()
    calls = fetched(monkeypatch)
    first = compare(optimized, model, sample, plan, reference, memo)
    assert len(calls) == 1 and len(calls[0]) >= 4  # every row's tensor the first time

    moved = rescaled(model, "relu_out_HzCalibration_scale", 1.25)
    second = compare(optimized, moved, sample, plan, reference, memo)
    assert calls[1] == ["output", "relu_out_HzCalibration_output"]  # the rows at and below the moved scale
    fresh = compare(optimized, moved, sample, plan, Reference(reference))  # no key: no memo
    assert second == fresh
    by_node = {r.node: r for r in second.nodes}
    assert by_node["HZ_PREPROCESS_FOR_data"].calibrated_cosine == first.nodes[1].calibrated_cosine
    assert [r.calibrated_cosine for r in second.nodes] != [r.calibrated_cosine for r in first.nodes]  # it moved

    calls.clear()
    assert compare(optimized, moved, sample, plan, reference, memo) == fresh
    assert calls == []  # nothing left to compute: the calibrated model did not run


def test_another_reference_is_not_served_from_the_memo(calibrated):
    """Rows are kept per reference key: another sample (or float model) gives its own numbers."""
    import numpy as np

    optimized, model, sample, plan = calibrated
    tensors = compared_tensors(optimized, plan)
    memo = RowMemo()
    compare(optimized, model, sample, plan, Reference(run_model(optimized, sample, tensors), key="a"), memo)
    other = {k: (v[..., ::-1] * 0.5).copy() for k, v in sample.items()}
    got = compare(optimized, model, other, plan, Reference(run_model(optimized, other, tensors), key="b"), memo)
    assert got == compare(optimized, model, other, plan)
    assert not np.isclose(got.outputs[0].l1, compare(optimized, model, sample, plan).outputs[0].l1)
