"""Diagnostics: every problem the CLI would report, on its token, in hb_compile's words, as you type.

Pushed (`textDocument/publishDiagnostics`), debounced per document (`hblsp.debounceMs`, 150 ms by
default; a newly opened document is checked at once). The check runs in the server's check
executor on an immutable version; a result for a version that is no longer current is dropped.
Problems that need the model appear once the model is read (in the model executor): until then
the config's own problems are published, and the document is re-checked when the read finishes.
Other features' diagnostics that follow the text (`ls.diagnostic_providers`: the compile results,
placed by key path) are computed for the same version in the same job and sent in one message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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


def all_sources(doc: ConfigDoc, model: ModelState | None,
                others: dict[str, Callable[[], list[types.Diagnostic]]]) -> dict[str, list[types.Diagnostic]]:
    """The config checks' items and every other source's that follows the text (compile results)."""
    return {SOURCE: diagnostics_for(doc, model), **{name: fn() for name, fn in others.items()}}


async def check(ls: HbServer, doc: ConfigDoc) -> None:
    if not ls.documents.current(doc) or not doc.is_config:
        return
    source = await ls.in_pool(lambda: doc.model_source)  # parses this version once, off the loop
    if not ls.documents.current(doc):
        return
    ls.model_sources[doc.uri] = source
    state = ls.models.peek(source)
    others = {name: fn for name, provider in ls.diagnostic_providers.items() if (fn := provider(ls, doc))}
    items = await ls.in_pool(all_sources, doc, state, others)
    if ls.documents.current(doc):
        ls.publish_sources(doc.uri, doc.version, items)
        timing.info("diagnostics %s v%s: %d in %.2f ms after the change", doc.uri, doc.version, len(items[SOURCE]),
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
