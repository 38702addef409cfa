"""Document symbols and folding ranges over stdio (and indentation folding while the YAML is broken)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types

from tests.lsp.support import HbClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  node_info:
    Conv_0:
      ON: BPU
input_parameters:
  input_type_train: rgb
  input_type_rt: nv12
"""


def rng(a: int, b: int, c: int, d: int) -> str:
    return f"{a}:{b}-{c}:{d}"


def sym(name, kind, r, sel, detail=None, children=None) -> tuple:
    return (name, kind, r, sel, detail, children)


def tree(symbols) -> list[tuple] | None:
    if symbols is None:
        return None
    return [sym(s.name, s.kind, rng(s.range.start.line, s.range.start.character, s.range.end.line,
                                    s.range.end.character),
                rng(s.selection_range.start.line, s.selection_range.start.character, s.selection_range.end.line,
                    s.selection_range.end.character), s.detail, tree(s.children)) for s in symbols]


async def test_outline(client: HbClient, workspace: Path):
    uri = client.open(workspace / "outline.hb.yaml", TEXT)
    got = await client.text_document_document_symbol_async(types.DocumentSymbolParams(
        types.TextDocumentIdentifier(uri)))
    K = types.SymbolKind
    assert tree(got) == [
        sym("model_parameters", K.Module, rng(0, 0, 6, 0), rng(0, 0, 0, 16), children=[
            sym("onnx_model", K.Property, rng(1, 2, 1, 24), rng(1, 2, 1, 12), "model.onnx"),
            sym("march", K.Property, rng(2, 2, 2, 15), rng(2, 2, 2, 7), "nash-e"),
            sym("node_info", K.Object, rng(3, 2, 6, 0), rng(3, 2, 3, 11), children=[
                sym("Conv_0", K.Object, rng(4, 4, 6, 0), rng(4, 4, 4, 10), children=[
                    sym("ON", K.Property, rng(5, 6, 5, 13), rng(5, 6, 5, 8), "BPU")])])]),
        sym("input_parameters", K.Module, rng(6, 0, 9, 0), rng(6, 0, 6, 16), children=[
            sym("input_type_train", K.Property, rng(7, 2, 7, 23), rng(7, 2, 7, 18), "rgb"),
            sym("input_type_rt", K.Property, rng(8, 2, 8, 21), rng(8, 2, 8, 15), "nv12")]),
    ]


async def test_folding(client: HbClient, workspace: Path):
    uri = client.open(workspace / "fold.hb.yaml", TEXT)
    got = await client.text_document_folding_range_async(types.FoldingRangeParams(types.TextDocumentIdentifier(uri)))
    assert [(f.start_line, f.end_line) for f in got] == [(0, 5), (3, 5), (4, 5), (6, 8)]
    client.replace(uri, TEXT.replace("  march: nash-e", "  march: [nash-e"))  # no longer parses
    broken = await client.text_document_folding_range_async(types.FoldingRangeParams(
        types.TextDocumentIdentifier(uri)))
    assert [(f.start_line, f.end_line) for f in broken] == [(0, 5), (3, 5), (4, 5), (6, 8)]
    assert list(await client.text_document_document_symbol_async(types.DocumentSymbolParams(
        types.TextDocumentIdentifier(uri)))) == []
