"""Open documents: one immutable `ConfigDoc` per version, parsed and checked at most once.

An edit replaces the document's `ConfigDoc` (the event loop does it, at once); work on an older
version keeps the object it started with and is dropped when it comes back stale (ruff's
copy-on-write snapshots). The parse + schema + rules result is computed lazily, under a lock, by
whichever asks first — the debounced diagnostics job, a symbols request — and shared after that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pygls.uris import to_fs_path

from engine.config.loader import LoadResult
from hblsp.analysis import Analysis, analyse, load_text, model_source
from hblsp.models import ModelSource, ModelState
from hblsp.positions import UTF16, Positions


def base_dir_of(uri: str, fallback: Path) -> Path:
    """The folder relative config paths are resolved against: the config's own folder."""
    path = to_fs_path(uri) if uri.startswith("file:") else None
    return Path(path).parent if path else fallback


@dataclass(eq=False)
class ConfigDoc:
    uri: str
    version: int
    text: str
    is_config: bool
    base_dir: Path
    encoding: str = UTF16
    check_files: bool = True
    language_id: str | None = None
    received: float = field(default_factory=time.perf_counter)  # when this version arrived
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _load: LoadResult | None = field(default=None, repr=False)
    _analysis: tuple[ModelState | None, Analysis] | None = field(default=None, repr=False)

    @cached_property
    def positions(self) -> Positions:
        return Positions(self.text, self.encoding)

    def load(self) -> LoadResult:
        """YAML + schema + semantic rules for this version (computed once, any thread)."""
        with self._lock:
            if self._load is None:
                self._load = load_text(self.text, self.base_dir, self.check_files)
            return self._load

    @cached_property
    def data(self) -> dict[str, Any] | None:
        return self.load().data

    @cached_property
    def model_source(self) -> ModelSource | None:
        return model_source(self.data, self.base_dir)

    def analysis(self, model: ModelState | None) -> Analysis:
        """All problems of this version given what is known of its model (cached per model state)."""
        cached = self._analysis
        if cached is not None and cached[0] is model:
            return cached[1]
        result = analyse(self.load(), self.data, model)
        self._analysis = (model, result)
        return result


@dataclass
class DocumentStore:
    """uri → the current `ConfigDoc`. Mutated only on the event loop."""

    docs: dict[str, ConfigDoc] = field(default_factory=dict)

    def put(self, doc: ConfigDoc) -> None:
        self.docs[doc.uri] = doc

    def get(self, uri: str) -> ConfigDoc | None:
        return self.docs.get(uri)

    def remove(self, uri: str) -> ConfigDoc | None:
        return self.docs.pop(uri, None)

    def current(self, doc: ConfigDoc) -> bool:
        """Is `doc` still the open version (results for older versions are dropped)?"""
        return self.docs.get(doc.uri) is doc

    def configs(self) -> list[ConfigDoc]:
        return [d for d in self.docs.values() if d.is_config]
