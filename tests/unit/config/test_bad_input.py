"""Every bad input gets one clear line (hb_compile's wording) with file:line, exit ≠ 0, nothing written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from engine.cli import main
from tests.conftest import GOOD_CONFIG, conv_relu_model

LOCATED = re.compile(r"config\.yaml:(\d+):(\d+): error: ")


def run_cli(project, capsys, text: str) -> tuple[int, list[str]]:
    cfg = project.config(text)
    os.chdir(project.root)
    code = main(["-c", str(cfg)])
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in out
    return code, errors


def only_error(project, capsys, text: str) -> tuple[str, int]:
    code, errors = run_cli(project, capsys, text)
    assert code != 0
    assert len(errors) == 1, errors
    m = LOCATED.search(errors[0])
    assert m, errors[0]
    assert project.artefacts() == []
    return errors[0], int(m.group(1))


def test_tab_indentation(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("  march: nash-e", "\tmarch: nash-e"))
    assert "tab character" in msg and line == 3


def test_duplicate_key(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("  march: nash-e", "  march: nash-e\n  march: bayes-e"))
    assert "Duplicate key 'march'" in msg and line == 4


def test_unclosed_quote(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("input_name: data", "input_name: 'data"))
    assert "yaml file parse failed" in msg and "unclosed quote" in msg and line == 7


def test_wrong_type(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("compile_mode: latency", "debug: 'yes'"))
    assert "Wrong parameter 'debug' specified, bool value is required but get type <class 'str'>" in msg
    assert line == 17


def test_unknown_key_did_you_mean(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("onnx_model:", "onnx_modle:"))
    assert "Wrong key 'onnx_modle'" in msg and "did you mean 'onnx_model'" in msg and line == 2


def test_invalid_enum(project, capsys):
    msg, _ = only_error(project, capsys, GOOD_CONFIG.replace("march: nash-e", "march: nash-x"))
    assert "The specified march 'nash-x' is invalid" in msg


def test_both_model_kinds(project, capsys):
    text = GOOD_CONFIG.replace("  march: nash-e", "  caffe_model: m.caffemodel\n  prototxt: m.prototxt\n  march: nash-e")
    msg, _ = only_error(project, capsys, text)
    assert "It is not supported to specify both onnx_model and caffe_model" in msg


def test_missing_model_file(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("model.onnx", "absent.onnx"))
    assert "Can not find file specified: absent.onnx" in msg and line == 2


def test_non_onnx_file(project, capsys):
    (project.root / "model.onnx").write_text("this is not a model\n" * 10)
    msg, line = only_error(project, capsys, GOOD_CONFIG)
    assert "Onnx file invalid" in msg and "model.onnx" in msg and line == 2


def test_truncated_onnx(project, capsys):
    data = (project.root / "model.onnx").read_bytes()
    (project.root / "model.onnx").write_bytes(data[: len(data) // 2])
    msg, _ = only_error(project, capsys, GOOD_CONFIG)
    assert "Onnx file invalid" in msg


def test_dynamic_input_without_shape(project, capsys):
    project.model(conv_relu_model(dynamic_batch=True))
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("  input_shape: 1x3x8x8\n", ""))
    assert "The model is a dynamically input model. Please specify the 'input_shape'" in msg


def test_input_name_not_in_model(project, capsys):
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("input_name: data", "input_name: image"))
    assert "'image' is not an input of the model" in msg and line == 7


def test_unwritable_working_dir(project, capsys, tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: a regular file where the folder should be fails for everyone
        (tmp_path / "blocked").write_text("")
        wd = "blocked/out"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        wd = "ro/out"
    msg, line = only_error(project, capsys, GOOD_CONFIG.replace("working_dir: model_output", f"working_dir: {wd}"))
    assert "Cannot write into working_dir" in msg and line == 4


def test_missing_required_key_on_parent(project, capsys):
    text = GOOD_CONFIG.replace("  march: nash-e\n", "")
    msg, line = only_error(project, capsys, text)
    assert "Key 'model_parameters' error: Missing keys: 'march'" in msg and line == 1


def test_odd_nv12(project, capsys):
    project.model(conv_relu_model(shape=(1, 3, 7, 8)))
    msg, _ = only_error(project, capsys, GOOD_CONFIG.replace("1x3x8x8", "1x3x7x8"))
    assert "nv12 type does not support odd number input size" in msg


def test_illegal_conversion(project, capsys):
    msg, _ = only_error(project, capsys, GOOD_CONFIG.replace("input_type_rt: nv12", "input_type_rt: gray"))
    assert "The input_type_train 'rgb' of the input data is not supported to be transformed to input_type_rt 'gray'" in msg


def test_missing_config_file(tmp_path, capsys):
    os.chdir(tmp_path)
    assert main(["-c", str(tmp_path / "nope.yaml")]) != 0
    assert "Can not find file specified" in capsys.readouterr().out


def test_no_traceback_in_subprocess(project):
    """The real console script: a broken config prints one ERROR line and exits non-zero."""
    cfg = project.config(GOOD_CONFIG.replace("march: nash-e", "march: [1, 2]"))
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "-c", str(cfg)], cwd=project.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("ERROR")][0].count("config.yaml:3:") == 1


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02binary", b"\xff\xfe invalid utf8", b"- just\n- a list\n"])
def test_garbage_files(project, capsys, garbage):
    cfg = project.root / "config.yaml"
    cfg.write_bytes(garbage)
    os.chdir(project.root)
    assert main(["-c", str(cfg)]) != 0
    out = capsys.readouterr().out
    assert "Traceback" not in out and out.count("ERROR") == 1


def test_custom_domain_operator(project, capsys):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Foo", ["data"], ["output"], domain="com.custom")], "g",
                          [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])])
    project.model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.custom", 1)]))
    msg, line = only_error(project, capsys, GOOD_CONFIG)
    assert "nodes:['Foo'] are specified as domain:com.custom, which are not supported by official onnx" in msg
    assert line == 2


def test_zero_dimension_in_input_shape(project, capsys):
    text = GOOD_CONFIG.replace("input_shape: 1x3x8x8", "input_shape: 0x3x8x8")
    assert text != GOOD_CONFIG
    msg, _ = only_error(project, capsys, text)
    assert "Invalid input_shape format: '0x3x8x8'" in msg


@pytest.mark.parametrize("value,told", [(".nan", "nan, a finite number is required"),
                                        (".inf", "inf, avaliable range: 0~1"), ("-.inf", "-inf, avaliable range")])
def test_non_finite_number(project, capsys, value, told):
    """NaN passes JSON Schema's range checks (every comparison is false): told apart, once."""
    text = GOOD_CONFIG.replace("calibration_parameters:", f"calibration_parameters:\n  max_percentile: {value}")
    assert text != GOOD_CONFIG
    msg, _ = only_error(project, capsys, text)
    assert f"Invalid max_percentile: {told}" in msg


@pytest.mark.parametrize("prefix", ["a/b", "..", "sub\\name"])
def test_prefix_with_a_path_separator(project, capsys, prefix):
    text = GOOD_CONFIG.replace("output_model_file_prefix: tiny", f"output_model_file_prefix: '{prefix}'")
    assert text != GOOD_CONFIG
    msg, _ = only_error(project, capsys, text)
    assert "Invalid output_model_file_prefix:" in msg
