"""The Caffe path runs the same pipeline: prototxt + caffemodel → original/optimized float ONNX."""

from __future__ import annotations

import numpy as np
import onnx

from engine.pipeline import Engine
from tests.support.caffe_models import write
from tests.support.models import assert_same_outputs


def test_resnet_style_caffe_net_through_the_whole_pipeline(tmp_path):
    files = write("resnet_style", tmp_path)
    name, shape = next(iter(files.inputs.items()))
    cal = tmp_path / "cal_f32"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        rng.standard_normal(shape).astype(np.float32).tofile(cal / f"s{i}.bin")
    cfg = tmp_path / "caffe.hb.yaml"
    cfg.write_text(f"""\
model_parameters:
  caffe_model: {files.caffemodel.name}
  prototxt: {files.prototxt.name}
  march: bayes-e
  working_dir: out
  output_model_file_prefix: res
input_parameters:
  input_name: {name}
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: {'x'.join(map(str, shape))}
calibration_parameters:
  cal_data_dir: cal_f32
  calibration_type: max
""")
    report = Engine().run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    assert (tmp_path / "out" / "res.hbm").is_file()
    [out] = report.results["report"]["outputs"]
    assert out["quantized_cosine"] > 0.99
    original = onnx.load(str(tmp_path / "out" / "res_original_float_model.onnx"))
    optimized = onnx.load(str(tmp_path / "out" / "res_optimized_float_model.onnx"))
    assert "BatchNormalization" in {n.op_type for n in original.graph.node}
    assert "BatchNormalization" not in {n.op_type for n in optimized.graph.node}
    assert_same_outputs(original, optimized)


def test_missing_prototxt_key_is_hb_wording(tmp_path):
    files = write("resnet_style", tmp_path)
    cfg = tmp_path / "caffe.hb.yaml"
    cfg.write_text(f"""\
model_parameters:
  caffe_model: {files.caffemodel.name}
  march: bayes-e
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
""")
    report = Engine().run(cfg)
    assert not report.ok
    assert [p.message for p in report.problems if p.is_error] == [
        "Key 'model_parameters' error: Missing keys: 'prototxt'"]
