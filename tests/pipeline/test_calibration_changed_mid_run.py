"""A calibration file rewritten after the stage key was taken (a save during a live run): the run
fails with a one-line error and files nothing under the old bytes' hash; the next run is right."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest

from engine.calibration import data as D
from engine.pipeline import Engine
from tests.pipeline.test_input_conversion import H, W, conv_model


def _project(root):
    onnx.save(conv_model(3, "NCHW"), str(root / "model.onnx"))
    (root / "cal").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        rng.integers(0, 100, (1, 3, H, W), dtype=np.uint8).tofile(root / "cal" / f"s{i}.bin")  # values < 100
    (root / "c.yaml").write_text(textwrap.dedent(f"""\
        model_parameters: {{onnx_model: model.onnx, march: nash-e, working_dir: out, output_model_file_prefix: conv}}
        input_parameters: {{input_name: data, input_type_train: featuremap, input_layout_train: NCHW,
          input_type_rt: featuremap, input_shape: 1x3x{H}x{W}, norm_type: no_preprocess}}
        calibration_parameters: {{cal_data_dir: cal, calibration_type: max, cal_data_type: uint8}}
        """))
    return root / "c.yaml"


def _input_threshold(root) -> float:
    entries = sorted((root / "out/.hb_cache/calibrate").glob("[0-9a-f]*"), key=lambda p: p.stat().st_mtime)
    return json.loads((entries[-1] / "thresholds.json").read_text())["data"]["threshold"]


def test_file_rewritten_mid_run_fails_the_run_and_poisons_nothing(tmp_path, monkeypatch):
    cfg = _project(tmp_path)
    s0 = tmp_path / "cal" / "s0.bin"
    original = s0.read_bytes()
    real_samples = D.CalibrationSet.samples

    def rewrite_then_read(self, indices=None):  # the user saves s0 after the key was taken
        s0.write_bytes(np.full(len(original), 250, np.uint8).tobytes())
        yield from real_samples(self, indices)

    monkeypatch.setattr(D.CalibrationSet, "samples", rewrite_then_read)
    report = Engine().run(cfg)
    assert not report.ok
    assert any("changed during the run" in p.message for p in report.problems)
    monkeypatch.setattr(D.CalibrationSet, "samples", real_samples)

    s0.write_bytes(original)  # back to the first contents: nothing of the 250s may come back
    report = Engine().run(cfg)
    assert report.ok
    assert _input_threshold(tmp_path) == pytest.approx(99.0, abs=1.0)


def test_file_rewritten_between_the_key_and_the_stage_is_caught_by_the_engine(tmp_path):
    """The file changes after calibrate's key was taken but before the stage read anything (the
    stage's own check compares against what it read first): the engine re-takes the key after the
    stage and files nothing under the old one."""
    cfg = _project(tmp_path)
    s0 = tmp_path / "cal" / "s0.bin"
    original = s0.read_bytes()

    def progress(stage, message, fraction):  # announced after the key is taken, before the stage runs
        if stage == "calibrate" and message.startswith("Start to"):
            s0.write_bytes(np.full(len(original), 250, np.uint8).tobytes())

    report = Engine().run(cfg, progress=progress)
    assert not report.ok
    errors = [p.message for p in report.problems if p.severity.name == "ERROR"]
    assert len(errors) == 1 and "s0.bin changed during the calibrate stage; run again" in errors[0], errors
    assert not (tmp_path / "out" / "conv_quantized_model.bc").exists()

    s0.write_bytes(original)
    report = Engine().run(cfg)
    assert report.ok and report.stage("calibrate").status == "ran"
    assert _input_threshold(tmp_path) == pytest.approx(99.0, abs=1.0)
