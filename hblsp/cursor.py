"""Where the cursor is in config terms, read from the lines alone (works while the YAML is broken).

Completion is asked for mid-keystroke, when the document often does not parse (`  inp` has no
colon yet). Configs are block mappings two or three levels deep, so the key path is found from
indentation: the nearest less-indented `key:` lines above the cursor are its parents.

Inside a flow collection (`node_info: {conv1: {ON: BPU}}`, on one line or several) indentation
says nothing, so the text from the block key that opens the flow is read with PyYAML's scanner:
its tokens (with marks) give the keys, values and nesting up to the cursor even when the rest of
the document does not parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

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
    flow: bool = False  # inside a flow collection: an insert stays on the line (`key: value`, no block)
    siblings: frozenset[str] | None = None  # keys of the flow mapping at the cursor (block: read from lines)
    sequence: bool = False  # an item of a flow sequence (`[a, |]`): a value only a list-typed key takes

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
    in_flow = flow_cursor(lines, line, column)
    if in_flow is not None:
        return in_flow
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


# ---------------------------------------------------------------- flow collections

FLOW_OPEN = re.compile(r"[ \t]*[\[{]")
MAX_FLOW_LINES = 200  # how far above (and below) the cursor a flow collection is followed
_STRUCTURE = (yaml.BlockMappingStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
              yaml.FlowSequenceStartToken)
_ENDS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


@dataclass
class _Frame:
    """One open collection while tokens are read: a mapping remembers its current key and side."""

    flow: bool
    mapping: bool
    key: str | None = None
    in_value: bool = False
    keys: set[str] = field(default_factory=set)


@dataclass
class _Reader:
    """Applies scanner tokens to a stack of open collections."""

    stack: list[_Frame] = field(default_factory=list)
    opened: bool = False  # the start line's own mapping was opened (its end ends the scope)

    def apply(self, tok: yaml.Token) -> None:
        top = self.stack[-1] if self.stack else None
        if isinstance(tok, _STRUCTURE):
            flow = isinstance(tok, (yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken))
            mapping = isinstance(tok, (yaml.BlockMappingStartToken, yaml.FlowMappingStartToken))
            self.stack.append(_Frame(flow, mapping))
            self.opened = True
        elif isinstance(tok, _ENDS):
            if self.stack:
                self.stack.pop()
        elif top is None or not top.mapping:
            return
        elif isinstance(tok, (yaml.KeyToken, yaml.FlowEntryToken)):
            top.key, top.in_value = None, False
        elif isinstance(tok, yaml.ValueToken):
            top.in_value = True
        elif isinstance(tok, yaml.ScalarToken) and not top.in_value:
            top.key = tok.value
            top.keys.add(tok.value)

    @property
    def closed(self) -> bool:
        return self.opened and not self.stack


def _flow_starts(lines: list[str], line: int) -> list[int]:
    """Block `key:` lines at or above the cursor whose value opens a flow collection, outermost first."""
    starts: list[int] = []
    for i in range(line, max(-1, line - MAX_FLOW_LINES), -1):
        text = lines[i]
        m = KEY_LINE.match(text)
        if m is not None and FLOW_OPEN.match(text, m.end()):
            starts.append(i)
        if text.strip() and not text.lstrip().startswith("#") and indent_of(text) == 0:
            break
    return starts[::-1]


def flow_cursor(lines: list[str], line: int, column: int) -> Cursor | None:
    """The cursor's context when it is inside a flow collection, else None (the block reading applies)."""
    for start in _flow_starts(lines, line):
        cur = _flow_context(lines, start, line, column)
        if cur is not None:
            return cur
    return None


def _flow_context(lines: list[str], start: int, line: int, column: int) -> Cursor | None:
    """Read tokens from `lines[start]` to the cursor (and on, for the keys after it)."""
    text = "\n".join(lines[start:line + MAX_FLOW_LINES])
    at = (line, column)
    reader = _Reader()
    under: yaml.ScalarToken | None = None  # the scalar the cursor is in (or touches)
    snapshot: tuple[list[_Frame], list[tuple[str | None, bool]]] | None = None
    has_colon = False
    after: list[yaml.Token] = []

    def where(mark: yaml.Mark) -> tuple[int, int]:
        return mark.line + start, mark.column

    def take() -> tuple[list[_Frame], list[tuple[str | None, bool]]]:
        return list(reader.stack), [(f.key, f.in_value) for f in reader.stack]

    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            s, e = where(tok.start_mark), where(tok.end_mark)
            if snapshot is None:
                if isinstance(tok, yaml.ScalarToken) and s <= at <= e:
                    under = tok
                    snapshot = take()
                    continue
                if s < at or (s == at and e == at and not isinstance(tok, _ENDS)):
                    reader.apply(tok)
                    if reader.closed:
                        return None  # the start line's mapping ended before the cursor
                    continue
                snapshot = take()
            after.append(tok)
            if len(after) == 1 and under is not None:
                has_colon = isinstance(tok, yaml.ValueToken) and s[0] == line
            reader.apply(tok)
            if not snapshot[0] or all(f is not snapshot[0][-1] for f in reader.stack):
                break  # the collection at the cursor is closed: its keys are all read
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if snapshot is None and (mark is None or where(mark) < at):
            return None  # broken before the cursor: the tokens do not describe it
    if snapshot is None:
        snapshot = take()
    frames, sides = snapshot
    if not any(f.flow for f in frames):
        return None
    path = parents(lines, start, indent_of(lines[start]))
    for key, in_value in sides[:-1]:
        if in_value and key is not None:
            path += (_unquote(key),)
    top, (top_key, top_in_value) = frames[-1], sides[-1]
    text_line = lines[line]
    s_col, e_col, quote = _extent(text_line, column, under, line, start)
    if top.mapping and not top_in_value:
        key = text_line[s_col:e_col]
        return Cursor(line, column, path, False, key, s_col, e_col, has_colon, column, column, None, True,
                      frozenset(top.keys))
    if top.mapping:
        path += (top_key or "",)
    return Cursor(line, column, path, True, path[-1] if path else "", s_col, s_col, True, s_col, e_col, quote, True,
                  sequence=not top.mapping)


def _extent(text: str, column: int, under: yaml.ScalarToken | None, line: int, start: int) -> tuple[int, int, str | None]:
    """Columns of the scalar at the cursor on its line (inside quotes) and its quote character."""
    if under is not None:
        s_line, e_line = under.start_mark.line + start, under.end_mark.line + start
        s = under.start_mark.column if s_line == line else indent_of(text)
        e = under.end_mark.column if e_line == line else len(text[:code_end(text)].rstrip())
        quote = under.style if under.style in ("'", '"') else None
        if quote:
            s += 1 if s_line == line else 0
            e -= 1 if e_line == line and e > s else 0
        return s, max(e, s), quote
    # no token: an unclosed quote (or nothing typed yet) — the word around the cursor
    stops = " \t,{}[]:'\""
    s = column
    while s > 0 and text[s - 1] not in stops:
        s -= 1
    e = column
    while e < len(text) and text[e] not in stops + "#":
        e += 1
    quote = text[s - 1] if s > 0 and text[s - 1] in "'\"" else None
    return s, e, quote
