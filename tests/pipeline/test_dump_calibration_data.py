"""debug_mode: dump_calibration_data writes each calibration sample as the model's input sees it,
working_dir/calibration_data/<input>/<k>.npy (hb_compile's layout); turning it off removes the folder."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx

from engine.pipeline import Engine
from tests.pipeline.test_exporter_shapes import average_pool

CONFIG = textwrap.dedent("""\
    model_parameters:
      onnx_model: model.onnx
      march: nash-e
      working_dir: out
      output_model_file_prefix: m
    {debug}input_parameters: {{input_name: x, input_type_train: featuremap, input_layout_train: NCHW,
      input_type_rt: featuremap, input_shape: 1x3x6x6}}
    calibration_parameters: {{cal_data_dir: cal, calibration_type: max, cal_data_type: float32}}
    """)


def test_dump_writes_each_sample_and_off_removes_it(tmp_path):
    onnx.save(average_pool(), str(tmp_path / "model.onnx"))
    (tmp_path / "cal").mkdir()
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal((1, 3, 6, 6)).astype(np.float32) for _ in range(3)]
    for i, s in enumerate(samples):
        s.tofile(tmp_path / "cal" / f"s{i}.bin")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(debug="  debug_mode: dump_calibration_data\n"))
    engine = Engine()
    report = engine.run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    dumped = tmp_path / "out" / "calibration_data" / "x"
    assert sorted(p.name for p in dumped.iterdir()) == ["0.npy", "1.npy", "2.npy"]
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(np.load(dumped / f"{i}.npy"), s)

    cfg.write_text(CONFIG.format(debug=""))
    report = engine.run(cfg)
    assert report.ok and report.stage("calibrate").status == "ran"
    assert not (tmp_path / "out" / "calibration_data").exists()

    cfg.write_text(CONFIG.format(debug="  debug_mode: dump_calibration_data\n"))
    report = engine.run(cfg)  # the earlier entry is reused and publishes its folder again
    assert report.stage("calibrate").status == "reused"
    assert sorted(p.name for p in dumped.iterdir()) == ["0.npy", "1.npy", "2.npy"]
