"""R1 #10: `remove_node_name` of a tail Gemm removes the Dequantize of its output (reference §4: the node
that produces a Dequantize's input may be named), as it does for a tail Conv.

Our `.bc` computes a Gemm as MatMulInteger → Add (int32 bias) → DequantizeLinear, and the MatMulInteger
carries the float node's name: the name designates the Dequantize through the node map, not through the
named program node's own output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.compile.program import NODE_MAP, json_metadata
from engine.compile.remove_nodes import remove_nodes
from engine.pipeline import Engine
from engine.problems import ConfigError
from engine.runtime import load
from tests.support.models import Builder

CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tiny
  {remove}
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x8x8
calibration_parameters:
  calibration_type: skip
"""


def gemm_tail_model() -> onnx.ModelProto:
    """Conv → Relu → GlobalAveragePool → Flatten → Gemm (transB, bias) → logits."""
    b = Builder("gemm_tail", seed=3)
    x = b.input("x", [1, 3, 8, 8])
    f = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 3, 8)])])], axis=1)
    b.output(b.op("Gemm", [f, b.weight((5, 8)), b.weight((5,), 0.1)], out="logits", transB=1))
    return b.build()


GEMM = "Gemm_4"


@pytest.fixture(scope="module")
def bc(tmp_path_factory) -> onnx.ModelProto:
    """The `.bc` our own quantize stage writes for the model."""
    root = tmp_path_factory.mktemp("gemm")
    onnx.save(gemm_tail_model(), str(root / "model.onnx"))
    (root / "config.yaml").write_text(CONFIG.format(remove=""))
    report = Engine().run(root / "config.yaml", until="quantize")
    assert report.ok, [p.render() for p in report.problems]
    return onnx.load(str(root / "model_output" / "tiny_quantized_model.bc"))


def test_the_bc_computes_the_gemm_in_several_nodes(bc):
    # the situation the review met: the named program node is not the one the Dequantize reads
    named = next(n for n in bc.graph.node if n.name == GEMM)
    dq = next(n for n in bc.graph.node if n.output[0] == "logits")
    assert named.op_type == "MatMulInteger" and dq.op_type == "DequantizeLinear"
    assert dq.input[0] not in named.output
    assert len(json_metadata(bc, NODE_MAP)[GEMM]) > 1


def test_naming_the_tail_gemm_removes_its_dequantize(bc):
    out, removed = remove_nodes(bc, [], [GEMM])
    dq = next(n for n in bc.graph.node if n.output[0] == "logits")
    assert [(r.name, r.op_type, r.position, r.tensor) for r in removed] == [(dq.name, "DequantizeLinear", "output",
                                                                              "logits")]
    (y,) = out.graph.output
    assert y.name == "logits" and y.type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_the_codes_dequantized_as_recorded_give_the_bc_output(bc, tmp_path):
    out, removed = remove_nodes(bc, [], [GEMM])
    onnx.save(bc, str(tmp_path / "a.bc"))
    onnx.save(out, str(tmp_path / "b.bc"))
    a, b = load(tmp_path / "a.bc"), load(tmp_path / "b.bc")
    feeds = a.random_inputs(seed=1)
    want, codes = a.run(feeds)["logits"], b.run(feeds)["logits"]
    assert codes.dtype == np.int32 and codes.shape == want.shape
    q = b.spec("logits").quantization
    assert q is not None and q["scale"] == pytest.approx(removed[0].params["scale"])
    got = (codes.astype(np.float32) - np.float32(q["zero_point"])) * np.float32(q["scale"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))


def test_a_gemm_that_is_not_at_a_tail_is_still_refused(bc):
    model = onnx.ModelProto()
    model.CopyFrom(bc)
    model.graph.node.append(onnx.helper.make_node("Relu", ["logits"], ["after"], name="after_gemm"))
    model.graph.output[0].name = "after"
    with pytest.raises(ConfigError) as info:
        remove_nodes(model, [], [GEMM])
    (problem,) = info.value.problems
    assert f"'{GEMM}' (MatMulInteger) cannot be removed" in problem.message


def test_the_pipeline_removes_it_by_name(project):
    project.model(gemm_tail_model())
    report = Engine().run(project.config(CONFIG.format(remove=f"remove_node_name: {GEMM}")))
    assert report.ok, [p.render() for p in report.problems]
    hbm = load(project.root / "model_output" / "tiny.hbm")
    (spec,) = hbm.outputs
    assert spec.dtype == "int32" and spec.quantization and spec.info["removed_nodes"][0]["tensor"] == "logits"
