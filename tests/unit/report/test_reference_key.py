"""The report stage's kept float reference is keyed by the tensors asked for too (review 2, mutant R1):
the compared-tensor set follows the plan (a run_on_cpu or node_info edit changes it, the optimized
model and the sample stay), and a reference kept for fewer tensors would lack the new ones ("compare:
the float reference lacks tensor(s)") or, for other ones, hold the wrong tensors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.pipeline import Engine, StageContext
from engine.similarity import run_model
from engine.stages.report import float_reference
from tests.pipeline.test_incremental import CONFIG, write_samples
from tests.support.models import random_inputs


@pytest.fixture
def report_ctx(project, tmp_path):
    """A report StageContext over a real optimize entry of a warm engine, and the optimized model."""
    write_samples(project.root / "cal")
    engine = Engine()
    run = engine.run(project.config(CONFIG), until="optimize")
    assert run.ok, [p.render() for p in run.problems]
    entry = project.root / "model_output" / ".hb_cache" / "optimize" / run.stage("optimize").key
    stage = next(s for s in engine.stages() if s.name == "report")
    out = tmp_path / "report_entry"
    out.mkdir()
    ctx = StageContext(stage, run.config, out, {"optimize": entry}, engine, "report-key")
    return ctx, onnx.load(str(entry / "model.onnx"))


def intermediate(model: onnx.ModelProto) -> list[str]:
    outputs = {o.name for o in model.graph.output}
    return [o for n in model.graph.node for o in n.output if o and o not in outputs]


def same(reference, model: onnx.ModelProto, sample, tensors: list[str]) -> None:
    """`reference` holds every tensor asked for, with a fresh float run's bits."""
    want = run_model(model, sample, tensors)
    assert set(tensors) <= set(reference), sorted(set(tensors) - set(reference))
    for t in tensors:
        assert np.asarray(reference[t]).tobytes() == want[t].tobytes(), t


def test_more_tensors_on_the_same_model_and_sample_get_a_reference_that_has_them(report_ctx):
    ctx, model = report_ctx
    names = intermediate(model)
    assert len(names) >= 2, names
    sample = random_inputs(model, 0)
    few, more = names[:1], names[:2]
    first = float_reference(ctx, model, sample, few)
    same(first, model, sample, few)
    second = float_reference(ctx, model, sample, more)
    same(second, model, sample, more)
    assert names[1] not in first  # the smaller reference lacks it: serving that one would show
    assert float_reference(ctx, model, sample, few) is first  # kept, and served for its own tensors


def test_other_tensors_get_their_own_reference_not_the_kept_one(report_ctx):
    ctx, model = report_ctx
    names = intermediate(model)
    sample = random_inputs(model, 1)
    for tensors in ([names[0]], [names[1]], [names[0]]):
        same(float_reference(ctx, model, sample, tensors), model, sample, tensors)

