"""hblsp: the language server for hb_compile configs (LSP over stdio, pygls 2).

This module builds the server and calls each feature module's `register`; features live in
`hblsp/features/`, one LSP concern each, with a pure core function and thin handlers.

Threads (DESIGN §7): the event loop owns all state — documents, settings, the model cache, what
was published — and is the only thread that sends messages. Parsing and checking a document run
in `check_pool`, reading a model in `model_pool` (both hblsp's own executors, never pygls' thread
pool, which also reads stdin; the model parse itself runs in a short-lived child process, see
`hblsp.models`); their results come back to the loop, which drops stale ones.

Extending it: a feature module appended to `FEATURES` registers handlers, subscribes to
`on_changed` / `on_closed` / `on_model_loaded` / `on_settings` / `on_shutdown`, may own another
executor, and publishes its own diagnostics under its own source name with `publish_diagnostics`
(they are merged with the config checks'). Diagnostics that must follow the text (placed by key path on
every version, like the compile results') are a `diagnostic_providers` entry instead: computed
with the config checks of each version, in the same pool job, and published in the same message.
The live recompile (`features/live.py`) is such a module: it owns the compile worker and the
file watcher; `features/disk_files.py` re-checks a config when a file it names changes on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from engine.frontend.model_info import ModelInfo
from hblsp.debounce import Debouncer
from hblsp.documents import ConfigDoc, DocumentStore, base_dir_of
from hblsp.features import (
    code_actions,
    completion,
    diagnostics,
    disk_files,
    hover,
    inlay_hints,
    live,
    symbols,
    sync,
)
from hblsp.models import ModelCache, ModelSource, ProcessReader
from hblsp.positions import UTF16
from hblsp.recognize import is_hb_config
from hblsp.settings import Settings

log = logging.getLogger("hblsp")
timing = logging.getLogger("hblsp.timing")

VERSION = "0.1.0"
FEATURES = (sync, diagnostics, completion, hover, code_actions, symbols, live, inlay_hints, disk_files)
# (server, document version) → None (nothing to say) or a function computing the items, run in `check_pool`
DiagnosticProvider = Callable[["HbServer", ConfigDoc], Callable[[], list[types.Diagnostic]] | None]


class HbServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("hblsp", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = Settings()
        self.settings_problems: list[str] = []  # the last bad settings told to the user
        self.documents = DocumentStore()
        self.debouncer = Debouncer()
        self.check_pool = ThreadPoolExecutor(1, thread_name_prefix="hblsp-check")
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="hblsp-model")
        self.model_reader = ProcessReader()
        self.models = ModelCache(self.model_pool, self._model_loaded, self.settings.max_model_bytes,
                                 self.model_reader)
        self.model_sources: dict[str, ModelSource | None] = {}  # uri → last known model source
        self.on_changed: list[Callable[[HbServer, ConfigDoc, bool], Any]] = []
        self.on_closed: list[Callable[[HbServer, str], Any]] = []
        self.on_model_loaded: list[Callable[[HbServer, ModelSource], Any]] = []
        self.on_settings: list[Callable[[HbServer], Any]] = []
        self.on_shutdown: list[Callable[[HbServer], Any]] = []
        self.diagnostic_providers: dict[str, DiagnosticProvider] = {}
        self.live: Any = None  # features.live.Live: compile runs, results, the file watcher
        self._published: dict[str, dict[str, list[types.Diagnostic]]] = {}
        self._shown_errors: set[str] = set()

    # ---- every handler wrapped once: a bug logs, answers, and the server keeps serving
    def feature(self, feature_name: str, options: Any | None = None):
        register = super().feature(feature_name, options)
        return lambda fn: register(guarded(self, feature_name, fn))

    def command(self, command_name: str):
        register = super().command(command_name)
        return lambda fn: register(guarded(self, command_name, fn))

    def report_bug(self, where: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        log.error("%s failed:\n%s", where, text)
        try:
            self.window_log_message(types.LogMessageParams(types.MessageType.Error, f"{where} failed:\n{text}"))
            if where not in self._shown_errors:  # one short message per failing handler
                self._shown_errors.add(where)
                self.window_show_message(types.ShowMessageParams(
                    types.MessageType.Error, f"hblsp: {where} failed ({exc}); see the hblsp log"))
        except Exception:  # no client to tell (e.g. stdout closed)
            pass

    # ---- state helpers the features share
    @property
    def encoding(self) -> str:
        try:
            return str(self.workspace.position_encoding or UTF16)
        except RuntimeError:  # not initialized yet
            return UTF16

    def root_dir(self) -> Path:
        try:
            root = self.workspace.root_path
        except RuntimeError:
            root = None
        return Path(root) if root else Path.cwd()

    def make_doc(self, uri: str, text: str, version: int, language_id: str | None) -> ConfigDoc:
        return ConfigDoc(uri, version, text, is_hb_config(uri, text, language_id, self.settings),
                         base_dir_of(uri, self.root_dir()), self.encoding, self.settings.check_files, language_id)

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.check_pool, fn, *args)

    def model_info(self, uri: str) -> ModelInfo | None:
        """The model of a document if it is already read (never waits; starts a read if needed)."""
        state = self.models.peek(self.model_sources.get(uri))
        return state.info if state is not None else None

    def emit(self, listeners: list[Callable[..., Any]], *args: Any) -> None:
        for fn in listeners:
            try:
                result = fn(self, *args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(functools.partial(self._task_done, getattr(fn, "__name__", "task")))
            except Exception as exc:
                self.report_bug(getattr(fn, "__name__", "listener"), exc)

    def _task_done(self, name: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.report_bug(name, task.exception())

    def _model_loaded(self, source: ModelSource) -> None:
        self.emit(self.on_model_loaded, source)

    def publish_diagnostics(self, uri: str, source: str, version: int | None,
                            items: list[types.Diagnostic]) -> None:
        """Replace one source's diagnostics for `uri` and send the union (loop thread only)."""
        self.publish_sources(uri, version, {source: items})

    def publish_sources(self, uri: str, version: int | None, items: dict[str, list[types.Diagnostic]]) -> None:
        """Replace several sources' diagnostics for `uri` at once and send the union (loop thread only)."""
        by_source = self._published.setdefault(uri, {})
        by_source.update(items)
        merged = [d for name in sorted(by_source) for d in by_source[name]]
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=merged,
                                                                              version=version))

    def forget(self, uri: str) -> None:
        if self._published.pop(uri, None):
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    def shutdown(self) -> None:
        super().shutdown()
        self.check_pool.shutdown(wait=False, cancel_futures=True)
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.model_reader.close()
        self.emit(self.on_shutdown)


def guarded(ls: HbServer, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log a handler's exception, tell the client once, and answer None instead of an error.

    With `--log-timings`, also log how long the handler took (the answer's JSON encoding excluded)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                ls.report_bug(name, exc)
                return None
            finally:
                timing.info("%s in %.2f ms", name, (time.perf_counter() - start) * 1000)
        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            ls.report_bug(name, exc)
            return None
        finally:
            timing.info("%s in %.2f ms", name, (time.perf_counter() - start) * 1000)
    return run


def build() -> HbServer:
    ls = HbServer()
    for feature in FEATURES:
        feature.register(ls)
    return ls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["daemon"]:  # `hblsp daemon start|stop|status`: the warm engine for hb_compile
        from hblsp import daemon

        return daemon.main(argv[1:])
    parser = argparse.ArgumentParser(prog="hblsp", description="Language server for hb_compile YAML configs "
                                     "(LSP over stdio); `hblsp daemon start|stop|status` runs the warm engine "
                                     "hb_compile uses.")
    parser.add_argument("--stdio", action="store_true", help="serve on stdin/stdout (the default)")
    parser.add_argument("--log-file", help="write the server log here (default: stderr)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-timings", action="store_true",
                        help="log how long each check took, from the change to the published diagnostics")
    args = parser.parse_args(argv)
    handler: logging.Handler = (logging.FileHandler(args.log_file, encoding="utf-8") if args.log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    if args.log_timings:
        logging.getLogger("hblsp.timing").setLevel(logging.INFO)
    server = build()
    gc.freeze()  # the imported modules' objects never die: keep full collections from scanning them
    channel = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() anywhere must not corrupt the JSON-RPC stream
    server.start_io(sys.stdin.buffer, channel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
