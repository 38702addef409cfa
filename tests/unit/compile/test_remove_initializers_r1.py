"""R1 m9: onnxruntime opening a program prints "Removing initializer … It is not used by any node" for
every initializer nothing reads. The `_quantized_removed_model.bc` carries none: neither the removed
nodes' constants nor those its `.bc` carried unread; initializers read inside subgraphs stay."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.program import drop_unused_initializers, read_names
from engine.compile.remove_nodes import remove_nodes
from engine.pipeline import Engine
from engine.runtime import load
from engine.tools.verifier import verify
from tests.support.models import Builder


def program_with_unread_initializers() -> onnx.ModelProto:
    """x → Quantize → Dequantize → If(flag: + k, else: − k) → y, plus two initializers nothing reads."""
    then = helper.make_graph([helper.make_node("Add", ["xd", "k"], ["t"], name="then_add")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3, 4, 4])])
    other = helper.make_graph([helper.make_node("Sub", ["xd", "k"], ["e"], name="else_sub")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3, 4, 4])])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quantize"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dequantize"),
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(np.array(True), "flag"),
             numpy_helper.from_array(np.array(1.5, np.float32), "k"),  # read only inside the branches
             numpy_helper.from_array(np.array(0.1, np.float32), "unread_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "unread_zero_point")]
    graph = helper.make_graph(nodes, "unread", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _unread(model: onnx.ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if t.name not in read_names(model.graph)]


def _ort_warnings(path) -> list[str]:
    """What onnxruntime (default log level) says about unused initializers when it opens `path`."""
    code = ("import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if "Removing initializer" in line]


def test_drop_unused_initializers_keeps_what_subgraphs_read():
    model = program_with_unread_initializers()
    assert drop_unused_initializers(model) == ["unread_scale", "unread_zero_point"]
    assert {t.name for t in model.graph.initializer} == {"s", "z", "flag", "k"}
    assert drop_unused_initializers(model) == []


@pytest.mark.parametrize("types", [["Softmax"], ["Quantize"]])  # nothing found / one node removed
def test_the_removed_program_opens_without_warnings_and_computes_the_same(types, tmp_path):
    model = program_with_unread_initializers()
    out, removed = remove_nodes(model, types, [])
    assert len(removed) == (types == ["Quantize"])
    assert _unread(out) == []
    onnx.save(model, str(tmp_path / "a.bc"))
    onnx.save(out, str(tmp_path / "b.bc"))
    assert len(_ort_warnings(tmp_path / "a.bc")) == 2 and _ort_warnings(tmp_path / "b.bc") == []
    x = np.random.default_rng(0).uniform(-5, 5, (1, 3, 4, 4)).astype(np.float32)
    a, b = load(tmp_path / "a.bc"), load(tmp_path / "b.bc")
    fed = np.clip(np.rint(x / np.float32(0.05)) + 128, 0, 255).astype(np.uint8) if removed else x
    np.testing.assert_array_equal(b.run({"x": fed})["y"], a.run({"x": x})["y"])


CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tt
  remove_node_type: Softmax
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x8x8
calibration_parameters:
  calibration_type: skip
"""


def test_the_pipeline_writes_a_removed_bc_with_every_initializer_read(project):
    # Conv → Relu → Transpose: the quantize stage's .bc carries the Relu output's scale / zero point unread
    # (the Relu is a Clip on the Conv's codes and the Dequantize reads the Transpose's); see the report of R1 m9
    b = Builder("relu_transpose_tail", seed=1)
    relu = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 4)])
    b.output(b.op("Transpose", [relu], out="y", perm=[0, 2, 3, 1]))
    project.model(b.build())
    report = Engine().run(project.config(CONFIG))
    assert report.ok, [p.render() for p in report.problems]
    out = project.root / "model_output"
    removed = onnx.load(str(out / "tt_quantized_removed_model.bc"))
    assert _unread(removed) == []
    assert _unread(onnx.load(str(out / "tt_quantized_model.bc"))) == []  # the quantize stage's .bc too
    assert _ort_warnings(out / "tt_quantized_model.bc") == []
    code, lines = verify([str(out / "tt_quantized_model.bc"), str(out / "tt_quantized_removed_model.bc")])
    assert code == 0 and lines[-1] == "consistency check passed: outputs are bit-identical"
