"""A YAML error while a config is typed lands on the token being typed (review s7 R-L 1): PyYAML finds a key
without its ':' at the next line, an unclosed bracket at the end of the file, an unclosed quote at a later
apostrophe; the editor's squiggle and the CLI's LINE:COL followed it there."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.yamltree import parse_yaml

DIGITS = (Path(__file__).resolve().parents[3] / "examples" / "digits" / "digits.hb.yaml").read_text()

CASES = {  # name: (edit, the line's text the error must sit on, its column, words the message has)
    "a key typed without its colon, a comment below": (("  march: nash-e\n", "  march: nash-e\n  opt\n"),
                                                      "  opt", 2, ["'opt'", "key: value"]),
    "a section name typed above another": (("input_parameters:\n", "cal\ninput_parameters:\n"), "cal", 0, ["'cal'"]),
    "an unclosed flow sequence": (("  jobs: 2", "  jobs: [2"), "  jobs: [2", 8, ["unclosed '['"]),
    "an unclosed flow mapping": (("  jobs: 2", "  jobs: {a: 2"), "  jobs: {a: 2", 8, ["unclosed '{'"]),
    "an unclosed quote, an apostrophe in a later comment": (("working_dir: model_output", "working_dir: 'model_output"),
                                                            "  working_dir: 'model_output", 15, ["unclosed quote"]),
    "an unclosed double quote": (("working_dir: model_output", 'working_dir: "model_output'),
                                 '  working_dir: "model_output', 15, ["unclosed quote"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_error_sits_on_the_token_being_typed(name):
    (old, new), line_text, col, words = CASES[name]
    assert old in DIGITS
    text = DIGITS.replace(old, new, 1)
    [p] = parse_yaml(text).problems
    assert text.splitlines()[p.span.line] == line_text and p.span.col == col, (p.span, p.message)
    assert all(w in p.message for w in words) and "\n" not in p.message, p.message


def test_a_tab_in_a_comment_is_not_called_indentation():
    text = DIGITS.replace("  march: nash-e\n", "  march: nash-e\n  opt\n", 1).replace(
        "  # Folder for the intermediate", "  #\tFolder for the intermediate")
    [p] = parse_yaml(text).problems
    assert p.code == "yaml-syntax" and "'opt'" in p.message, p.message


def test_a_tab_in_the_indentation_is_told():
    text = DIGITS.replace("  march: nash-e", "\tmarch: nash-e")
    [p] = parse_yaml(text).problems
    assert p.code == "yaml-tab" and text.splitlines()[p.span.line] == "\tmarch: nash-e"


def test_a_quoted_value_continued_on_the_next_line_is_not_called_unclosed():
    """YAML lets a quoted value go on over lines; the error below it (a key without its ':') is the one told."""
    text = ('model_parameters:\n  remove_node_type: "Quantize;\n    Dequantize"\n  march bayes-e\n'
            '  onnx_model: m.onnx\n')
    [p] = parse_yaml(text).problems
    assert "'march bayes-e'" in p.message and p.span.line == 3, (p.span, p.message)
