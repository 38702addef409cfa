"""Positions: YAML marks (code points, YAML's line breaks) ↔ LSP positions (client code units).

Two differences matter. LSP counts `character` in the negotiated encoding (UTF-16 by default,
UTF-8 for Neovim), while the engine's spans count code points: "é" is 1 unit in UTF-16 but 2 in
UTF-8, "😀" is 2 in UTF-16. And YAML also breaks lines at U+0085, U+2028 and U+2029 where LSP
breaks only at `\\n`, `\\r\\n` and `\\r`, so a span's line is mapped through its offset in the text.
"""

from __future__ import annotations

import bisect
import re
from functools import cached_property

from lsprotocol import types

from engine.problems import Span

LSP_BREAK = re.compile(r"\r\n|\r|\n")
YAML_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_YAML_ONLY = ("\x85", "\u2028", "\u2029")

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"


def units(text: str, encoding: str) -> int:
    """Length of `text` in the client's code units."""
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def column_from_units(line: str, count: int, encoding: str) -> int:
    """Code point column for a client column; past the end clamps to the line's end."""
    if encoding == UTF32 or line.isascii():
        return max(0, min(count, len(line)))
    seen = 0
    for i, c in enumerate(line):
        if seen >= count:
            return i
        seen += units(c, encoding)
    return len(line)


def _starts(text: str, pattern: re.Pattern) -> list[int]:
    return [0] + [m.end() for m in pattern.finditer(text)]


class Positions:
    """Position conversions for one document version (built lazily, kept with the version)."""

    def __init__(self, text: str, encoding: str = UTF16):
        self.text = text
        self.encoding = encoding

    @cached_property
    def line_starts(self) -> list[int]:
        return _starts(self.text, LSP_BREAK)

    @cached_property
    def _yaml_starts(self) -> list[int]:
        if not any(c in self.text for c in _YAML_ONLY):
            return self.line_starts
        return _starts(self.text, YAML_BREAK)

    @cached_property
    def lines(self) -> list[str]:
        """The document's lines as the client sees them, without line terminators."""
        return LSP_BREAK.split(self.text)

    def line(self, index: int) -> str:
        lines = self.lines
        return lines[index] if 0 <= index < len(lines) else ""

    # ---- LSP line + code point column  ↔  client position
    def position(self, line: int, column: int) -> types.Position:
        text = self.line(line)
        column = max(0, min(column, len(text)))
        return types.Position(line=max(line, 0), character=units(text[:column], self.encoding))

    def column(self, pos: types.Position) -> int:
        """Code point column of a client position on its line."""
        return column_from_units(self.line(pos.line), pos.character, self.encoding)

    # ---- YAML span → client range
    def _from_yaml(self, line: int, col: int) -> tuple[int, int]:
        starts = self._yaml_starts
        if starts is self.line_starts:
            return line, col
        if line >= len(starts):
            offset = len(self.text)
        else:
            offset = min(starts[line] + col, len(self.text))
        lsp_line = bisect.bisect_right(self.line_starts, offset) - 1
        return lsp_line, offset - self.line_starts[lsp_line]

    def range(self, span: Span | None) -> types.Range:
        """A client range for an engine span (None: the first character, where file-level problems go)."""
        if span is None:
            return types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0))
        sl, sc = self._from_yaml(span.line, span.col)
        el, ec = self._from_yaml(span.end_line, span.end_col)
        last = len(self.lines) - 1
        if sl > last:  # a mark after the final line break: the end of the document
            sl, sc = last, len(self.line(last))
        if el > last:
            el, ec = last, len(self.line(last))
        return types.Range(start=self.position(sl, sc), end=self.position(el, ec))

    def offset(self, line: int, column: int) -> int:
        """Text offset of an LSP line + code point column."""
        starts = self.line_starts
        if line >= len(starts):
            return len(self.text)
        return min(starts[line] + column, len(self.text))

    def yaml_offset(self, line: int, col: int) -> int:
        """Text offset of an engine (YAML) line + column."""
        lsp_line, column = self._from_yaml(line, col)
        return self.offset(lsp_line, column)

    def lsp_line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset) - 1

    def position_at(self, offset: int) -> types.Position:
        line = self.lsp_line_of(offset)
        return self.position(line, offset - self.line_starts[line])
