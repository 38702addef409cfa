"""Reviewer-found config messages (session 6 review r1: m4, m5, m11): each test is the repro, on the loader
and the model rules the CLI and the language server share."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from engine.config.inputs import check_with_model
from engine.config.loader import load_config_text, locate
from engine.frontend.model_info import model_info
from engine.problems import Problem
from tests.conftest import GOOD_CONFIG


def load(tmp_path: Path, text: str):
    return load_config_text(text, tmp_path, "config.yaml", check_files=False)


def only(problems: list[Problem], code: str) -> Problem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, [(p.code, p.message) for p in problems]
    return found[0]


def relu_model(shape: list[int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["data"], ["y"], name="relu0")], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ---------------------------------------------------------------- m4: input_batch range names its upper bound

@pytest.mark.parametrize("march, batch, expected", [
    ("nash-e", "0", "Invalid input_batch: 0, available range for march nash-e: 1~4096"),  # the schema's minimum
    ("bernoulli2", "0", "Invalid input_batch: 0, available range for march bernoulli2: 1~128"),
    ("nash-e", "'0'", "Invalid input_batch: 0, available range for march nash-e: 1~4096"),  # a string: the rule
    ("nash-e", "5000", "Invalid input_batch: 5000, available range for march nash-e: 1~4096"),
])
def test_input_batch_out_of_range_names_the_march_range(tmp_path, march, batch, expected):
    text = GOOD_CONFIG.replace("march: nash-e", f"march: {march}").replace(
        "  input_shape: 1x3x8x8", f"  input_shape: 1x3x8x8\n  input_batch: {batch}")
    p = only(load(tmp_path, text).problems, "out-of-range")
    assert p.message == expected and p.path == ("input_parameters", "input_batch") and p.is_error


def test_a_minimum_without_maximum_is_not_told_as_a_cut_off_range(tmp_path):
    """`jobs: 0` read 'available range: 1~'."""
    text = GOOD_CONFIG.replace("  compile_mode: latency", "  compile_mode: latency\n  jobs: 0")
    p = only(load(tmp_path, text).problems, "out-of-range")
    assert p.message == "Invalid jobs: 0, it should be at least 1"


# ---------------------------------------------------------------- m5: a one-channel input's value count

def test_one_channel_input_asks_for_one_value(tmp_path):
    text = GOOD_CONFIG.replace("input_type_train: rgb", "input_type_train: gray").replace(
        "input_type_rt: nv12", "input_type_rt: gray").replace("1x3x8x8", "1x1x8x8").replace(
        "mean_value: 128 128 128", "mean_value: 128 128")
    p = only(load(tmp_path, text).problems, "norm-channels")
    assert p.message == "Wrong mean_value format 128 128: input 0 has 1 channel, so give 1 value, found 2"


def test_three_channel_input_still_offers_one_or_three(tmp_path):
    p = only(load(tmp_path, GOOD_CONFIG.replace("mean_value: 128 128 128", "mean_value: 128 128")).problems,
             "norm-channels")
    assert p.message == "Wrong mean_value format 128 128: input 0 has 3 channels, so give 1 or 3 values, found 2"


# ---------------------------------------------------------------- m11: odd nv12 size from the model's shape

def test_odd_model_shape_for_nv12_is_placed_on_input_type_rt(tmp_path):
    """No input_shape: the model's 1x3x15x16 is odd for nv12; the error sat on input_type_train (the
    section's first key), a key that has nothing to do with it."""
    text = GOOD_CONFIG.replace("  input_shape: 1x3x8x8\n", "")
    result = load(tmp_path, text)
    assert result.ok, [p.message for p in result.problems]
    found = locate(check_with_model(result.config.data, model_info(relu_model([1, 3, 15, 16]))), result.doc, None)
    p = only(found, "input-nv12-odd-size")
    assert p.path == ("input_parameters", "input_type_rt") and p.data["item"] == 0
    line = text.splitlines()[p.span.line]
    assert line[p.span.col:p.span.end_col] == "nv12", line
    assert "1x3x15x16" in p.message


def test_odd_model_shape_that_is_not_4d_is_placed_on_input_type_rt(tmp_path):
    text = GOOD_CONFIG.replace("  input_shape: 1x3x8x8\n", "")
    result = load(tmp_path, text)
    p = only(check_with_model(result.config.data, model_info(relu_model([1, 3, 16]))), "input-not-4d")
    assert p.path == ("input_parameters", "input_type_rt")


def test_odd_input_shape_stays_on_input_shape(tmp_path):
    p = only(load(tmp_path, GOOD_CONFIG.replace("1x3x8x8", "1x3x7x8")).problems, "input-nv12-odd-size")
    assert p.path == ("input_parameters", "input_shape")


# ---------------------------------------------------------------- m6 / m7: what the key docs promise

def test_config_docs_say_what_set_model_output_int8_and_remove_node_type_softmax_do():
    """m6: set_model_output_int8 read 'no dequantize to float', yet the .bc/.hbm output is float32 behind a
    DequantizeLinear; m7: `remove_node_type: Softmax` alone finds nothing behind a tail Dequantize."""
    from engine import schema

    optimization = schema.key_schema("calibration_parameters", "optimization")["x-hb-enum-descriptions"]
    assert "float32 through a tail Dequantize" in optimization["set_model_output_int8"]
    assert "remove_node_type: Dequantize" in optimization["set_model_output_int8"]
    assert "no dequantize to float" not in optimization["set_model_output_int8"]
    remove = schema.key_schema("model_parameters", "remove_node_type")
    assert "`Dequantize;Softmax`" in remove["description"] and "QLinearSoftmax" in remove["description"]
    page = (Path(__file__).resolve().parents[3] / "docs" / "config.md").read_text()
    assert remove["description"] in page and optimization["set_model_output_int8"] in page


# ---------------------------------------------------------------- m2: one error per token

@pytest.mark.parametrize("train, rt", [("gray", "grey"), ("rgb", "nv13")])
def test_an_invalid_input_type_rt_is_one_error_not_also_an_illegal_conversion(tmp_path, train, rt):
    text = GOOD_CONFIG.replace("input_type_train: rgb", f"input_type_train: {train}").replace(
        "input_type_rt: nv12", f"input_type_rt: {rt}")
    found = [p for p in load(tmp_path, text).problems if p.path == ("input_parameters", "input_type_rt")]
    assert [p.code for p in found] == ["invalid-enum"], [p.message for p in found]


def test_a_legal_value_that_is_no_legal_conversion_is_still_told(tmp_path):
    text = GOOD_CONFIG.replace("input_type_train: rgb", "input_type_train: gray")
    p = only(load(tmp_path, text).problems, "input-illegal-conversion")
    assert "'gray'" in p.message and "'nv12'" in p.message
