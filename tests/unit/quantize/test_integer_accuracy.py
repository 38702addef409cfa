"""The `.bc` computes what the ptq model computes: bias corrections are in its int32 biases, and its
float (CPU) convolutions stay float when onnxruntime runs it (engine.runtime.session)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from engine.accuracy import bias
from engine.accuracy.switchable import fake_quant_session
from engine.calibration import merge_samples, observe
from engine.quantize.integer import lower_to_integer
from engine.quantize.planner import Calibration, CorrectedBias, QuantOptions, make_plan, plan_tensors
from engine.quantize.ptq import build_ptq_model
from engine.quantize.search import single_method
from engine.runtime.session import open_session
from engine.similarity import cosine, run_model
from tests.unit.accuracy.acc_models import biased_input_conv, calibrate, outlier_chain, samples


def _outputs(session: ort.InferenceSession, data) -> list[np.ndarray]:
    return [session.run(None, s)[0] for s in data]


def test_bias_corrections_are_in_the_integer_program():
    model = biased_input_conv()
    data = samples(model, 8, offset=4.0)
    _, calibration, plan = calibrate(model, data)
    means = bias.merge_means([bias.channel_means(run_model(model, s, ["x"]), {"x": 1}) for s in data])
    corrected = make_plan(model, Calibration(calibration, bias_corrections=bias.corrections(model, plan, means)))
    assert isinstance(corrected.biases["B"], CorrectedBias)
    held = samples(model, 6, seed=5, offset=4.0)
    reference = [run_model(model, s)["y"] for s in held]

    def channel_shift(outs: list[np.ndarray]) -> float:
        d = np.concatenate([o - r for o, r in zip(outs, reference, strict=True)])
        return float(np.mean(np.abs(d.mean(axis=(0, 2, 3)))))

    bc_before = _outputs(open_session(lower_to_integer(model, plan)), held)
    bc_after = _outputs(open_session(lower_to_integer(model, corrected)), held)
    ptq_after = _outputs(fake_quant_session(build_ptq_model(model, corrected)), held)
    assert channel_shift(bc_after) < 0.2 * channel_shift(bc_before)
    for got, want in zip(bc_after, ptq_after, strict=True):  # the same program: equal up to float rounding
        assert cosine(got, want) > 0.99999


def test_a_cpu_conv_of_the_integer_program_runs_in_float():
    """conv_c reads a channel 400× larger than the others with weights 400× smaller: per-tensor int8
    (what onnxruntime's WeightBiasQuantization would give the float conv) rounds that column to 0."""
    model = outlier_chain(read_outlier=True)
    data = samples(model, 6)
    options = QuantOptions.build(run_on_cpu=["conv_c"])
    calibration = Calibration(single_method(merge_samples(list(observe(model, data, plan_tensors(model, options)))), "max"))
    plan = make_plan(model, calibration, options)
    assert plan.nodes["conv_c"].on == "CPU"
    bc = lower_to_integer(model, plan)
    held = samples(model, 4, seed=3)
    ptq = _outputs(fake_quant_session(build_ptq_model(model, plan)), held)
    ours = _outputs(open_session(bc), held)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    rewritten = _outputs(ort.InferenceSession(bc.SerializeToString(), options, providers=["CPUExecutionProvider"]), held)
    for o, p, r in zip(ours, ptq, rewritten, strict=True):
        assert cosine(o, p) > 0.9999
        assert cosine(r, p) < cosine(o, p) - 1e-3  # the rewrite would have changed the program's values
