"""layer_out_dump is accepted (hb documents it) but the engine has nothing to act on for it: it gets a
warning naming it instead of silence. debug_mode: dump_calibration_data is acted on (the calibrate
stage writes working_dir/calibration_data/<input>/<k>.npy): no warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.loader import load_config_text

TEXT = """model_parameters:
  onnx_model: m.onnx
  march: nash-e
{mp}input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x6x6
calibration_parameters:
  calibration_type: skip
"""


def problems(mp: str):
    r = load_config_text(TEXT.format(mp=mp), Path("/tmp"), "c.yaml", check_files=False)
    assert r.ok
    return [(p.code, p.message, p.path, p.span.line) for p in r.problems]


def test_dump_calibration_data_is_a_plain_setting():
    assert problems("  debug_mode: dump_calibration_data\n") == []


def test_layer_out_dump_true_says_no_outputs_are_added():
    [(code, message, path, line)] = problems("  layer_out_dump: true\n")
    assert code == "no-effect" and path == ("model_parameters", "layer_out_dump") and line == 3
    assert message.startswith("Please note that the parameter 'layer_out_dump' is recorded but has no effect here")


@pytest.mark.parametrize("mp", ["  layer_out_dump: false\n", ""])
def test_off_is_silent(mp):
    assert problems(mp) == []
