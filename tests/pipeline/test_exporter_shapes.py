"""Legal models as exporters write them, each of which broke a stage: scalar Constant nodes (ReLU6
bounds, a Gather index, an old opset's converted Clip / Pad attributes), initializers listed as graph
inputs (IR 3, torch's keep_initializers_as_inputs), a conv output added to itself, an AveragePool
whose Q/DQ onnxruntime fuses. Each runs to the end with the float model's shapes and a good cosine."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.pipeline import Engine
from engine.runtime import load

RNG = np.random.default_rng(0)
W = numpy_helper.from_array((RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "W")


def scalar(name: str, value, dtype=TensorProto.FLOAT) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value]),
                            name=f"const_{name}")


def model(nodes, out_shape, opset=17, ir=8, inits=(W,), inputs_too=False) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])]
    if inputs_too:
        ins += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(m)
    return m


def relu6_constant_nodes():
    return model([scalar("lo", 0.0), scalar("hi", 6.0), helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
                  helper.make_node("Clip", ["a", "lo", "hi"], ["y"])], [1, 4, 6, 6], opset=13)


def relu6_opset9():
    return model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
                  helper.make_node("Clip", ["a"], ["y"], min=0.0, max=6.0)], [1, 4, 6, 6], opset=9, ir=4)


def pad_opset10():
    return model([helper.make_node("Conv", ["x", "W"], ["a"]),
                  helper.make_node("Pad", ["a"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)],
                 [1, 4, 6, 6], opset=10, ir=5)


def gather_scalar_index():
    return model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]), scalar("i", 0, TensorProto.INT64),
                  helper.make_node("Gather", ["a", "i"], ["y"], axis=1)], [1, 6, 6])


def pad_from_a_constant_chain():
    """torch's legacy exporter writes F.pad's pads as ops on constants (ConstantOfShape → Concat → Reshape → Slice →
    Transpose → Reshape → Cast): onnx's data propagation leaves the output dynamic, and parse refused the model."""
    pads = numpy_helper.from_array(np.array([[0, 0], [0, 0], [1, 1], [1, 1]], np.int32), "pads_rows")
    return model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
                  helper.make_node("Transpose", ["pads_rows"], ["pads_cols"], perm=[1, 0]),
                  helper.make_node("Reshape", ["pads_cols", "flat"], ["pads_i32"]),
                  helper.make_node("Cast", ["pads_i32"], ["pads"], to=TensorProto.INT64),
                  helper.make_node("Pad", ["a", "pads"], ["y"], mode="reflect")], ["n", "c", "h", "w"],
                 opset=13, inits=(W, pads, numpy_helper.from_array(np.array([-1], np.int64), "flat")))


def conv_plus_itself():
    return model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", ["c", "c"], ["y"])], [1, 4, 6, 6])


def average_pool():
    return model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
                  helper.make_node("AveragePool", ["a"], ["y"], kernel_shape=[2, 2])], [1, 4, 5, 5])


def ir3_initializer_inputs():
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
          [("g", RNG.random(4) + 0.5), ("b", RNG.standard_normal(4)), ("m", RNG.standard_normal(4)),
           ("v", RNG.random(4) + 0.5)]]
    return model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
                  helper.make_node("Relu", ["n"], ["y"])], [1, 4, 6, 6], opset=9, ir=3, inits=(W, *bn),
                 inputs_too=True)


def run(tmp_path: Path, m: onnx.ModelProto):
    onnx.save(m, str(tmp_path / "model.onnx"))
    (tmp_path / "cal").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        np.save(tmp_path / "cal" / f"s{i}.npy", rng.standard_normal((1, 3, 6, 6)).astype(np.float32))
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""\
        model_parameters: {onnx_model: model.onnx, march: nash-e, working_dir: out, output_model_file_prefix: m}
        input_parameters: {input_name: x, input_type_train: featuremap, input_layout_train: NCHW,
          input_type_rt: featuremap, input_shape: 1x3x6x6}
        calibration_parameters: {cal_data_dir: cal, calibration_type: max}
        """))
    report = Engine().run(tmp_path / "c.yaml")
    assert report.ok, [p.render() for p in report.problems]
    return report


@pytest.mark.parametrize("build", [relu6_constant_nodes, relu6_opset9, pad_opset10, pad_from_a_constant_chain,
                                   gather_scalar_index,
                                   conv_plus_itself, average_pool, ir3_initializer_inputs])
def test_exported_model_runs_with_its_shapes(tmp_path, build):
    m = build()
    report = run(tmp_path, m)
    x = np.load(tmp_path / "cal" / "s0.npy")
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = tmp_path / "out"
    for art in ("m_optimized_float_model.onnx", "m_calibrated_model.onnx", "m_ptq_model.onnx",
                "m_quantized_model.bc", "m.hbm"):
        got = load(out / art).run({"x": x})["y"]  # every artefact loads (AveragePool's fused Q/DQ did not)
        assert got.shape == want.shape, art
    (row,) = report.results["report"]["outputs"]
    assert row["quantized_cosine"] > 0.9997, row  # int8 measures 0.99986+ here; 5-bit weights at most 0.9994


def test_initializers_listed_as_inputs_are_weights(tmp_path):
    """IR 3: BatchNormalization folds into the conv, which runs as an integer op."""
    run(tmp_path, ir3_initializer_inputs())
    optimized = onnx.load(str(tmp_path / "out" / "m_optimized_float_model.onnx"))
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Relu"]
    assert [i.name for i in optimized.graph.input] == ["x"]
    table = (tmp_path / "out" / "m_node_info.csv").read_text()
    assert ",Conv+Relu,BPU," in table


def test_an_output_sized_by_the_data_is_refused_at_parse_naming_the_node(tmp_path):
    """NonMaxSuppression's output length depends on the scores: the run failed in calibrate with
    'cosine of tensors of different sizes'. hb_mapper refuses post-processing ops; so does parse, in one line."""
    w1 = numpy_helper.from_array((RNG.standard_normal((1, 3, 3, 3)) * 0.3).astype(np.float32), "W1")
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("box_shape", [1, 9, 4]), ("score_shape", [1, 1, 36]), ("keep", [5]))]
    consts.append(numpy_helper.from_array(np.array([0.3], np.float32), "iou"))
    m = model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
               helper.make_node("Reshape", ["a", "box_shape"], ["boxes"]),
               helper.make_node("Conv", ["x", "W1"], ["s"], pads=[1, 1, 1, 1]),
               helper.make_node("Reshape", ["s", "score_shape"], ["scores"]),
               helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep", "iou"], ["picked"], name="nms"),
               helper.make_node("Cast", ["picked"], ["y"], to=TensorProto.FLOAT)], ["k", 3],
              inits=(W, w1, *consts))
    with pytest.raises(AssertionError):  # the run is not ok; its problem below
        run(tmp_path, m)
    report = Engine().run(tmp_path / "c.yaml")
    [problem] = [p for p in report.problems if p.is_error]
    assert problem.code == "model-data-sized-output" and "node 'nms', NonMaxSuppression" in problem.message
    assert not (tmp_path / "out" / "m.hbm").exists()


def test_an_output_whose_rank_inference_lost_gets_its_shape_through_folding(tmp_path):
    """Review RV s7: a Reshape to a shape computed from constants leaves the output without even a rank after
    onnx's inference; parse folds a copy for it too, so the original float model states the output's shape."""
    rows = numpy_helper.from_array(np.array([[1, 4], [6, 6]], np.int32), "rows")
    m = model([helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1]),
               helper.make_node("Transpose", ["rows"], ["cols"], perm=[1, 0]),
               helper.make_node("Transpose", ["cols"], ["rows2"], perm=[1, 0]),
               helper.make_node("Reshape", ["rows2", "flat"], ["s32"]),
               helper.make_node("Cast", ["s32"], ["s"], to=TensorProto.INT64),
               helper.make_node("Reshape", ["a", "s"], ["y"])], ["n", "c", "h", "w"], opset=13,
              inits=(W, rows, numpy_helper.from_array(np.array([-1], np.int64), "flat")))
    run(tmp_path, m)
    original = onnx.load(str(tmp_path / "out" / "m_original_float_model.onnx"))
    dims = original.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4, 6, 6]
