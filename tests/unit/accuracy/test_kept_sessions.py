"""Kept sessions (`sessions.KeptSessions`): a ptq model whose thresholds moved runs in the session of the
previous one, its changed initializers fed, and gives that model's own session's outputs bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.accuracy import sessions
from engine.accuracy.sessions import KeptSessions, layout_key, quiet_session, run_outputs
from engine.quantize.planner import Calibration, make_plan
from engine.quantize.ptq import build_ptq_model
from engine.quantize.search import single_method
from engine.runtime.session import qdq_session
from tests.unit.accuracy.acc_models import calibrate, detector_head, outlier_chain, samples


def ptq_bytes(model: onnx.ModelProto, merged, method: str, percentile: float = 1.0) -> bytes:
    calibration = Calibration(single_method(merged, method, max_percentile=percentile))
    return build_ptq_model(model, make_plan(model, calibration)).SerializeToString()


@pytest.mark.parametrize("first_lifted", [True, False])
@pytest.mark.parametrize("make", [outlier_chain, detector_head])
def test_a_moved_threshold_reuses_the_session_and_gives_the_same_bits(make, first_lifted, monkeypatch):
    """`first_lifted` False: the first session takes nothing as inputs, the next what differs (a coarsened
    weight scale's way)."""
    if not first_lifted:
        monkeypatch.setattr(sessions, "_threshold_operands", lambda model: set())
    model = make()
    data = samples(model, 3)
    merged, _, _ = calibrate(model, data)
    # max, then three other threshold sets of the same layout: the activation scales and int32 biases move
    versions = [ptq_bytes(model, merged, "max"), ptq_bytes(model, merged, "max", 0.999),
                ptq_bytes(model, merged, "kl"), ptq_bytes(model, merged, "max", 0.99)]
    assert len({layout_key(onnx.load_from_string(v)) for v in versions}) == 1
    assert len(set(versions)) == 4
    kept = KeptSessions()
    names = [o.name for o in model.graph.output]
    for k, data_k in enumerate(versions):
        fed = kept.session(data_k)
        own = qdq_session(data_k)
        for sample in data:
            got, want = run_outputs(fed, sample, names), run_outputs(own, sample, names)
            assert all(got[n].tobytes() == want[n].tobytes() for n in names), (k, make.__name__)
    # one session whose inputs include every small Q/DQ operand; with none taken at first: the first model's
    # plain session, then one taking what differs (again when a later model changes one more)
    assert kept.built == 1 if first_lifted else 2 <= kept.built <= 3
    built = kept.built
    for data_k in versions:
        assert kept.session(data_k).feeds
    assert kept.built == built
    lifted = next(iter(kept._kept._entries.values())).lifted
    first = onnx.load_from_string(versions[0])
    operands = {n for node in first.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                for n in node.input}
    assert lifted and lifted <= operands  # only what Q/DQ nodes read
    if first_lifted:  # and no weight: onnxruntime keeps folding the weights' pairs
        weights = {node.input[0] for node in first.graph.node if node.op_type == "DequantizeLinear"
                   and any(t.name == node.input[0] and t.data_type == onnx.TensorProto.INT8 for t in first.graph.initializer)}
        assert weights and not lifted & weights


def test_another_layout_or_thread_count_gets_its_own_session():
    model = outlier_chain()
    merged, _, _ = calibrate(model, samples(model, 2))
    kept = KeptSessions()
    kept.session(ptq_bytes(model, merged, "max"))
    kept.session(ptq_bytes(model, merged, "max"), threads=1)
    other = outlier_chain(seed=1)
    merged_other, _, _ = calibrate(other, samples(other, 2))
    assert kept.built == 2
    kept.session(ptq_bytes(other, merged_other, "max"))  # other weights: every weight initializer differs ...
    assert kept.built == 3  # ... but the layout is the same, so it is the session of the first, lifting them
    first = kept.session(ptq_bytes(model, merged, "max"))
    assert kept.built == 3 and first.feeds  # the first model again: fed in that session, no new build


def test_quiet_session_keeps_small_models_given_as_bytes(monkeypatch):
    model = outlier_chain()
    merged, _, _ = calibrate(model, samples(model, 2))
    kept = KeptSessions()
    monkeypatch.setattr(sessions, "KEPT", kept)
    quiet_session(ptq_bytes(model, merged, "max"))
    quiet_session(onnx.load_from_string(ptq_bytes(model, merged, "kl")))  # a ModelProto: its own session
    assert kept.built == 1
    monkeypatch.setattr(sessions, "KEPT_MODEL_BYTES", 16)
    quiet_session(ptq_bytes(model, merged, "kl"))  # larger than the bound: its own session, not kept
    assert kept.built == 1
    fed = sessions.FedSession(qdq_session(ptq_bytes(model, merged, "max")), {})
    assert [i.name for i in fed.get_inputs()] == [i.name for i in model.graph.input]
    assert np.isfinite(run_outputs(fed, samples(model, 1)[0])[model.graph.output[0].name]).all()


def test_only_what_quantization_nodes_read_is_fed():
    """A model that differs in a constant no Q/DQ node reads (a float weight) gets a plain session."""
    from onnx import numpy_helper

    model = outlier_chain()
    merged, _, _ = calibrate(model, samples(model, 2))
    first = onnx.load_from_string(ptq_bytes(model, merged, "max"))
    operands = {n for node in first.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                for n in node.input}
    plain = [t for t in first.graph.initializer if t.name not in operands and t.data_type == onnx.TensorProto.FLOAT]
    if not plain:  # the ptq model has no such constant: add one in front of the output
        extra = numpy_helper.from_array(np.ones(1, np.float32), "one")
        first.graph.initializer.append(extra)
        out = first.graph.output[0].name
        for node in first.graph.node:
            node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
        first.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_pre", "one"], [out], name="times_one"))
        plain = [extra]
    second = onnx.ModelProto()
    second.CopyFrom(first)
    t = next(x for x in second.graph.initializer if x.name == plain[0].name)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.5), t.name))
    kept = KeptSessions()
    kept.session(first.SerializeToString())
    fed = kept.session(second.SerializeToString())
    assert kept.built == 2 and not fed.feeds  # its own plain session: nothing fed
    sample = samples(model, 1)[0]
    want = run_outputs(qdq_session(second.SerializeToString()), sample)
    got = run_outputs(fed, sample)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
