"""The batched-session probe is allowed to fail; onnxruntime must not print its failure on the console."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.calibration.observer import Observer


def transposed_gemm() -> onnx.ModelProto:
    """x [16, 1] read through Gemm transA: a batch stacked on axis 0 does not run."""
    rng = np.random.default_rng(0)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["h"], name="gemm", transA=1),
                           helper.make_node("Relu", ["h"], ["y"], name="relu")], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
                           numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_failed_batch_probe_prints_nothing(capfd):
    rng = np.random.default_rng(1)
    observer = Observer(transposed_gemm(), ["h", "y"], batch=4)
    stats = list(observer.observe({"x": rng.standard_normal((16, 1)).astype(np.float32)} for _ in range(4)))
    assert len(stats) == 4
    assert any("batching off" in n for n in observer.notes)  # the probe ran and failed
    out, err = capfd.readouterr()
    assert "onnxruntime" not in out + err
