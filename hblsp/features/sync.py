"""Document and settings lifecycle: open / change / close, and `workspace/configuration`.

pygls keeps the text (applying incremental edits); these handlers turn each new version into a
`ConfigDoc` at once, on the loop, and tell the listeners (diagnostics, later the live recompile).
Settings are pulled from the client after `initialized` and whenever it says they changed; bad
values keep their defaults and are named in one message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from hblsp.settings import SECTION, parse_settings

if TYPE_CHECKING:
    from hblsp.server import HbServer

log = logging.getLogger(__name__)


def _options_section(raw: Any) -> Any:
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
        return raw[SECTION]
    return raw


def apply_settings(ls: HbServer, raw: Any) -> None:
    parsed = parse_settings(_options_section(raw))
    if parsed.problems and parsed.problems != ls.settings_problems:  # say it once, not on every pull
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning,
                                                       "hblsp settings: " + "; ".join(parsed.problems)))
    ls.settings_problems = parsed.problems
    if parsed.settings == ls.settings:
        return
    ls.settings = parsed.settings
    ls.models.max_bytes = parsed.settings.max_model_bytes
    for doc in list(ls.documents.docs.values()):  # recognition and file checks may have changed
        new = ls.make_doc(doc.uri, doc.text, doc.version, doc.language_id)
        ls.documents.put(new)
        if doc.is_config and not new.is_config:
            ls.emit(ls.on_closed, doc.uri)
        else:
            ls.emit(ls.on_changed, new, True)
    ls.emit(ls.on_settings)


async def watch_settings(ls: HbServer) -> None:
    """Ask to be told when settings change (pull model: the notification only says "ask again")."""
    caps = ls.client_capabilities.workspace
    change = caps.did_change_configuration if caps else None
    if not (change and change.dynamic_registration):
        return
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
            id="hblsp-settings", method=types.WORKSPACE_DID_CHANGE_CONFIGURATION)]))
    except Exception as exc:  # a client that declares it but cannot: settings still come at start
        log.info("client refused to register workspace/didChangeConfiguration: %s", exc)


async def pull_settings(ls: HbServer) -> None:
    caps = ls.client_capabilities.workspace
    if caps is None or not caps.configuration:
        return
    result = await ls.workspace_configuration_async(
        types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)]))
    apply_settings(ls, result[0] if result else None)


def register(ls: HbServer) -> None:
    @ls.feature(types.INITIALIZE)
    def on_initialize(ls: HbServer, params: types.InitializeParams) -> None:
        if params.initialization_options is not None:
            apply_settings(ls, params.initialization_options)

    @ls.feature(types.INITIALIZED)
    async def on_initialized(ls: HbServer, params: types.InitializedParams) -> None:
        await pull_settings(ls)
        await watch_settings(ls)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def on_configuration(ls: HbServer, params: types.DidChangeConfigurationParams) -> None:
        caps = ls.client_capabilities.workspace
        if caps is not None and caps.configuration:
            await pull_settings(ls)
        else:
            apply_settings(ls, params.settings)

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: HbServer, params: types.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        doc = ls.make_doc(td.uri, td.text, td.version, td.language_id)
        ls.documents.put(doc)
        ls.emit(ls.on_changed, doc, True)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: HbServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        old = ls.documents.get(uri)
        text = ls.workspace.get_text_document(uri).source
        doc = ls.make_doc(uri, text, params.text_document.version, old.language_id if old else None)
        ls.documents.put(doc)
        if old is not None and old.is_config and not doc.is_config:  # the modeline was removed
            ls.emit(ls.on_closed, uri)
        else:
            ls.emit(ls.on_changed, doc, False)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: HbServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.documents.remove(uri)
        ls.model_sources.pop(uri, None)
        ls.emit(ls.on_closed, uri)
