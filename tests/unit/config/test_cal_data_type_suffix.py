"""Reference §6 (cal_data_type): an explicit value wins over the folder's `_f32` suffix, with a warning
when they disagree; the warning sits on the disagreeing item and offers the suffix's type as a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.loader import load_config_text

TEXT = """model_parameters:
  onnx_model: m.onnx
  march: bayes-e
input_parameters:
  input_name: a; b
  input_type_train: rgb; featuremap
  input_layout_train: NCHW; NCHW
  input_type_rt: nv12; featuremap
  input_shape: 1x3x8x8; 1x4
calibration_parameters:
  cal_data_dir: {dirs}
  cal_data_type: {types}
  calibration_type: max
"""


def problems(dirs: str, types: str):
    r = load_config_text(TEXT.format(dirs=dirs, types=types), Path("/tmp"), "c.yaml", check_files=False)
    assert r.ok
    return [p for p in r.problems if p.code == "cal-data-type-suffix"]


def test_uint8_on_an_f32_folder_warns_on_that_item():
    [p] = problems("./cal_a; ./calibration_data_rgb_f32/", "float32; uint8")
    assert p.message == ("cal_data_type 'uint8' of input 1 disagrees with the name of its cal_data_dir "
                         "'calibration_data_rgb_f32' (the suffix means float32); raw calibration files are read as "
                         "uint8")
    assert p.severity.label == "warning" and p.data["replace_item"] == "float32"
    assert p.span is not None and (p.span.line, p.span.col) == (11, 26)  # the 'uint8' item


def test_float32_on_a_uint8_folder_warns():
    [p] = problems("cal_uint8; cal_b", "float32; uint8")
    assert "'cal_uint8' (the suffix means uint8)" in p.message


@pytest.mark.parametrize("dirs,types", [
    ("cal_rgb_f32; cal_b", "float32; uint8"),          # agrees
    ("calibration_data_rgb_f32_640; cal_b", "uint8; uint8"),  # no suffix at the end: no hint (model zoo name)
    ("cal_rgb_f32; cal_b", "None; uint8"),              # not given: the suffix decides, nothing to disagree with
])
def test_no_warning_without_disagreement(dirs, types):
    assert problems(dirs, types) == []
