"""Tensor types of a program are kept per program content: a compiler_parameters edit compiles the
same program again and must not load it in onnxruntime again just to read its types."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engine.compile import program


def relu_program(width: int) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], "p",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                          [numpy_helper.from_array(np.ones(width, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_types_are_read_once_per_program_and_kept_apart(monkeypatch):
    built = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    program._types_memo.clear()
    first = program.tensor_types(relu_program(4))
    again = program.tensor_types(relu_program(4))
    assert len(built) == 1 and again == first and first["s"].shape == (1, 4)
    again["s"] = None  # the caller's copy: the memo is not touched
    assert program.tensor_types(relu_program(4))["s"].shape == (1, 4)
    other = program.tensor_types(relu_program(6))
    assert len(built) == 2 and other["s"].shape == (1, 6)
