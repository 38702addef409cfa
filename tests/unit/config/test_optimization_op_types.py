"""`optimization: set_{OpType}_…` naming an op type no node has (review r1 item 9): `set_conv_output_int16`
ran without a word and left every Conv int8. A model-aware warning names the closest op type present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.config.inputs import check_with_model
from engine.config.loader import load_config_text, locate
from engine.frontend.model_info import model_info
from engine.problems import Problem, Severity
from tests.conftest import GOOD_CONFIG, REPO, conv_relu_model


def model_problems(tmp_path: Path, optimization: str, model: onnx.ModelProto | None = None) -> list[Problem]:
    text = GOOD_CONFIG.replace("  calibration_type: max\n",
                               f"  calibration_type: max\n  optimization: '{optimization}'\n")
    result = load_config_text(text, tmp_path, "config.yaml", check_files=False)
    assert result.ok, [p.message for p in result.problems]
    found = check_with_model(result.config.data, model_info(model or conv_relu_model()))
    return [p for p in locate(found, result.doc, "config.yaml") if p.code == "optimization-op-unknown"]


def test_wrong_case_op_type_warns_with_the_op_type_present(tmp_path):
    [p] = model_problems(tmp_path, "set_conv_output_int16")
    assert p.severity == Severity.WARNING and p.path == ("calibration_parameters", "optimization")
    assert p.message == ("The optimization 'set_conv_output_int16' names op type 'conv', which no node of the "
                         "model has: it changes nothing; did you mean 'Conv'?")
    assert [f.new_text for f in p.fixes] == ["set_Conv_output_int16"]


def test_the_warning_sits_on_its_item_of_the_comma_list(tmp_path):
    [p] = model_problems(tmp_path, "set_Relu_input_int16,set_Cnov_output_int16")
    assert "did you mean 'Conv'?" in p.message and p.data["item"] == 1
    line = GOOD_CONFIG.count("\n", 0, GOOD_CONFIG.index("  calibration_type: max")) + 1
    assert p.span.line == line and (p.span.end_col - p.span.col) == len("set_Cnov_output_int16")


def test_an_op_type_with_nothing_close_lists_the_model_op_types(tmp_path):
    [p] = model_problems(tmp_path, "set_Foo_output_int16")
    assert p.message.endswith("the model's op types are BatchNormalization, Conv, GlobalAveragePool, Relu")
    assert not p.fixes


@pytest.mark.parametrize("optimization", ["set_Conv_output_int16", "set_Relu_input_int16,set_Conv_output_int8",
                                          "set_model_output_int16", "set_all_nodes_int16,asymmetric"])
def test_op_types_the_model_has_and_other_switches_are_silent(tmp_path, optimization):
    assert model_problems(tmp_path, optimization) == []


def hard_swish_decomposed() -> onnx.ModelProto:
    """x · Clip(x + 3, 0, 6) / 6: the optimize stage writes one HardSwish node in its place."""
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    consts = [numpy_helper.from_array(np.array(v, np.float32), n)
              for v, n in ((3.0, "three"), (0.0, "zero"), (6.0, "six"))]
    nodes = [helper.make_node("Add", ["data", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["data", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "hs", [x], [y], consts),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_an_op_type_the_optimize_stage_fuses_is_not_warned(tmp_path):
    assert model_problems(tmp_path, "set_HardSwish_output_int16", hard_swish_decomposed()) == []
    [p] = model_problems(tmp_path, "set_Hardswish_output_int16", hard_swish_decomposed())  # still a typo
    assert "'Hardswish'" in p.message


def test_hb_compile_prints_the_warning(project):
    """The CLI shows the model rules' warnings after the run (engine.cli.model_warnings)."""
    project.config(GOOD_CONFIG.replace("  calibration_type: max\n",
                                       "  calibration_type: max\n  optimization: set_conv_output_int16\n"))
    run = subprocess.run([sys.executable, "-m", "engine.cli", "--no-daemon", "-c", "config.yaml"], cwd=project.root,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-2000:]
    assert "names op type 'conv', which no node of the model has" in out and "did you mean 'Conv'?" in out
