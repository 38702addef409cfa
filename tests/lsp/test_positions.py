"""Position conversion: engine spans (code points, YAML line breaks) → LSP (UTF-16 / UTF-8 units)."""

from __future__ import annotations

from lsprotocol import types

from engine.config.yamltree import parse_yaml
from engine.problems import Span
from hblsp.positions import UTF8, UTF16, UTF32, Positions, column_from_units, units


def test_units():
    assert [units("a😀é", e) for e in (UTF16, UTF8, UTF32)] == [4, 7, 3]
    assert [column_from_units("a😀é!", n, UTF16) for n in (0, 1, 3, 4, 9)] == [0, 1, 2, 3, 4]


def test_span_after_astral_characters():
    text = "k: '😀数'  # x\nkey: 😀value\n"
    node = parse_yaml(text).root.get("key")
    assert node.span == Span(1, 5, 1, 11)  # code points
    assert Positions(text, UTF16).range(node.span) == types.Range(
        start=types.Position(1, 5), end=types.Position(1, 12))
    assert Positions(text, UTF8).range(node.span) == types.Range(
        start=types.Position(1, 5), end=types.Position(1, 14))


def test_yaml_only_line_breaks_map_through_offsets():
    """U+2028 breaks a YAML line but not an LSP line: the engine's line 2 is the client's line 1."""
    text = "a: \"x\u2028y\"\nb: zz\n"
    node = parse_yaml(text).root.get("b")
    assert node.span.line == 2
    p = Positions(text, UTF16)
    assert p.range(node.span) == types.Range(start=types.Position(1, 3), end=types.Position(1, 5))


def test_crlf_and_end_of_document():
    text = "a: 1\r\nb: 2"
    p = Positions(text, UTF16)
    assert p.lines == ["a: 1", "b: 2"]
    assert p.range(Span(5, 0, 5, 0)) == types.Range(start=types.Position(1, 4), end=types.Position(1, 4))
    assert p.offset(1, 3) == 9 and p.position_at(9) == types.Position(1, 3)
