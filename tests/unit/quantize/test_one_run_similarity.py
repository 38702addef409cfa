"""One run per model for the similarity tables (issue #8): `integer_values` gives the `.bc`'s
intermediates and outputs from one session, `compare` takes the float run its caller already has."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.integer import integer_intermediates, integer_values, lower_to_integer
from engine.quantize.planner import QuantOptions
from engine.runtime.session import open_session
from engine.similarity import compare, compared_tensors, run_model
from tests.support.models import random_inputs, residual_block, silu_block
from tests.unit.quantize.quant_support import optimized, plan_for


def lowered(model: onnx.ModelProto):
    opt = optimized(model)
    plan = plan_for(opt, options=QuantOptions())
    return opt, plan, lower_to_integer(opt, plan)


@pytest.mark.parametrize("block", [residual_block, silu_block])
def test_integer_values_outputs_equal_a_plain_run(block):
    """The outputs read beside every mapped tensor are the bits a plain session gives, and the
    intermediates are `integer_intermediates`' (the report opens one `.bc` session, not two)."""
    opt, plan, bc = lowered(block())
    feeds = random_inputs(opt, 3)
    inter, outs = integer_values(bc, feeds)
    session = open_session(bc)
    plain = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    assert sorted(outs) == sorted(plain) == sorted(o.name for o in bc.graph.output)
    for name, value in plain.items():
        np.testing.assert_array_equal(outs[name], value)
    alone = integer_intermediates(bc, feeds)
    assert sorted(alone) == sorted(inter) and len(inter) >= 3
    for name, value in alone.items():
        np.testing.assert_array_equal(inter[name], value)


def test_compare_with_a_reference_equals_compare_running_the_float_model():
    opt, plan, _ = lowered(residual_block())
    calibrated = build_calibrated_model(opt, plan)
    feeds = random_inputs(opt, 5)
    reference = run_model(opt, feeds, compared_tensors(opt, plan))
    assert {o.name for o in opt.graph.output} <= set(reference)
    given = compare(opt, calibrated, feeds, plan, reference)
    own = compare(opt, calibrated, feeds, plan)
    assert given == own and len(given.nodes) >= 3


def test_compare_uses_the_reference_it_is_given():
    """A reference is not silently re-run: a changed reference changes the cosines."""
    opt, plan, _ = lowered(residual_block())
    calibrated = build_calibrated_model(opt, plan)
    feeds = random_inputs(opt, 5)
    reference = run_model(opt, feeds, compared_tensors(opt, plan))
    out = opt.graph.output[0].name
    noisy = {**reference, out: reference[out] + np.random.default_rng(1).normal(0, 1, reference[out].shape)
             .astype(np.float32)}
    assert compare(opt, calibrated, feeds, plan, noisy).outputs[0].cosine < \
        compare(opt, calibrated, feeds, plan, reference).outputs[0].cosine


def test_compare_refuses_a_reference_without_a_compared_tensor():
    opt, plan, _ = lowered(residual_block())
    feeds = random_inputs(opt, 5)
    reference = run_model(opt, feeds, compared_tensors(opt, plan))
    dropped = compared_tensors(opt, plan)[0]
    with pytest.raises(ValueError, match=dropped):
        compare(opt, build_calibrated_model(opt, plan), feeds, plan,
                {k: v for k, v in reference.items() if k != dropped})


def test_run_model_sessions_do_not_spin_and_give_the_same_values(monkeypatch):
    """Spinning workers only burn CPU between kernels: off in run_model, values as a spinning session's."""
    import onnxruntime as ort

    opt, plan, _ = lowered(silu_block())
    feeds = random_inputs(opt, 2)
    seen: list[str] = []
    real = ort.InferenceSession

    def capturing(data, options=None, *args, **kwargs):
        seen.append(options.get_session_config_entry("session.intra_op.allow_spinning"))
        return real(data, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", capturing)
    quiet = run_model(opt, feeds, compared_tensors(opt, plan), threads=2)
    assert seen == ["0"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 2
    spinning = real(opt.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in opt.graph.output]
    for name, value in zip(names, spinning.run(names, feeds), strict=True):
        np.testing.assert_array_equal(quiet[name], value)
