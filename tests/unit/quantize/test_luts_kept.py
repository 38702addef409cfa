"""Lookup-table sessions kept across runs (issue #8: the quantize stage built one on every run). A kept
session must answer exactly what a session built for the one question answers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.quantize import luts
from engine.quantize.lower.builder import MS
from engine.quantize.lower.encoding import Encoding


def constant_kernel_table(op: str, enc_in: Encoding, enc_out: Encoding, **attrs) -> np.ndarray:
    """onnxruntime's `op` with the encodings as constant initializers, as the table was asked for before."""
    params = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("x_scale", enc_in.scale_array()), ("x_zero_point", enc_in.zero_point_array()),
        ("y_scale", enc_out.scale_array()), ("y_zero_point", enc_out.zero_point_array()))]
    node = helper.make_node(op, ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"], ["y"], domain=MS, **attrs)
    graph = helper.make_graph([node], "lookup", [helper.make_tensor_value_info("x", TensorProto.UINT8, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])], params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.arange(256, dtype=np.uint8)})[0]


@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1})])
def test_one_kept_kernel_session_answers_every_encoding_as_a_constant_one_does(op, attrs, monkeypatch):
    luts._kernels.clear()
    opened = []
    from engine.runtime import session as session_mod

    real = session_mod.open_session
    monkeypatch.setattr(session_mod, "open_session", lambda *a, **k: opened.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    tables = set()
    for _ in range(12):
        enc_in = Encoding("uint8", float(rng.uniform(0.005, 0.2)), int(rng.integers(100, 156)))
        enc_out = Encoding("uint8", float(rng.uniform(0.002, 0.02)), int(rng.integers(0, 40)))
        got = luts.onnxruntime_table(op, enc_in, enc_out, **attrs)
        np.testing.assert_array_equal(got, constant_kernel_table(op, enc_in, enc_out, **attrs))
        tables.add(got.tobytes())
    assert len(opened) == 1 and len(tables) == 12  # one session; the encodings did change the tables


def test_float_functions_are_kept_by_content():
    luts._functions.clear()
    node = helper.make_node("Mul", ["x", "k"], ["y"], name="Mul_0")

    def function(k: float):
        return luts.elementwise_function([node], "x", "y", [numpy_helper.from_array(np.float32(k), "k")],
                                         [helper.make_opsetid("", 17)])

    double, again, triple = function(2.0), function(2.0), function(3.0)
    assert double is again and triple is not double  # another constant is another function
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(double(x), 2 * x)
    np.testing.assert_array_equal(triple(x), np.float32(3) * x)
