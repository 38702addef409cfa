"""Reviewer-found config-check bugs (session 4 review §4, §7, §14, §16 b/e): each test is the repro,
on the loader the CLI and the language server share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config.loader import load_config_text
from engine.problems import Problem, Severity
from tests.conftest import GOOD_CONFIG


def load(tmp_path: Path, text: str) -> list[Problem]:
    return load_config_text(text, tmp_path, "config.yaml", check_files=False).problems


def only(problems: list[Problem], code: str) -> Problem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, [(p.code, p.message) for p in problems]
    return found[0]


# ---------------------------------------------------------------- §4: no regular expression in messages

@pytest.mark.parametrize(("old", "new", "key", "example"), [
    ("input_shape: 1x3x8x8", "input_shape: 1X3X8X8", "input_shape", "1x3x224x224"),
    ("mean_value: 128 128 128", "mean_value: 'mean 1 2 3'", "mean_value", "103.94 116.78 123.68"),
    ("scale_value: 0.0078125", "scale_value: nan", "scale_value", "0.017"),
    ("scale_value: 0.0078125", "std_value: 'a b c'", "std_value", "58.4 57.1 57.4"),
])
def test_format_error_gives_an_example_not_the_pattern(tmp_path, old, new, key, example):
    problems = load(tmp_path, GOOD_CONFIG.replace(old, new))
    p = only(problems, "bad-format")
    assert p.path[-1] == key and p.span is not None and p.span.line + 1 == _line_of(GOOD_CONFIG, old)
    assert example in p.message, p.message
    assert "^" not in p.message and "\\d" not in p.message and "(?:" not in p.message, p.message
    assert len(p.message) < 200


def test_zero_dim_shape_says_the_same_as_a_capital_x(tmp_path):
    """One wording per key, whichever check (schema pattern or the shape parser) finds it."""
    zero = only(load(tmp_path, GOOD_CONFIG.replace("1x3x8x8", "0x3x8x8")), "bad-format").message
    capital = only(load(tmp_path, GOOD_CONFIG.replace("1x3x8x8", "1X3X8X8")), "bad-format").message
    assert zero.replace("0x3x8x8", "{}") == capital.replace("1X3X8X8", "{}")


def test_every_pattern_key_has_a_format_error_text():
    from engine import schema

    def walk(node, path):
        if isinstance(node, dict):
            if "pattern" in node and "if" not in path and "then" not in path:
                yield path, node
            for k, v in node.items():
                yield from walk(v, path + (k,))

    keys = list(walk(schema.load_schema(), ()))
    assert len(keys) >= 5
    for path, node in keys:
        assert "{value}" in node.get("x-hb-format-error", ""), path


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ---------------------------------------------------------------- §7: a required key with no value

def test_required_key_without_value_is_told_at_its_line(tmp_path):
    problems = load(tmp_path, GOOD_CONFIG.replace("  march: nash-e", "  march:"))
    assert not [p for p in problems if p.code == "missing-key"], [p.message for p in problems]
    p = only(problems, "empty-value")
    assert p.severity == Severity.ERROR and p.path == ("model_parameters", "march")
    assert p.message.startswith("march has no value"), p.message
    assert "nash-e" in p.message  # what is expected
    assert (p.span.line, p.span.col) == (2, 2)


def test_required_key_with_empty_string_is_told_too(tmp_path):
    problems = load(tmp_path, GOOD_CONFIG.replace("  input_type_rt: nv12", "  input_type_rt: ''"))
    p = only(problems, "empty-value")
    assert p.path == ("input_parameters", "input_type_rt") and p.span.line == 9


def test_absent_required_key_is_still_missing_on_the_parent(tmp_path):
    problems = load(tmp_path, GOOD_CONFIG.replace("  march: nash-e\n", ""))
    p = only(problems, "missing-key")
    assert "Missing keys: 'march'" in p.message and p.span.line == 0
    assert not [q for q in problems if q.code == "empty-value"]

# ---------------------------------------------------------------- §14: separate_batch / separate_name

@pytest.mark.parametrize("line", ["  separate_batch: true", "  separate_name: data"])
def test_separate_keys_warn_they_have_no_effect(tmp_path, line):
    text = GOOD_CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n" + line)
    problems = load(tmp_path, text)
    key = line.split(":")[0].strip()
    p = only(problems, "no-effect")
    assert p.severity == Severity.WARNING and p.path == ("input_parameters", key)
    assert f"'{key}' is recorded but has no effect" in p.message
    assert p.span.line == 11 and p.span.col == 2  # on the key


def test_separate_batch_false_is_silent(tmp_path):
    text = GOOD_CONFIG.replace("  input_shape: 1x3x8x8", "  input_shape: 1x3x8x8\n  separate_batch: false")
    assert not [p for p in load(tmp_path, text) if p.code == "no-effect"]

# ---------------------------------------------------------------- §16 b: nv12 odd size on the real layout

def test_wrong_layout_gives_no_false_odd_size_error(tmp_path):
    text = GOOD_CONFIG.replace("input_layout_train: NCHW", "input_layout_train: NHWC")
    problems = load(tmp_path, text)
    assert not [p for p in problems if p.code == "input-nv12-odd-size"], [p.message for p in problems]
    p = only(problems, "input-layout-shape")
    assert "try use NCHW" in p.message


def test_odd_size_under_the_resolved_layout_is_still_told(tmp_path):
    """1x3x7x8 declared NHWC: the layout is wrong, and under NCHW (what the shape is) H=7 is odd."""
    text = GOOD_CONFIG.replace("input_layout_train: NCHW", "input_layout_train: NHWC").replace("1x3x8x8", "1x3x7x8")
    codes = [p.code for p in load(tmp_path, text)]
    assert codes.count("input-layout-shape") == 1 and codes.count("input-nv12-odd-size") == 1


def test_odd_size_with_the_right_layout(tmp_path):
    codes = [p.code for p in load(tmp_path, GOOD_CONFIG.replace("1x3x8x8", "1x3x7x8"))]
    assert codes.count("input-nv12-odd-size") == 1


# ---------------------------------------------------------------- §16 e: a node on both CPU and BPU

def test_node_in_run_on_cpu_and_run_on_bpu_is_a_warning_naming_it(tmp_path):
    text = GOOD_CONFIG.replace("  calibration_type: max",
                               "  calibration_type: max\n  run_on_cpu: Conv_0;Relu_2\n  run_on_bpu: Relu_2")
    p = only(load(tmp_path, text), "cpu-and-bpu")
    assert p.severity == Severity.WARNING and "'Relu_2'" in p.message and "Conv_0" not in p.message
    assert re.search(r"run_on_cpu wins|runs on CPU", p.message)
    assert p.path == ("calibration_parameters", "run_on_bpu") and p.span.line == 16
