"""Compile runs for the language server: one warm engine, one worker thread, no pile-up.

The server keeps ONE `engine.pipeline.Engine` for its whole life: its file-hash memo, warm state
(onnxruntime sessions, parsed models) and the per-sample calibration statistics on disk make a
second run cost only what changed. Runs execute on this module's own single worker thread (never
pygls' pool, which also reads stdin), so the event loop keeps answering while a model compiles.

Per config there is at most one run going and one waiting. A new request while a run is going
cancels it (the engine checks between stages and between calibration samples; what finished is
already cached) and waits as *the* next run: a burst of saves runs twice, not N times. The
cancelled run is "superseded": its outcome is not shown, the next one's is.

All methods run on the event loop; the hooks are called there too (progress is hopped over from
the worker thread with `call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import load_config_text, read_config
from engine.pipeline import Engine, preload
from hblsp.results import Outcome, Thresholds, compile_result, outcome_of
from hblsp.run_inputs import RunInputs, read_inputs

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.1  # calibration reports at most this often (the first and last always)


@dataclass(frozen=True)
class RunRequest:
    uri: str
    path: Path  # the config file (relative paths in it resolve against its folder)
    text: str | None  # the text compiled (the editor's); None: the file's
    version: int | None  # the document version `text` is, when it is one
    trigger: str  # "save" | "command" | "watch"
    thresholds: Thresholds = Thresholds()


@dataclass(eq=False)
class Job:
    request: RunRequest
    number: int
    cancel: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False  # cancelled because a newer request for the same config is waiting
    submitted: float = field(default_factory=time.perf_counter)
    data: dict[str, Any] = field(default_factory=dict)  # the hooks' own state (progress token…)

    @property
    def uri(self) -> str:
        return self.request.uri


@dataclass(frozen=True)
class Finished:
    job: Job
    payload: dict[str, Any] | None = None
    outcome: Outcome | None = None
    inputs: RunInputs | None = None
    error: BaseException | None = None  # a bug in the run (never bad input: that is a problem)


@dataclass
class RunHooks:
    before: Callable[[Job], Awaitable[None]]  # e.g. create the progress token and begin
    progress: Callable[[Job, str, str, float | None], None]  # (job, stage, message, fraction)
    finished: Callable[[Finished], None]


class CompileRunner:
    def __init__(self, hooks: RunHooks) -> None:
        self.hooks = hooks
        self.engine = Engine()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hblsp-compile")
        self.jobs: dict[str, Job] = {}  # uri → the run going (or queued on the worker)
        self.pending: dict[str, RunRequest] = {}  # uri → the one run that waits for it
        self._count = 0
        self._tasks: set[asyncio.Task] = set()
        self.preloaded: Future[float] | None = None  # the engine modules' loading (`preload`)

    def preload(self) -> Future[float]:
        """Load the engine's modules on the worker, once (a config was opened: a run is likely). The
        worker is the runs' own thread, so a save that comes first waits for it rather than loading
        the same modules beside it."""
        if self.preloaded is None:
            self.preloaded = self.pool.submit(self._preload)
        return self.preloaded

    @staticmethod
    def _preload() -> float:
        t0 = time.perf_counter()
        preload()
        return time.perf_counter() - t0

    def busy(self, uri: str) -> bool:
        return uri in self.jobs or uri in self.pending

    def submit(self, request: RunRequest) -> Job | None:
        """Start a run, or (one is going) cancel it and make this the next one. None when queued."""
        job = self.jobs.get(request.uri)
        if job is not None:
            job.superseded = True
            job.cancel.set()
            self.pending[request.uri] = request
            return None
        return self._start(request)

    def cancel(self, uri: str) -> bool:
        """Stop the run of `uri` and drop the waiting one; False when nothing was going."""
        dropped = self.pending.pop(uri, None) is not None
        job = self.jobs.get(uri)
        if job is None:
            return dropped
        already = job.cancel.is_set() and not job.superseded
        job.superseded = False  # nothing follows it now: its (cancelled) outcome is the one to show
        job.cancel.set()
        return dropped or not already

    def close(self) -> None:
        self.pending.clear()
        for job in self.jobs.values():
            job.cancel.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- internals
    def _start(self, request: RunRequest) -> Job:
        self._count += 1
        job = Job(request, self._count)
        self.jobs[request.uri] = job
        task = asyncio.ensure_future(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self.hooks.before(job)
            finished = await loop.run_in_executor(self.pool, self._work, job, loop)
        except Exception as exc:  # a bug: reported by the hook, the server keeps serving
            finished = Finished(job, error=exc)
        if self.jobs.get(job.uri) is job:
            del self.jobs[job.uri]
        try:
            self.hooks.finished(finished)
        finally:
            waiting = self.pending.pop(job.uri, None)
            if waiting is not None:
                self._start(waiting)

    def _work(self, job: Job, loop: asyncio.AbstractEventLoop) -> Finished:
        """On the worker thread: fingerprint the inputs, run the engine, build the payload."""
        req = job.request
        if req.text is not None:
            loaded = load_config_text(req.text, req.path.parent.resolve(), str(req.path), path=req.path)
        else:
            loaded = read_config(req.path)
        inputs = read_inputs(self.engine.hashes, req.path, req.text)
        report = self.engine.run(req.path, progress=self._progress_for(job, loop), cancel=job.cancel,
                                 loaded=loaded)
        payload = compile_result(req.uri, req.version, report, req.thresholds)
        return Finished(job, payload, outcome_of(payload, report, len(loaded.problems)), inputs)

    def _progress_for(self, job: Job, loop: asyncio.AbstractEventLoop) -> Callable[[str, str, float | None], None]:
        last = {"stage": "", "at": 0.0}

        def progress(stage: str, message: str, fraction: float | None) -> None:
            now = time.perf_counter()
            if stage == last["stage"] and fraction not in (None, 1.0) and now - last["at"] < PROGRESS_EVERY_S:
                return
            last["stage"], last["at"] = stage, now
            loop.call_soon_threadsafe(self.hooks.progress, job, stage, message, fraction)

        return progress
