"""Diagnostics that follow the files a config names: a model, a calibration folder, a quant_config
file… deleted, moved away or created on disk re-checks the open config, without an edit.

The config check looks at the disk (`Can not find file specified`, `Cal_data_dir does not
exist`) and each document version is checked once, so a change on disk would otherwise show only
at the next edit. Each open config — with errors or not: one opened before its model is exported
is the usual case — watches the folders holding every path its keys name (the keys the schema
marks `x-hb-path`, `;` lists included); an event on one of those paths, after the watcher's delay,
puts a fresh `ConfigDoc` of the same version in place and checks it at once (the model cache sees
a new or changed model file by its stamp and reads it). The live recompile (`features/live.py`)
watches what a run reads, by content, to compile; this watches names, to re-check. Both follow
`hblsp.watchFiles` and `hblsp.watchDelayMs`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from engine import schema
from engine.config import values as V
from hblsp.debounce import Debouncer
from hblsp.documents import ConfigDoc
from hblsp.features import diagnostics
from hblsp.features.live import config_path, describe_files
from hblsp.run_inputs import norm
from hblsp.watcher import Watcher

if TYPE_CHECKING:
    from hblsp.server import HbServer

# keys whose relative paths start from another key's folder, not from the config's
RELATIVE_TO = {("custom_op", "op_register_files"): ("custom_op", "custom_op_dir")}


def named_paths(data: dict[str, Any] | None, base_dir: Path) -> frozenset[Path]:
    """Every file or folder the config's path keys name, resolved like the config check resolves them."""
    out: set[Path] = set()
    for section, body in (data or {}).items():
        if not isinstance(body, dict):
            continue
        for key, value in body.items():
            if not isinstance(value, str) or not (schema.key_schema(section, key) or {}).get("x-hb-path"):
                continue
            base, folder = base_dir, RELATIVE_TO.get((section, key))
            if folder is not None and isinstance(body.get(folder[1]), str) and body[folder[1]].strip():
                base = _resolve(body[folder[1]].strip(), base_dir)
            out.update(_resolve(item, base) for item in V.split_names(value))
    return frozenset(out)


def _resolve(item: str, base: Path) -> Path:
    return norm(V.resolve_path(item, base))


class DiskFiles:
    """Which paths each open config names, and the watch on them; every method runs on the loop."""

    def __init__(self, ls: HbServer) -> None:
        self.ls = ls
        self.named: dict[str, frozenset[Path]] = {}  # uri → the paths watched for it
        self.debouncer = Debouncer()  # one paths update per typing burst, like the diagnostics
        self.watcher: Watcher | None = None

    def changed(self, doc: ConfigDoc, opened: bool) -> None:
        if not doc.is_config or not self.ls.settings.watch_files:
            return
        self.debouncer.call(doc.uri, 0.0 if opened else self.ls.settings.debounce_s, lambda: self.update(doc))

    async def update(self, doc: ConfigDoc) -> None:
        """Watch the paths this version names (nothing to do while they stay the same)."""
        if not self._current(doc):
            return
        paths = await self.ls.in_pool(lambda: named_paths(doc.data, doc.base_dir))
        if not self._current(doc) or not self.ls.settings.watch_files or self.named.get(doc.uri) == paths:
            return
        self.named[doc.uri] = paths
        if self.watcher is None:
            self.watcher = Watcher(asyncio.get_running_loop(), self.on_disk, self.ls.settings.watch_delay_ms / 1000.0)
        self.watcher.watch(doc.uri, {p.parent for p in paths}, paths.__contains__)
        path = config_path(doc.uri)
        if paths and path is not None:
            self.ls.window_log_message(types.LogMessageParams(types.MessageType.Log, (
                f"hblsp: {path.name}: checked again when {describe_files(sorted(map(str, paths)), path.parent)} "
                "change on disk")))

    def _current(self, doc: ConfigDoc) -> bool:
        """The open version, or the fresh copy of it `on_disk` put in its place (same text)."""
        now = self.ls.documents.get(doc.uri)
        return now is doc or (now is not None and now.version == doc.version and now.text == doc.text)

    def on_disk(self, uri: str) -> None:
        """A named path was created, deleted, moved or written: check the open version again, now."""
        doc = self.ls.documents.get(uri)
        if doc is None or not doc.is_config:
            self.closed(uri)
            return
        fresh = self.ls.make_doc(doc.uri, doc.text, doc.version, doc.language_id)
        self.ls.documents.put(fresh)
        self.ls.debouncer.call(uri, 0.0, lambda: diagnostics.check(self.ls, fresh))

    def closed(self, uri: str) -> None:
        self.debouncer.cancel(uri)
        self.named.pop(uri, None)
        if self.watcher is not None:
            self.watcher.unwatch(uri)

    def settings_changed(self) -> None:
        if self.watcher is not None:
            self.watcher.delay_s = self.ls.settings.watch_delay_ms / 1000.0
        if not self.ls.settings.watch_files:  # turned on again: each config is re-emitted as opened
            for uri in list(self.named):
                self.closed(uri)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


def register(ls: HbServer) -> None:
    disk = DiskFiles(ls)
    ls.on_changed.append(lambda ls, doc, opened: disk.changed(doc, opened))
    ls.on_closed.append(lambda ls, uri: disk.closed(uri))
    ls.on_settings.append(lambda ls: disk.settings_changed())
    ls.on_shutdown.append(lambda ls: disk.close())
