"""Hover: what a key means (description, type, default, allowed values, deprecation), what a value
means (an enum value's meaning, a march's ranges), and for a model name its op type and shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from engine.frontend.model_info import ModelInfo
from hblsp import schema_view as sv
from hblsp.cursor import cursor_at
from hblsp.documents import ConfigDoc
from hblsp.explain import input_markdown, key_markdown, node_markdown, value_markdown

if TYPE_CHECKING:
    from hblsp.server import HbServer


def _model_markdown(kind: str | None, name: str, model: ModelInfo | None) -> str | None:
    if model is None or not kind:
        return None
    if kind == "node_name":
        node = model.node(name)
        return node_markdown(node, model) if node else None
    if kind == "input_name":
        t = next((t for t in model.inputs if t.name == name), None)
        return input_markdown(t) if t else None
    return None


def hover_at(doc: ConfigDoc, pos: types.Position, model: ModelInfo | None) -> types.Hover | None:
    """Pure core: the hover for a client position, or None where there is nothing to explain."""
    if not doc.is_config:
        return None
    p = doc.positions
    cur = cursor_at(p.lines, pos.line, p.column(pos))
    if cur is None:
        return None
    line = p.lines[cur.line]
    if not cur.in_value:
        if not cur.key:
            return None
        start, end = cur.key_start, cur.key_end
        text = _model_markdown(sv.model_values(sv.at(cur.path)), cur.key, model) if sv.entry_schema(cur.path) else None
        if text is None and cur.key in sv.key_names(cur.path):
            text = key_markdown(cur.path + (cur.key,), doc.data)
    else:
        s = sv.at(cur.path)
        if s is None:
            return None
        item = cur.item(line, sv.separator(s))
        start, end = item.start, item.end
        value = item.text.strip()
        text = None
        if value:
            text = value_markdown(cur.path, value) or _model_markdown(sv.model_values(s), value, model)
        if text is None:
            text = key_markdown(cur.path, doc.data)
    if not text:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text),
                       range=types.Range(start=p.position(cur.line, start), end=p.position(cur.line, end)))


def register(ls: HbServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_HOVER)
    def on_hover(ls: HbServer, params: types.HoverParams) -> types.Hover | None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            return None
        return hover_at(doc, params.position, ls.model_info(doc.uri))
