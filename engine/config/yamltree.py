"""YAML text → a tree of values that remember where they came from.

Every diagnostic must land on the exact key or value token, so the config is parsed once with
PyYAML's `compose` (C loader when available) into `YNode`s carrying spans; plain Python values
are derived from that tree. Anchors/aliases are refused (no config needs them and they allow
"billion laughs" expansion); duplicate keys are reported, not silently overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from engine.problems import Problem, Span, error

try:  # the C loader is ~10x faster; fall back quietly where libyaml is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

MAX_NODES = 100_000
MAX_DEPTH = 64


@dataclass
class YNode:
    """A YAML node: `kind` is 'map', 'seq' or 'scalar'; `value` the Python value for scalars."""

    kind: str
    span: Span
    value: Any = None
    tag: str = ""
    # map: list of (key node, value node) in document order; seq: list of nodes
    items: list = field(default_factory=list)
    style: str | None = None  # scalar quoting style ('"', "'", None for plain)
    flow: bool = False  # map / seq written in flow style (`{a: 1}`, `[1, 2]`): edits must stay inside

    def get(self, key: str) -> YNode | None:
        for k, v in self.items if self.kind == "map" else ():
            if k.value == key:
                return v
        return None

    def key_node(self, key: str) -> YNode | None:
        for k, _ in self.items if self.kind == "map" else ():
            if k.value == key:
                return k
        return None

    def to_python(self) -> Any:
        if self.kind == "map":
            return {k.value: v.to_python() for k, v in self.items}
        if self.kind == "seq":
            return [v.to_python() for v in self.items]
        return self.value


@dataclass
class YamlDoc:
    """A parsed config text: the root node (None for an empty document) and parse problems."""

    root: YNode | None
    problems: list[Problem]
    text: str = ""

    def node_at(self, path: tuple) -> YNode | None:
        """The value node at a key path (str keys, int indices), or None."""
        node = self.root
        for part in path:
            if node is None:
                return None
            if node.kind == "map" and isinstance(part, str):
                node = node.get(part)
            elif node.kind == "seq" and isinstance(part, int) and part < len(node.items):
                node = node.items[part]
            else:
                return None
        return node

    def key_span(self, path: tuple) -> Span | None:
        """Span of the key token of the last path element (where 'unknown key' belongs)."""
        if not path:
            return None
        parent = self.node_at(path[:-1])
        if parent is not None and parent.kind == "map":
            k = parent.key_node(path[-1])
            if k is not None:
                return k.span
        return None

    def span_for(self, path: tuple, on_key: bool = False) -> Span | None:
        """Best span for a problem at `path`: the value (or key), else the nearest ancestor key."""
        for cut in range(len(path), 0, -1):
            sub = path[:cut]
            if on_key or cut < len(path):
                span = self.key_span(sub)
                if span:
                    return span
            node = self.node_at(sub)
            if node is not None:
                return node.span
        return Span(0, 0, 0, 0)

    def item_span(self, path: tuple, index: int, sep: str = ";") -> Span | None:
        """Span of item `index` inside a one-line `;`-list scalar (e.g. 'nv12; rgb'), if findable."""
        node = self.node_at(path)
        if node is None or node.kind != "scalar" or node.span.line != node.span.end_line:
            return None
        line = self.text.splitlines()[node.span.line] if node.span.line < len(self.text.splitlines()) else ""
        raw = line[node.span.col:node.span.end_col]
        offset = node.span.col
        if raw[:1] in ("'", '"'):
            raw, offset = raw[1:-1], offset + 1
        pos = 0
        for i, part in enumerate(raw.split(sep)):
            if i == index:
                stripped = part.strip()
                if not stripped:
                    return None
                start = offset + pos + part.index(stripped)
                return Span(node.span.line, start, node.span.line, start + len(stripped))
            pos += len(part) + len(sep)
        return None


def _span(node: yaml.Node) -> Span:
    s, e = node.start_mark, node.end_mark
    return Span(s.line, s.column, e.line, e.column)


def _mark_span(mark) -> Span:
    if mark is None:
        return Span(0, 0, 0, 1)
    return Span(mark.line, mark.column, mark.line, mark.column + 1)


class _Builder:
    def __init__(self) -> None:
        self.count = 0
        self.problems: list[Problem] = []
        self.ctor = SafeConstructor()

    def build(self, node: yaml.Node, depth: int = 0, path: tuple = ()) -> YNode:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(f"the document has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise _TooBig(f"the document nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            out = YNode("map", _span(node), tag=node.tag, flow=bool(node.flow_style))
            seen: dict[Any, Span] = {}
            for knode, vnode in node.value:
                key = self.build(knode, depth + 1, path)
                if key.kind != "scalar":
                    self.problems.append(error("yaml-complex-key", "A key must be a plain word", path,
                                               span=key.span))
                    continue
                # keys are names: YAML 1.1 would read `ON:` (node_info) as True, `1:` as an int
                key_value = knode.value if isinstance(knode, yaml.ScalarNode) else str(key.value)
                key.value = key_value
                if key_value in seen:
                    first = seen[key_value]
                    self.problems.append(error(
                        "yaml-duplicate-key",
                        f"Duplicate key '{key_value}' (first defined on line {first.line + 1}); "
                        "only one value is allowed",
                        path + (key_value,), span=key.span))
                seen[key_value] = key.span
                out.items.append((key, self.build(vnode, depth + 1, path + (key_value,))))
            return out
        if isinstance(node, yaml.SequenceNode):
            out = YNode("seq", _span(node), tag=node.tag, flow=bool(node.flow_style))
            out.items = [self.build(v, depth + 1, path + (i,)) for i, v in enumerate(node.value)]
            return out
        try:
            value = self.ctor.construct_object(node, deep=True)
        except (ConstructorError, ValueError) as exc:
            self.problems.append(error("yaml-bad-scalar", f"Cannot read value {node.value!r}: {exc}",
                                       path, span=_span(node)))
            value = node.value
        return YNode("scalar", _span(node), value=value, tag=node.tag, style=node.style)


class _TooBig(Exception):
    pass


def parse_yaml(text: str) -> YamlDoc:
    """Parse config text. Never raises for bad input: problems come back in `YamlDoc.problems`."""
    if "\x00" in text:
        return YamlDoc(None, [error("yaml-binary", "The config is not a text file (it contains NUL bytes)",
                                    span=Span(0, 0, 0, 1))])
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        return YamlDoc(None, [_syntax_problem(text, exc)])
    except yaml.YAMLError as exc:
        return YamlDoc(None, [error("yaml-syntax", f"yaml file parse failed: {exc}", span=Span(0, 0, 0, 1))])
    if root is None:
        return YamlDoc(None, [])
    anchor = _find_alias(root)
    if anchor is not None:
        return YamlDoc(None, [error("yaml-alias", "YAML anchors and aliases (&, *) are not allowed in a config",
                                    span=anchor)])
    builder = _Builder()
    try:
        tree = builder.build(root)
    except _TooBig as exc:
        return YamlDoc(None, [error("yaml-too-big", f"The config is too large: {exc}", span=Span(0, 0, 0, 1))])
    except RecursionError:
        return YamlDoc(None, [error("yaml-too-big", "The config nests too deeply", span=Span(0, 0, 0, 1))])
    return YamlDoc(tree, builder.problems, text)


def _find_alias(root: yaml.Node) -> Span | None:
    """Aliased nodes appear as the same object twice; find one without expanding anything."""
    seen: set[int] = set()
    stack = [root]
    visited = 0
    while stack:
        node = stack.pop()
        visited += 1
        if id(node) in seen:
            return _span(node)
        seen.add(id(node))
        if visited > MAX_NODES:
            return None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None


_QUOTED_VALUE = re.compile(r"""^\s*(?:-\s+)?[^#'"\s][^#'"]*?:\s+(['"])""")  # key: 'value… / - key: "value…
_FLOW = {"while parsing a flow sequence": "[", "while parsing a flow mapping": "{"}


def _syntax_problem(text: str, exc: yaml.MarkedYAMLError) -> Problem:
    """One line on the token being typed: PyYAML's problem mark is often the line after it (a key without
    its ':' is found out at the next line; an unclosed bracket or quote at the end of the file or at a
    later apostrophe), its context mark is where the token began."""
    mark = exc.problem_mark or exc.context_mark
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    indent = line[:len(line) - len(line.lstrip(" \t"))]
    if mark is not None and ("'\\t'" in (exc.problem or "") or "\t" in indent):
        col = line.index("\t")
        msg = (f"yaml file parse failed: tab character used for indentation on line {mark.line + 1}; "
               "use spaces. Please double check your input")
        return error("yaml-tab", msg, span=Span(mark.line, col, mark.line, col + 1))
    quote = _unclosed_quote(lines, mark.line if mark is not None else len(lines))
    if quote is None and exc.context and "quoted scalar" in exc.context and exc.context_mark is not None:
        quote = (exc.context_mark.line, exc.context_mark.column)
    if quote is not None:
        row, col = quote
        msg = (f"yaml file parse failed: unclosed quote starting on line {row + 1}. "
               "Please double check your input")
        return error("yaml-syntax", msg, span=Span(row, col, row, max(len(lines[row]) if row < len(lines) else 0,
                                                                        col + 1)))
    start = exc.context_mark
    if exc.context == "while scanning a simple key" and start is not None and start.line < len(lines):
        word = lines[start.line][start.column:].split("#")[0].rstrip()
        msg = (f"yaml file parse failed: '{word}' on line {start.line + 1} is not a 'key: value' (could not find "
               "expected ':'). Please double check your input")
        return error("yaml-syntax", msg, span=Span(start.line, start.column, start.line,
                                                   start.column + max(len(word), 1)))
    if exc.context in _FLOW and start is not None:
        msg = (f"yaml file parse failed: unclosed '{_FLOW[exc.context]}' starting on line {start.line + 1} "
               f"({exc.problem}). Please double check your input")
        return error("yaml-syntax", msg, span=Span(start.line, start.column, start.line, start.column + 1))
    detail = f"{exc.context}, {exc.problem}" if exc.context else (exc.problem or str(exc))
    msg = f"yaml file parse failed: {detail}. Please double check your input"
    return error("yaml-syntax", msg, span=_mark_span(mark))


_STRUCTURE_LINE = re.compile(r"^\s*(#|-\s|[\w.-]+\s*:(\s|$))")  # a comment, a list item or a `key:` line


def _unclosed_quote(lines: list[str], upto: int) -> tuple[int, int] | None:
    """(line, column) of the first quoted value before line `upto` that is left open: it does not close on
    its own line and the lines it then swallows look like the config's structure (a `key:`, a comment,
    a list item), not like the continuation of a multi-line quoted value (which YAML allows). A quote left
    open swallows the text up to the next quote character, often an apostrophe in a later comment, and
    PyYAML complains there."""
    for row in range(min(upto, len(lines))):
        m = _QUOTED_VALUE.match(lines[row])
        if m is None:
            continue
        q = m.group(1)
        if q in _unescaped(q, lines[row][m.end():]):
            continue
        for later in lines[row + 1:upto + 1]:
            if _STRUCTURE_LINE.match(later):
                return row, m.end() - 1
            if q in _unescaped(q, later):
                break  # closed on a continuation line: a multi-line value
    return None


def _unescaped(q: str, text: str) -> str:
    return text.replace("\'\'", "") if q == "\'" else re.sub(r"\\.", "", text)
