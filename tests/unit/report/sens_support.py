"""A project whose model has one deliberately broken node (the accuracy tests' outlier chain:
conv_b's output has one channel 400× its others), for the sensitivity views and `--sensitivity`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from tests.unit.accuracy.acc_models import outlier_chain, samples

BROKEN = "conv_b+relu_b"  # the row the ranking must put first
CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: chain
input_parameters:
  input_name: x
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x16x16
calibration_parameters:
  cal_data_dir: cal
  cal_data_type: float32
  calibration_type: max
  accuracy_samples: 4
  target_output_cosine: {target}
  sensitivity: {sensitivity}
"""


def write_chain_project(root: Path, target: float = 0.0, sensitivity: int = 0, name: str = "chain.hb.yaml") -> Path:
    """model.onnx, cal/*.npy (8 samples) and a config in `root`; returns the config path.
    `target` 0: no mixed precision; `sensitivity` 0: calibrate ranks nothing unless mixed precision needs it."""
    model = outlier_chain()
    onnx.save(model, str(root / "model.onnx"))
    cal = root / "cal"
    cal.mkdir(exist_ok=True)
    for i, s in enumerate(samples(model, 8)):
        np.save(cal / f"s{i}.npy", s["x"])
    path = root / name
    path.write_text(CONFIG.format(target=target, sensitivity=sensitivity))
    return path


def compiled_chain(root: Path, target: float = 0.999, sensitivity: int = 3):
    """Run the whole pipeline in-process on the chain project; (report, engine, calibrate entry folder)."""
    from engine.pipeline import Engine
    from engine.pipeline.cache import StageCache

    engine = Engine()
    report = engine.run(write_chain_project(root, target, sensitivity))
    assert report.ok, [p.render() for p in report.problems]
    entry = StageCache(engine.cache_root(report.config)).lookup("calibrate", report.stage("calibrate").key)
    return report, engine, entry
