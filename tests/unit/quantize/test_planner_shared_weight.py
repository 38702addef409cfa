"""Two convs reading one weight initializer: every bias scale uses the final (shared) weight scale."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engine.quantize.integer import lower_to_integer, session_options
from engine.quantize.planner import bias_scale, make_plan
from engine.quantize.ptq import build_ptq_model


def _shared_weight_model():
    vi = helper.make_tensor_value_info
    w = np.random.default_rng(0).normal(size=(2, 1, 1, 1)).astype(np.float32)
    w[1] = 1e-9  # a near-zero output channel with a real bias: convB raises that channel's weight scale
    nodes = [helper.make_node("Conv", ["x", "w", "bA"], ["a"], name="convA"),
             helper.make_node("Conv", ["z", "w", "bB"], ["b"], name="convB")]
    g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [1, 1, 4, 4]), vi("z", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [vi("a", TensorProto.FLOAT, [1, 2, 4, 4]), vi("b", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.array([0.1, 1.0], np.float32), "bA"),
                           numpy_helper.from_array(np.array([0.1, 50.0], np.float32), "bB")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def test_every_bias_scale_uses_the_final_shared_weight_scale():
    m = _shared_weight_model()
    plan = make_plan(m, {"x": 10.0, "z": 1e-3, "a": 10.0, "b": 10.0})
    s_w = plan.weights["w"].scale
    for x, b in (("x", "bA"), ("z", "bB")):
        np.testing.assert_array_equal(plan.biases[b].scale, bias_scale(float(plan.acts[x].scale), s_w))


def test_integer_program_agrees_with_the_float_model_on_the_shared_weight():
    m = _shared_weight_model()
    plan = make_plan(m, {"x": 10.0, "z": 1e-3, "a": 10.0, "b": 10.0})
    feeds = {"x": np.full((1, 1, 4, 4), 2.0, np.float32), "z": np.full((1, 1, 4, 4), 1e-4, np.float32)}
    ref, bc, ptq = _run(m, feeds), _run(lower_to_integer(m, plan), feeds), _run(build_ptq_model(m, plan), feeds)
    for got in (bc, ptq):
        np.testing.assert_allclose(got["a"][0, 1], ref["a"][0, 1], atol=0.01)
        np.testing.assert_allclose(got["b"][0, 1], ref["b"][0, 1], atol=0.5)
