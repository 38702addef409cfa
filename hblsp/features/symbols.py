"""Document symbols (sections, their keys, nested entries) and folding ranges.

Both come from this version's parse tree (`YamlDoc`); while the YAML does not parse, folding falls
back to indentation so the editor keeps its folds, and symbols are empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from engine.config.yamltree import YNode
from engine.problems import Span
from hblsp.cursor import indent_of
from hblsp.documents import ConfigDoc
from hblsp.positions import Positions

if TYPE_CHECKING:
    from hblsp.server import HbServer

MAX_DETAIL = 60


def _detail(value: YNode) -> str | None:
    if value.kind != "scalar" or value.value is None:
        return None
    text = str(value.value).lower() if isinstance(value.value, bool) else str(value.value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


def _symbols(node: YNode, p: Positions, depth: int) -> list[types.DocumentSymbol]:
    out = []
    for key, value in node.items:
        whole = Span(key.span.line, key.span.col, value.span.end_line, value.span.end_col)
        kind = (types.SymbolKind.Module if depth == 0 else
                types.SymbolKind.Object if value.kind == "map" else types.SymbolKind.Property)
        children = _symbols(value, p, depth + 1) if value.kind == "map" else None
        rng = p.range(whole)
        sel = p.range(key.span)
        if (rng.end.line, rng.end.character) < (sel.end.line, sel.end.character):
            rng = sel  # an empty value ends where its key does
        out.append(types.DocumentSymbol(name=str(key.value), kind=kind, range=rng, selection_range=sel,
                                        detail=_detail(value), children=children))
    return out


def symbols_of(doc: ConfigDoc) -> list[types.DocumentSymbol]:
    """Pure core: the outline of one version (empty when the YAML does not parse)."""
    if not doc.is_config:
        return []
    tree = doc.load().doc
    if tree is None or tree.root is None or tree.root.kind != "map":
        return []
    return _symbols(tree.root, doc.positions, 0)


def _tree_folds(node: YNode, p: Positions, out: list[types.FoldingRange]) -> None:
    for key, value in node.items:
        if value.kind == "map":
            start = p.range(key.span).start.line
            end = p.range(value.span).end
            last = end.line - 1 if end.character == 0 else end.line
            if last > start:
                out.append(types.FoldingRange(start_line=start, end_line=last,
                                              kind=types.FoldingRangeKind.Region))
            _tree_folds(value, p, out)


def _indent_folds(lines: list[str]) -> list[types.FoldingRange]:
    out, stack = [], []  # stack of (indent, start line)
    last_code = -1
    for i, text in enumerate(lines + ["x"]):  # a final sentinel closes every open block
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        ind = indent_of(text) if i < len(lines) else 0
        while stack and ind <= stack[-1][0]:
            _, start = stack.pop()
            if last_code > start:
                out.append(types.FoldingRange(start_line=start, end_line=last_code,
                                              kind=types.FoldingRangeKind.Region))
        if i < len(lines):
            stack.append((ind, i))
            last_code = i
    return sorted(out, key=lambda f: f.start_line)


def folds_of(doc: ConfigDoc) -> list[types.FoldingRange]:
    """Pure core: one fold per multi-line mapping (indentation-based while the YAML is broken)."""
    if not doc.is_config:
        return []
    tree = doc.load().doc
    if tree is None or tree.root is None or tree.root.kind != "map":
        return _indent_folds(doc.positions.lines)
    out: list[types.FoldingRange] = []
    _tree_folds(tree.root, doc.positions, out)
    return out


def register(ls: HbServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    async def on_symbols(ls: HbServer, params: types.DocumentSymbolParams) -> list[types.DocumentSymbol] | None:
        doc = ls.documents.get(params.text_document.uri)
        return None if doc is None else await ls.in_pool(symbols_of, doc)

    @ls.feature(types.TEXT_DOCUMENT_FOLDING_RANGE)
    async def on_folding(ls: HbServer, params: types.FoldingRangeParams) -> list[types.FoldingRange] | None:
        doc = ls.documents.get(params.text_document.uri)
        return None if doc is None else await ls.in_pool(folds_of, doc)
