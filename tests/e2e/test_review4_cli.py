"""Reviewer-found CLI bugs (session 4 review §1, §9, §10, §13): what `hb_compile` prints for configs
and command lines that fit the model badly, on real generated models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.cli import main
from tests.conftest import GOOD_CONFIG, conv_relu_model
from tests.support.daemon import daemon_command, private_daemon

FEATUREMAP = (GOOD_CONFIG.replace("input_type_train: rgb", "input_type_train: featuremap")
              .replace("input_type_rt: nv12", "input_type_rt: featuremap")
              .replace("  mean_value: 128 128 128\n", "").replace("  scale_value: 0.0078125\n", ""))


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(level)]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ---------------------------------------------------------------- §1: model-aware warnings on the CLI

TYPOS = GOOD_CONFIG.replace("  output_model_file_prefix: tiny",
                            "  output_model_file_prefix: tiny\n  node_info: 'Relu_9:int16'").replace(
    "  calibration_type: max", "  calibration_type: max\n  run_on_cpu: Conv_9\n"
    "  quant_config: {node_config: {Gap_9: {qtype: int16}}}")


def test_unknown_node_names_are_warned_on_console_and_in_the_log(project, capsys):
    cfg = project.config(TYPOS)
    os.chdir(project.root)
    assert main(["-c", str(cfg), "--until", "optimize"]) == 0
    warnings = lines(capsys.readouterr().out, "WARNING")
    for name, key in (("Conv_9", "run_on_cpu"), ("Relu_9", "node_info"), ("Gap_9", "quant_config.node_config")):
        told = [w for w in warnings if f"The node '{name}' given in {key} is not a node of the model" in w]
        assert len(told) == 1, warnings
        assert re.search(rf"config\.yaml:{line_of(TYPOS, name)}:\d+: warning: ", told[0]), told[0]
    log = (project.root / "model_output" / "hb_compile.log").read_text()
    assert log.count("is not a node of the model") == 3


def test_warnings_come_again_when_parse_is_reused_and_follow_the_edit(project, capsys):
    """run_on_cpu is not read by parse: a run that reuses parse still checks the current names."""
    cfg = project.config(TYPOS)
    os.chdir(project.root)
    assert main(["-c", str(cfg), "--until", "optimize"]) == 0
    capsys.readouterr()
    project.config(TYPOS.replace("run_on_cpu: Conv_9", "run_on_cpu: Conv_0"))
    assert main(["-c", str(cfg), "--until", "optimize"]) == 0
    warnings = lines(capsys.readouterr().out, "WARNING")
    assert not [w for w in warnings if "Conv_" in w], warnings
    assert len([w for w in warnings if "Relu_9" in w or "Gap_9" in w]) == 2, warnings


def test_input_shape_differing_from_the_model_is_warned(project, capsys):
    """1x3x8x8 model; input_shape 1x3x16x16 (the convolution takes any H, W)."""
    text = GOOD_CONFIG.replace("input_shape: 1x3x8x8", "input_shape: 1x3x16x16")
    cfg = project.config(text)
    os.chdir(project.root)
    assert main(["-c", str(cfg), "--until", "optimize"]) == 0
    told = [w for w in lines(capsys.readouterr().out, "WARNING") if "differs from the model's [1, 3, 8, 8]" in w]
    assert len(told) == 1 and f"config.yaml:{line_of(text, 'input_shape')}:" in told[0], told


# ---------------------------------------------------------------- §9: input element types

def _cast_model(elem: int) -> onnx.ModelProto:
    """A float16 / int64 input the model casts to float before a Relu."""
    nodes = [helper.make_node("Cast", ["data"], ["f"], to=TensorProto.FLOAT), helper.make_node("Relu", ["f"], ["y"])]
    g = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("data", elem, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _embedding_model() -> onnx.ModelProto:
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "data"], ["y"])], "embed",
                          [helper.make_tensor_value_info("data", TensorProto.INT64, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4])], [table])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize(("model", "shape", "dtype"), [
    (_cast_model(TensorProto.FLOAT16), "1x3x8x8", "float16"),
    (_embedding_model(), "1x6", "int64"),
])
def test_non_float32_input_is_one_early_error(project, capsys, model, shape, dtype):
    project.model(model)
    cfg = project.config(FEATUREMAP.replace("1x3x8x8", shape))
    os.chdir(project.root)
    assert main(["-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    errors = lines(out, "ERROR")
    assert len(errors) == 1, errors
    assert "'data'" in errors[0] and dtype in errors[0] and "float32" in errors[0], errors[0]
    assert "ONNXRuntime" not in out and "ERROR-OCCUR-DURING" not in out
    assert "Start to calibrate" not in out  # told before any work on the model
    assert project.artefacts() == []


# ---------------------------------------------------------------- §10: an input_shape the model cannot take

def test_input_shape_the_model_cannot_take_fails_at_parse(project, capsys):
    text = FEATUREMAP.replace("1x3x8x8", "1x1x8x8")
    cfg = project.config(text)
    os.chdir(project.root)
    assert main(["-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    errors = lines(out, "ERROR")
    assert len(errors) == 1, errors
    msg = errors[0]
    assert f"config.yaml:{line_of(text, 'input_shape')}:" in msg
    assert "input_shape 1x1x8x8" in msg and "Conv_0" in msg and "3" in msg, msg
    assert "[1, 3, 8, 8]" in msg  # what the model's own input is
    assert "Start to calibrate" not in out and project.artefacts() == []


def test_check_mode_with_an_input_shape_the_model_cannot_take_fails(tmp_path, capsys):
    onnx.save(conv_relu_model(shape=(1, 3, 16, 16)), str(tmp_path / "net.onnx"))
    os.chdir(tmp_path)
    assert main(["-m", "net.onnx", "--march", "nash-e", "-i", "data", "1x1x16x16"]) != 0
    out = capsys.readouterr().out
    errors = lines(out, "ERROR")
    assert len(errors) == 1 and "-i/--input-shape" in errors[0] and "1x1x16x16" in errors[0], errors
    assert "The converted model node information" not in out


# ---------------------------------------------------------------- §13: -i errors name the option

@pytest.mark.parametrize("mode", [[], ["--fast-perf"]])
def test_input_shape_option_errors_name_the_option_not_a_generated_file(tmp_path, capsys, mode):
    onnx.save(conv_relu_model(shape=(1, 3, 16, 16)), str(tmp_path / "net.onnx"))
    os.chdir(tmp_path)
    assert main([*mode, "-m", "net.onnx", "--march", "nash-e", "-i", "data", "1x3x16"]) == 1
    errors = lines(capsys.readouterr().out, "ERROR")
    assert len(errors) == 1, errors
    assert "check_config.yaml" not in errors[0] and "fast_perf_config.yaml" not in errors[0], errors[0]
    assert re.match(r"ERROR\s+-i/--input-shape data 1x3x16: error: ", errors[0]), errors[0]
    assert "has 3 dims but the model input has 4" in errors[0]


# ---------------------------------------------------------------- §1 through the daemon

def test_daemon_prints_the_same_model_warnings(project, tmp_path):
    with private_daemon(tmp_path / "run") as env:
        project.config(TYPOS)
        run = subprocess.run([sys.executable, "-m", "engine.cli", "-c", "config.yaml", "--until", "optimize"],
                             cwd=project.root, env=env, capture_output=True, text=True, timeout=120)
        status = daemon_command(env, "status")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 runs" in status.stdout  # it went through the daemon
    assert run.stdout.count("is not a node of the model") == 3, run.stdout
    assert (Path(project.root) / "model_output" / "hb_compile.log").read_text().count("is not a node of the") == 3


# ---------------------------------------------------------------- §16 c: an output that is the input itself

def test_an_output_that_is_the_model_input_is_one_error_naming_it(project, capsys):
    """Valid ONNX (the checker passes) that no stage can compile: it failed optimize with onnx's
    "Field 'shape' of 'type' is required but missing"."""
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["data"], ["o"], name="relu")], "g", [x],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 3, 8, 8]), x])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    project.model(model)
    cfg = project.config(FEATUREMAP)
    os.chdir(project.root)
    assert main(["-c", str(cfg)]) != 0
    out = capsys.readouterr().out
    (err,) = lines(out, "ERROR")
    assert "Output 'data' of the model is its input 'data' itself" in err
    assert re.search(rf"config\.yaml:{line_of(FEATUREMAP, 'onnx_model')}:\d+: error: ", err), err
    assert "Traceback" not in out and not (project.root / "model_output" / "tiny.hbm").exists()
