"""The cursor's config context from lines alone (works while the YAML does not parse)."""

from __future__ import annotations

import pytest

from hblsp.cursor import Item, cursor_at, indent_unit, sibling_keys

LINES = """\
model_parameters:
  onnx_model: model.onnx   # the float model
  mar
input_parameters:
  input_type_rt: 'nv12; rg'
  input_layout_train: NCHW;
  # a comment line
compiler_parameters:
  input_source:
    data: dd
""".splitlines()


@pytest.mark.parametrize(("line", "col", "path", "in_value", "key"), [
    (0, 3, (), False, "model_parameters"),
    (2, 5, ("model_parameters",), False, "mar"),
    (1, 16, ("model_parameters", "onnx_model"), True, "onnx_model"),
    (4, 26, ("input_parameters", "input_type_rt"), True, "input_type_rt"),
    (9, 10, ("compiler_parameters", "input_source", "data"), True, "data"),
    (7, 0, (), False, "compiler_parameters"),
])
def test_context(line, col, path, in_value, key):
    cur = cursor_at(LINES, line, col)
    assert (cur.path, cur.in_value, cur.key) == (path, in_value, key)


def test_items_of_lists():
    cur = cursor_at(LINES, 4, 26)
    assert cur.item(LINES[4], ";") == Item(1, 24, 26, "rg")
    first = cursor_at(LINES, 4, 19)
    assert first.item(LINES[4], ";").text == "nv12"
    empty = cursor_at(LINES, 5, len(LINES[5]))
    assert empty.item(LINES[5], ";").index == 1 and empty.item(LINES[5], ";").text == ""


def test_comments_and_outside():
    assert cursor_at(LINES, 1, 30) is None  # in the trailing comment
    assert cursor_at(LINES, 6, 5) is None
    assert cursor_at(LINES, 42, 0) is None


def test_siblings_and_indent():
    assert sibling_keys(LINES, 2, 2) == {"onnx_model"}
    assert sibling_keys(LINES, 3, 0) == {"model_parameters", "compiler_parameters"}
    assert indent_unit(LINES) == 2 and indent_unit(["a:", "    b: 1"]) == 4
