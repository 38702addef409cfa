"""Diagnostics: every problem the CLI would report, on its token, in hb_compile's words, as you type.

Pushed (`textDocument/publishDiagnostics`), debounced per document (`hblsp.debounceMs`, 150 ms by
default; a newly opened document is checked at once). The check runs in the server's check
executor on an immutable version; a result for a version that is no longer current is dropped.
Problems that need the model appear once the model is read (in the model executor): until then
the config's own problems are published, and the document is re-checked when the read finishes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lsprotocol import types

from hblsp.analysis import to_diagnostic
from hblsp.documents import ConfigDoc
from hblsp.models import ModelSource, ModelState

if TYPE_CHECKING:
    from hblsp.server import HbServer

SOURCE = "config"
timing = logging.getLogger("hblsp.timing")


def diagnostics_for(doc: ConfigDoc, model: ModelState | None) -> list[types.Diagnostic]:
    """Pure core: the diagnostics of one document version given what is known of its model."""
    return [to_diagnostic(p, doc.positions) for p in doc.analysis(model).problems]


async def check(ls: HbServer, doc: ConfigDoc) -> None:
    if not ls.documents.current(doc) or not doc.is_config:
        return
    source = await ls.in_pool(lambda: doc.model_source)  # parses this version once, off the loop
    if not ls.documents.current(doc):
        return
    ls.model_sources[doc.uri] = source
    state = ls.models.peek(source)
    items = await ls.in_pool(diagnostics_for, doc, state)
    if ls.documents.current(doc):
        ls.publish_diagnostics(doc.uri, SOURCE, doc.version, items)
        timing.info("diagnostics %s v%s: %d in %.2f ms after the change", doc.uri, doc.version, len(items),
                    (time.perf_counter() - doc.received) * 1000)


def schedule(ls: HbServer, doc: ConfigDoc, opened: bool) -> None:
    if not doc.is_config:
        ls.debouncer.cancel(doc.uri)
        return
    delay = 0.0 if opened else ls.settings.debounce_s
    ls.debouncer.call(doc.uri, delay, lambda: check(ls, doc))


def closed(ls: HbServer, uri: str) -> None:
    ls.debouncer.cancel(uri)
    ls.forget(uri)


def model_loaded(ls: HbServer, source: ModelSource) -> None:
    for doc in ls.documents.configs():
        if ls.model_sources.get(doc.uri) == source:
            ls.debouncer.call(doc.uri, 0.0, lambda d=doc: check(ls, d))


def register(ls: HbServer) -> None:
    ls.on_changed.append(schedule)
    ls.on_closed.append(closed)
    ls.on_model_loaded.append(model_loaded)
