"""compiler_parameters.input_source is checked where the config is read (CLI and language server alike):
against input_type_rt (reference §7: pyramid / resizer take nv12, gray, …; ddr takes rgb, bgr, yuv444, gray,
featuremap) and against the input names; a bad value's message names `input_source`, not the input."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.inputs import check_with_model
from engine.config.loader import load_config_text
from engine.frontend.model_info import model_info
from tests.support.models import onnx_text

TEXT = """model_parameters:
  onnx_model: m.onnx
  march: nash-e
input_parameters:
{name}  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: {rt}
  input_shape: 1x3x8x8
calibration_parameters:
  calibration_type: skip
compiler_parameters:
  input_source: {src}
"""


def load(rt: str, src: str, name: str = "  input_name: data\n"):
    return load_config_text(TEXT.format(rt=rt, src=src, name=name), Path("/tmp"), "c.yaml", check_files=False)


@pytest.mark.parametrize("rt,src", [("rgb", "pyramid"), ("rgb", "resizer"), ("nv12", "ddr"), ("bgr", "pyramid")])
def test_source_that_does_not_take_the_rt_type_is_an_error(rt, src):
    r = load(rt, f"{{data: {src}}}")
    assert not r.ok
    [p] = r.problems
    assert (p.code, p.message) == ("input-source", f"Wrong input_source received. input type rt : {rt} does not "
                                                   f"support input_source {src}")
    assert p.path == ("compiler_parameters", "input_source", "data") and p.span.line == 12
    assert rt not in ("rgb", "bgr") or p.data["allowed"] == ["ddr"]


@pytest.mark.parametrize("rt,src", [("nv12", "pyramid"), ("nv12", "resizer"), ("rgb", "ddr"), ("gray", "ddr"),
                                    ("gray", "pyramid")])
def test_accepted_pairs(rt, src):
    text = TEXT.format(rt=rt, src=f"{{data: {src}, _default_value: ddr}}", name="  input_name: data\n")
    if rt == "gray":
        text = text.replace("input_type_train: rgb", "input_type_train: gray").replace("1x3x8x8", "1x1x8x8")
    r = load_config_text(text, Path("/tmp"), check_files=False)
    assert r.ok and r.problems == []


def test_unknown_input_name_is_an_error_on_the_key():
    r = load("nv12", "{no_such_input: pyramid}")
    [p] = r.problems
    assert (p.code, p.message) == ("input-source-name", "input_source names 'no_such_input', which is not a model "
                                                        "input (data)")
    assert (p.span.line, p.span.col) == (12, 17)  # the key 'no_such_input'


def test_bad_value_names_input_source_not_the_input():
    [p] = load("nv12", "{data: camera}").problems
    assert p.message == ("The specified input_source is invalid, the input_source: 'camera' can only be specified "
                         "as values in ['pyramid', 'ddr', 'resizer']")


def test_one_input_without_input_name_checks_the_rt_type_and_leaves_the_name_to_the_model():
    [p] = load("rgb", "{images: pyramid}", name="").problems
    assert p.code == "input-source"
    assert load("nv12", "{images: pyramid}", name="").problems == []
    info = model_info(onnx_text('<ir_version: 8, opset_import: ["" : 17]>\n'
                                'g (float[1,3,8,8] data) => (float[1,3,8,8] y) { y = Relu(data) }'))
    data = load("nv12", "{images: pyramid}", name="").config.data
    assert [(q.code, q.message) for q in check_with_model(data, info)] == [
        ("input-source-name", "input_source names 'images', which is not a model input (data)")]
    ok = load("nv12", "{data: pyramid}", name="").config.data
    assert check_with_model(ok, info) == []
