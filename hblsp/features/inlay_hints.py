"""Inlay hints: the last run's cosine beside every node name the config writes.

`run_on_cpu: 'Conv_3; Relu_7'` shows `Conv_3 cos 0.998714` and `Relu_7 cos 0.981200 < 0.99`, the
tooltip holding the node's row of the similarity table (a name inside a fused group shows the
group's row). Nothing is shown before a run, or while the last run failed before the report; the
live recompile asks the client to refresh after each run (`workspace/inlayHint/refresh`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from hblsp.documents import ConfigDoc
from hblsp.features.live import thresholds_of
from hblsp.results import Outcome, Thresholds, inlay_hints, node_mentions

if TYPE_CHECKING:
    from hblsp.server import HbServer


def hints_for(doc: ConfigDoc, outcome: Outcome, thresholds: Thresholds,
              within: types.Range | None = None) -> list[types.InlayHint]:
    """Pure core: the hints of one document version for one run's outcome."""
    table = outcome.table
    if table is None or outcome.failed_stage not in (None, "compile"):
        return []
    return inlay_hints(node_mentions(doc.load().doc), table, doc.positions, thresholds, within)


def register(ls: HbServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_INLAY_HINT, types.InlayHintOptions())
    async def on_inlay_hint(ls: HbServer, params: types.InlayHintParams) -> list[types.InlayHint]:
        doc = ls.documents.get(params.text_document.uri)
        outcome = ls.live.shown.get(doc.uri) if doc is not None and ls.live is not None else None
        if doc is None or not doc.is_config or outcome is None:
            return []
        return await ls.in_pool(hints_for, doc, outcome, thresholds_of(ls), params.range)
