"""Live recompile: save a config (or change its model or calibration data) and see the new cosines.

- Triggers: `textDocument/didSave` of a config without errors (`hblsp.compileOnSave`), the
  `hblsp.compile` command (any config: a broken one gets its problems back), and the watcher
  (`hblsp.watchFiles`): from when a config that loads without errors is opened (or, for one that
  had errors, from its first run), the files a run of it reads — config, model, every calibration
  file and folder — are watched; a burst of events is one change; the inputs are hashed again and
  only a change of content runs anything (the window/logMessage says which files changed, or that
  a touch changed nothing). The stage keys then decide which stages re-run.
- Runs (`hblsp.runner`): one warm engine, off the event loop, at most one going and one waiting
  per config; `$/progress` from `begin` to `end` with one report per stage that runs, the client's
  cancel button and `hblsp.cancel` stop it.
- Results (docs/protocol.md): `hblsp/compileResult` after every run that is not superseded by a
  newer one; diagnostics that follow the text (`results.result_diagnostics`, through
  `ls.diagnostic_providers`); inlay hints (`features/inlay_hints.py`) refreshed after each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.uris import to_fs_path

from hblsp.analysis import is_error
from hblsp.documents import ConfigDoc
from hblsp.results import Outcome, Thresholds, result_diagnostics
from hblsp.run_inputs import RunInputs, read_inputs
from hblsp.runner import CompileRunner, Finished, Job, RunHooks, RunRequest
from hblsp.watcher import Watcher

if TYPE_CHECKING:
    from hblsp.server import HbServer

log = logging.getLogger(__name__)

SOURCE = "compile"  # the publish source of the run's diagnostics (merged with the config checks')
RESULT = "hblsp/compileResult"
COMPILE, SHOW_TABLE, CANCEL = "hblsp.compile", "hblsp.showTable", "hblsp.cancel"
STARTED = re.compile(r"^Start to \S+ model \((?P<reason>.*)\)\.?$")  # the engine's stage-start message
TRIGGER_WORDS = {"save": "saved", "command": "compile requested", "watch": "files changed"}


def thresholds_of(ls: HbServer) -> Thresholds:
    return Thresholds(ls.settings.node_cosine_threshold, ls.settings.output_cosine_threshold)


def progress_message(stage: str, message: str) -> str:
    """`calibrate: 1 of 32 calibration files changed` (the engine's reason), or the stage's own words."""
    m = STARTED.match(message)
    return f"{stage}: {m['reason'] if m else message}"


def config_path(uri: str) -> Path | None:
    path = to_fs_path(uri) if uri.startswith("file:") else None
    return Path(path) if path else None


def _argument(args: tuple[Any, ...], key: str) -> Any:
    first = args[0] if args else None
    if isinstance(first, dict):
        return first.get(key)
    return getattr(first, key, None)


def _crash_payload(job: Job, exc: BaseException, thresholds: Thresholds) -> dict[str, Any]:
    return {"uri": job.uri, "version": job.request.version, "ok": False, "cancelled": False, "seconds": None,
            "stages": [], "artefacts": {}, "working_dir": None, "table": None, "calibration": None,
            "problems": [{"code": "hblsp-crash", "severity": "error", "path": [], "file": None, "span": None,
                          "message": f"hblsp: the run failed ({type(exc).__name__}: {exc}); see the hblsp log"}],
            "thresholds": thresholds.as_json()}


def describe_files(paths: list[str], base: Path) -> str:
    def short(p: str) -> str:
        try:
            return str(Path(p).relative_to(base))
        except ValueError:
            return p

    names = [short(p) for p in paths[:3]]
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(names) + more


class Live:
    """The server's compile state; every method runs on the event loop."""

    def __init__(self, ls: HbServer) -> None:
        self.ls = ls
        self.runner = CompileRunner(RunHooks(self._before, self._progress, self._finished))
        self.results: dict[str, dict[str, Any]] = {}  # uri → the last compileResult params sent
        self.shown: dict[str, Outcome] = {}  # uri → the outcome placed in the editor (the last not cancelled)
        self.inputs: dict[str, RunInputs] = {}  # uri → what its last run read (the watcher compares)
        self.dirty: set[str] = set()  # files changed while a run of this config was going
        self.watcher: Watcher | None = None
        self.watch_pool = ThreadPoolExecutor(1, thread_name_prefix="hblsp-watch")
        self._tasks: set[asyncio.Task] = set()

    # ---- requests
    def compile(self, uri: str, trigger: str) -> str | None:
        """Queue a run of the open document's text (else the file's); the reason when it cannot run."""
        path = config_path(uri)
        if path is None:
            return f"{uri} is not a file: only configs saved on disk can be compiled"
        doc = self.ls.documents.get(uri)
        text, version = (doc.text, doc.version) if doc is not None else (None, None)
        self.runner.submit(RunRequest(uri, path, text, version, trigger, thresholds_of(self.ls)))
        return None

    async def saved(self, uri: str) -> None:
        doc = self.ls.documents.get(uri)
        if doc is None or not doc.is_config or not self.ls.settings.compile_on_save:
            return
        source = await self.ls.in_pool(lambda: doc.model_source)
        analysis = await self.ls.in_pool(doc.analysis, self.ls.models.peek(source))
        errors = [p for p in analysis.problems if is_error(p)]
        if errors:
            self.say(f"{(config_path(uri) or Path(uri)).name}: not compiled, the config has {len(errors)} "
                     f"error{'s' if len(errors) > 1 else ''}")
            return
        self.compile(uri, "save")

    def cancel(self, uri: str) -> bool:
        return self.runner.cancel(uri)

    def say(self, text: str) -> None:
        """A line in the client's log (why something ran or did not)."""
        log.info("%s", text)
        self.ls.window_log_message(types.LogMessageParams(types.MessageType.Log, f"hblsp: {text}"))

    # ---- run hooks (loop)
    async def _before(self, job: Job) -> None:
        caps = self.ls.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return
        token = f"hblsp-compile-{job.number}"
        try:
            await asyncio.wait_for(self.ls.work_done_progress.create_async(token), timeout=10)
        except Exception as exc:  # a client that refuses: the run goes on without a progress bar
            log.info("no progress for run %s: %s", job.number, exc)
            return
        job.data["token"] = token
        cancelled = self.ls.work_done_progress.tokens.get(token)
        if cancelled is not None:  # pygls cancels this future when the client presses cancel
            cancelled.add_done_callback(lambda f, j=job: f.cancelled() and self._client_cancelled(j))
        name = job.request.path.name
        self.ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="hb_compile", message=f"{name}: {TRIGGER_WORDS.get(job.request.trigger, job.request.trigger)}",
            cancellable=True, percentage=0))

    def _client_cancelled(self, job: Job) -> None:
        if self.runner.jobs.get(job.uri) is job:
            self.runner.cancel(job.uri)

    def _progress(self, job: Job, stage: str, message: str, fraction: float | None) -> None:
        token = job.data.get("token")
        if token is None or job.cancel.is_set():
            return
        percentage = None
        if stage == "calibrate" and fraction is not None:  # clients add up increments: never go back
            percentage = job.data["percentage"] = max(job.data.get("percentage", 0), int(round(fraction * 100)))
        self.ls.work_done_progress.report(token, types.WorkDoneProgressReport(
            message=progress_message(stage, message), percentage=percentage))

    def _finished(self, fin: Finished) -> None:
        job, uri = fin.job, fin.job.uri
        payload = fin.payload
        if fin.error is not None:
            self.ls.report_bug(COMPILE, fin.error)
            payload = _crash_payload(job, fin.error, job.request.thresholds)
        token = job.data.pop("token", None)
        if token is not None:
            self.ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=self._end_message(job, payload)))
            self.ls.work_done_progress.tokens.pop(token, None)
        if fin.inputs is not None and self.ls.documents.get(uri) is not None:  # closed meanwhile: read at reopen
            self.inputs[uri] = fin.inputs
            self._watch(uri)
        if job.superseded:  # the waiting run shows its own outcome
            return
        self.results[uri] = payload
        self.ls.protocol.notify(RESULT, payload)
        if not payload["cancelled"]:
            self.shown[uri] = fin.outcome or Outcome(payload)
            self._spawn(self._publish(uri), "publish compile diagnostics")
            self._refresh_hints()
        if uri in self.dirty and not self.runner.busy(uri):
            self.dirty.discard(uri)
            self._spawn(self._recheck(uri), "watch")

    @staticmethod
    def _end_message(job: Job, payload: dict[str, Any]) -> str:
        if job.superseded:
            return "superseded by a newer change"
        if payload["cancelled"]:
            return "cancelled"
        if not payload["ok"]:
            first = next((p["message"] for p in payload["problems"] if p["severity"] == "error"), "failed")
            return f"failed: {first}"
        ran = [s["name"] for s in payload["stages"] if s["status"] == "ran" and s["name"] != "config"]
        return f"done in {payload['seconds']:.2f} s ({', '.join(ran) or 'nothing'} ran)"

    # ---- results in the editor
    def provider(self, ls: HbServer, doc: ConfigDoc):
        """The run's diagnostics for one document version (a `diagnostic_providers` entry)."""
        outcome = self.shown.get(doc.uri)
        if outcome is None:
            return None
        thresholds = thresholds_of(ls)
        return lambda: result_diagnostics(outcome, doc.load().doc, doc.positions, thresholds)

    async def _publish(self, uri: str) -> None:
        doc = self.ls.documents.get(uri)
        if doc is None or not doc.is_config:
            return
        compute = self.provider(self.ls, doc)
        if compute is None:
            return
        items = await self.ls.in_pool(compute)
        if self.ls.documents.current(doc):
            self.ls.publish_diagnostics(uri, SOURCE, doc.version, items)

    def _refresh_hints(self) -> None:
        caps = self.ls.client_capabilities.workspace
        hints = caps.inlay_hint if caps else None
        if hints is not None and hints.refresh_support:
            sent = self.ls.workspace_inlay_hint_refresh(None)
            sent.add_done_callback(lambda f: f.cancelled() or f.exception())  # a client's error is not ours

    # ---- the watcher
    async def opened(self, uri: str) -> None:
        """Watch what a run of a newly opened config would read, from now on: dropping images into
        its calibration folder compiles it even before its first save. A config with errors is
        watched from its first run instead (its folders are not known yet). A run being likely now,
        the engine's modules start loading on the compile worker (`CompileRunner.preload`)."""
        path = config_path(uri)
        if path is not None and self.runner.preloaded is None and (self.ls.settings.compile_on_save
                                                                  or self.ls.settings.watch_files):
            self._spawn(self._preloaded(self.runner.preload()), "preload")  # started now: `_read` waits for it
        if path is None or not self.ls.settings.watch_files or uri in self.inputs:
            return
        loop = asyncio.get_running_loop()
        _, now = await loop.run_in_executor(self.watch_pool, self._read, path)
        doc = self.ls.documents.get(uri)
        if doc is None or not doc.is_config or uri in self.inputs or not now.ok:  # closed, or a run was faster
            return
        self.inputs[uri] = now
        self._watch(uri)
        if self.watcher is not None and self.watcher.watched(uri):
            self._spawn(self._caught_up(uri), "watch")
            self.say(f"{path.name}: watching {len(now.files)} input files in "
                     f"{describe_files(sorted(map(str, self.watcher.watched(uri))), path.parent)} for changes")

    async def _preloaded(self, loading: Future[float]) -> None:
        seconds = await asyncio.wrap_future(loading)
        self.say(f"engine loaded in {seconds:.2f} s")

    def _watch(self, uri: str) -> None:
        inputs = self.inputs.get(uri)
        if not self.ls.settings.watch_files or inputs is None or self.ls.documents.get(uri) is None:
            return
        if self.watcher is None:
            self.watcher = Watcher(asyncio.get_running_loop(), self._changed_on_disk,
                                   self.ls.settings.watch_delay_ms / 1000.0)
        self.watcher.watch(uri, inputs.dirs(), inputs.concerns)

    def _changed_on_disk(self, uri: str) -> None:
        if self.ls.documents.get(uri) is None:
            if self.watcher is not None:
                self.watcher.unwatch(uri)
            return
        if self.runner.busy(uri):
            self.dirty.add(uri)  # looked at when the run ends (it may have read the new files already)
            return
        self._spawn(self._recheck(uri), "watch")

    async def _caught_up(self, uri: str) -> None:
        """Once the new watch is live, what changed between the read of the inputs and the watch: the
        read comes first, and watchdog adds a folder's inotify watch on its emitter thread after
        `schedule` returns, so a sample dropped in meanwhile raised no event (seen in tests writing right
        after "watching …" appeared)."""
        await asyncio.sleep(self.ls.settings.watch_delay_ms / 1000.0)
        if not self.runner.busy(uri):
            await self._recheck(uri, quiet=True)

    async def _recheck(self, uri: str, quiet: bool = False) -> None:
        path = config_path(uri)
        if path is None:
            return
        loop = asyncio.get_running_loop()
        text, now = await loop.run_in_executor(self.watch_pool, self._read, path)
        if self.ls.documents.get(uri) is None:  # closed meanwhile
            return
        changed = now.changed(self.inputs.get(uri))
        if not changed:
            if not quiet:
                self.say(f"{path.name}: files touched, contents unchanged; nothing to run")
            return
        if not now.ok:
            self.inputs[uri] = now  # the next change is compared with this
            self.say(f"{path.name}: changed on disk, but the config there has errors; not compiled")
            return
        if self.runner.busy(uri):  # a save came in meanwhile: its run reads these files
            self.dirty.add(uri)
            return
        self.say(f"{path.name}: {describe_files(changed, path.parent)} changed; compiling")
        doc = self.ls.documents.get(uri)
        version = doc.version if doc is not None and text is not None and doc.text == text else None
        self.runner.submit(RunRequest(uri, path, text, version, "watch", thresholds_of(self.ls)))

    def _read(self, path: Path) -> tuple[str | None, RunInputs]:
        """On the watch thread: the config file's text and what a run of it would read. While the compile
        worker preloads the engine this waits for it: two threads importing the engine's packages at once
        can deadlock on their module locks (Python then hands one a partly initialised module: 3 of 30
        fresh processes failed so)."""
        loading = self.runner.preloaded
        if loading is not None:
            with contextlib.suppress(Exception):  # a failed preload: read_inputs imports what it needs itself
                loading.result()
        try:
            text: str | None = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            text = None  # the engine reads it and says what is wrong
        return text, read_inputs(self.runner.engine.hashes, path, text)

    # ---- lifecycle
    def closed(self, uri: str) -> None:
        """Forget what the editor showed and what the watcher compared for `uri` (the last compileResult stays for
        `showTable`): reopened, the config is read and watched again, and no old run's cosines land on a file
        that may have changed while it was closed."""
        self.runner.cancel(uri)
        self.dirty.discard(uri)
        self.inputs.pop(uri, None)
        self.shown.pop(uri, None)
        if self.watcher is not None:
            self.watcher.unwatch(uri)

    def settings_changed(self) -> None:
        if self.watcher is not None:
            self.watcher.delay_s = self.ls.settings.watch_delay_ms / 1000.0
        for uri in list(self.inputs):
            if self.ls.settings.watch_files:
                self._watch(uri)
            elif self.watcher is not None:
                self.watcher.unwatch(uri)
        if self.ls.settings.watch_files:  # configs opened while watching was off: watched from now
            for doc in self.ls.documents.configs():
                if doc.uri not in self.inputs:
                    self._spawn(self.opened(doc.uri), "watch")
        if self.shown:  # the cosine thresholds may have changed: the hints' "< 0.99" marks with them
            self._refresh_hints()

    def close(self) -> None:
        self.runner.close()
        if self.watcher is not None:
            self.watcher.close()
        self.watch_pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, name))

    def _task_done(self, name: str, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.ls.report_bug(name, task.exception())


def register(ls: HbServer) -> None:
    live = Live(ls)
    ls.live = live
    ls.diagnostic_providers[SOURCE] = live.provider
    ls.on_closed.append(lambda ls, uri: live.closed(uri))
    ls.on_changed.append(lambda ls, doc, opened: live.opened(doc.uri) if opened and doc.is_config else None)
    ls.on_settings.append(lambda ls: live.settings_changed())
    ls.on_shutdown.append(lambda ls: live.close())

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    async def did_save(ls: HbServer, params: types.DidSaveTextDocumentParams) -> None:
        await live.saved(params.text_document.uri)

    @ls.command(COMPILE)
    def compile_command(ls, *args):
        uri = _argument(args, "uri")
        if not isinstance(uri, str):
            return {"started": False, "message": f'{COMPILE} takes [{{"uri": <config uri>}}]'}
        why_not = live.compile(uri, "command")
        return {"started": True} if why_not is None else {"started": False, "message": why_not}

    @ls.command(SHOW_TABLE)
    def show_table_command(ls, *args):
        uri = _argument(args, "uri")
        return live.results.get(uri) if isinstance(uri, str) else None

    @ls.command(CANCEL)
    def cancel_command(ls, *args):
        uri = _argument(args, "uri")
        return {"cancelled": live.cancel(uri) if isinstance(uri, str) else False}
