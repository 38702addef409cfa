"""Where the cursor is in config terms, read from the lines alone (works while the YAML is broken).

Completion is asked for mid-keystroke, when the document often does not parse (`  inp` has no
colon yet). Configs are block mappings two or three levels deep, so the key path is found from
indentation: the nearest less-indented `key:` lines above the cursor are its parents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY_LINE = re.compile(r"""^(?P<indent>[ ]*)(?:-[ ]+)?(?P<key>"[^"]*"|'[^']*'|[^\s#:'"\-][^:#]*?|-[^\s:#][^:#]*?)[ \t]*:(?=[ \t]|$)""")


@dataclass(frozen=True)
class Item:
    """One entry of a `;` (or `,`) list value, or the whole value: text and its columns."""

    index: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Cursor:
    line: int
    column: int
    path: tuple[str, ...]  # the mapping the key belongs to; for a value, ends with that value's key
    in_value: bool
    key: str  # the key token (partial while typing a key)
    key_start: int
    key_end: int
    has_colon: bool
    value_start: int  # columns of the value's content (inside quotes), for values
    value_end: int
    quote: str | None

    def item(self, line_text: str, sep: str | None) -> Item:
        """The list item around the cursor (the whole value when `sep` is None)."""
        start = self.value_start
        end = max(self.value_end, self.column)
        col = max(self.column, start)
        text = line_text[start:end]
        parts = text.split(sep) if sep else [text]
        pos = start
        for index, part in enumerate(parts):
            part_end = pos + len(part)
            if col <= part_end or index == len(parts) - 1:
                s = min(pos + len(part) - len(part.lstrip()), col)
                e = max(pos + len(part.rstrip()), col)
                return Item(index, s, e, line_text[s:e])
            pos = part_end + len(sep or "")
        return Item(0, col, col, "")  # pragma: no cover - the loop always returns


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"" else key


def code_end(line: str) -> int:
    """Column where a trailing `# comment` starts (quotes respected), else the line's length."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return len(line)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parents(lines: list[str], line: int, indent: int) -> tuple[str, ...]:
    """Keys of the enclosing mappings, outermost first."""
    path: list[str] = []
    for i in range(min(line, len(lines)) - 1, -1, -1):
        if indent == 0:
            break
        text = lines[i]
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        ind = indent_of(text)
        if ind >= indent:
            continue
        m = KEY_LINE.match(text)
        if m is None or text[m.end():code_end(text)].strip():
            break  # a less-indented line that does not open a mapping: not a block we understand
        path.append(_unquote(m.group("key").strip()))
        indent = ind
    return tuple(reversed(path))


def cursor_at(lines: list[str], line: int, column: int) -> Cursor | None:
    """The cursor's config context, or None inside a comment or past the document."""
    if not 0 <= line < len(lines):
        return None
    text = lines[line]
    column = min(column, len(text))
    end = code_end(text)
    if column > end or text.lstrip().startswith("#"):
        return None
    m = KEY_LINE.match(text)
    if m is not None and column > m.end() - 1:
        raw = m.group("key")
        value_start = m.end()
        while value_start < end and text[value_start] in " \t":
            value_start += 1
        value_end = len(text[:end].rstrip())
        value_end = max(value_end, value_start)
        quote = None
        if value_start < value_end and text[value_start] in "'\"":
            quote = text[value_start]
            close = text.find(quote, value_start + 1, end)
            value_start += 1
            value_end = close if close != -1 else value_end
        path = parents(lines, line, indent_of(text)) + (_unquote(raw.strip()),)
        return Cursor(line, max(column, value_start), path, True, _unquote(raw.strip()), m.start("key"), m.end("key"), True,
                      value_start, max(value_end, value_start), quote)
    indent = indent_of(text) if text.strip() else column
    stripped_start = indent
    if text[indent:indent + 2] == "- ":
        stripped_start = indent + 2
    if m is not None:
        key_start, key_end, has_colon = m.start("key"), m.end("key"), True
    else:
        key_start = stripped_start
        key_end = key_start
        while key_end < end and text[key_end] not in " \t:#":
            key_end += 1
        has_colon = False
    key = _unquote(text[key_start:key_end])
    return Cursor(line, column, parents(lines, line, indent), False, key, key_start, key_end, has_colon,
                  column, column, None)


def sibling_keys(lines: list[str], line: int, indent: int) -> set[str]:
    """Keys already present in the mapping the cursor's line belongs to (same indent, same block)."""
    found: set[str] = set()
    for step in (-1, 1):
        i = line + step
        while 0 <= i < len(lines):
            text = lines[i]
            stripped = text.strip()
            i += step
            if not stripped or stripped.startswith("#"):
                continue
            ind = indent_of(text)
            if ind < indent:
                break
            if ind == indent and (m := KEY_LINE.match(text)) is not None:
                found.add(_unquote(m.group("key").strip()))
    return found


def indent_unit(lines: list[str]) -> int:
    """The document's indentation step (2 unless the first indented key says otherwise)."""
    for text in lines:
        if text.strip() and not text.lstrip().startswith("#") and indent_of(text) > 0:
            return indent_of(text)
    return 2
