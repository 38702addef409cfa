"""The model a config points at, read once per content hash and kept warm, never on the event loop.

Diagnostics, completion and hover need the model's input names, shapes and node names. Reading a
large ONNX file takes seconds, so `ModelCache.peek` answers at once from what is already known
(`PENDING` the first time) and starts the read in the server's own thread executor; when the read
is done the cache tells the server, which re-checks the documents using that model.

The thread hashes the files (hashlib releases the GIL) and hands the parse to `ProcessReader`, a
short-lived child process: protobuf parsing and shape inference hold the GIL (measured: an 80 MB
model stalled every other thread for 0.77 s), which would freeze typing if done in a thread. The
child exits after each read, so the model's bytes never stay in the server; only the small
`ModelInfo` is kept, by content digest.

Only the event loop thread mutates the cache (`peek`, the done callback).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from engine.daemon_client import python_module_command
from engine.frontend.model_info import ModelInfo, model_info
from engine.problems import HbError, Problem, error, info

log = logging.getLogger(__name__)

MP = "model_parameters"
KEEP_MODELS = 8
READ_TIMEOUT_S = 300


@dataclass(frozen=True)
class ModelSource:
    """What a config names as its model: `key` is the config key the problems belong on."""

    key: str  # "onnx_model" or "caffe_model"
    files: tuple[Path, ...]  # onnx: (model,); caffe: (caffemodel, prototxt)


@dataclass(frozen=True)
class ModelState:
    status: str  # "ready", "failed", "pending", "skipped"
    info: ModelInfo | None = None
    problems: tuple[Problem, ...] = ()
    digest: str = ""

    @property
    def ready(self) -> bool:
        return self.info is not None


PENDING = ModelState("pending")


def _stamp(files: tuple[Path, ...]) -> tuple | None:
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            return None
        if not os.path.isfile(f):
            return None
        out.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def content_digest(files: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def read_model(source: ModelSource) -> ModelInfo:
    """Structure only (no external weights), nodes named like the parse stage names them, shapes inferred."""
    from engine.frontend import onnx_model as fe

    if source.key == "onnx_model":
        model = fe.load_onnx(source.files[0], load_weights=False)
    else:
        from engine.frontend.caffe import convert

        model = convert(source.files[1], source.files[0])
    fe.name_nodes(model)
    try:  # shapes make hover useful; a model shape inference rejects is still worth its names
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises bare C++ errors here
        log.info("shape inference failed for %s: %s", source.files[0], exc)
    return model_info(model)


def read_state(source: ModelSource) -> ModelState:
    """Read a model into a state; a bad file becomes the problem the CLI would report (any process)."""
    try:
        return ModelState("ready", read_model(source))
    except HbError as exc:
        return ModelState("failed", problems=tuple(p if p.path else replace(p, path=(MP, source.key))
                                                   for p in exc.problems))
    except Exception as exc:  # protobuf / converter errors the frontend does not translate
        log.warning("reading model %s failed", source.files[0], exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ModelState("failed", problems=(error(
            "model-invalid", f"Onnx file invalid: '{source.files[0]}': {first}", (MP, source.key)),))


class ProcessReader:
    """Runs `read_state` in a fresh `python -m hblsp.models` per read; nothing of it stays after.

    A plain subprocess rather than multiprocessing: a spawned multiprocessing worker re-imports the
    server's main module (all of it), and a pool keeps an idle replacement worker alive. The child
    answers with a pickled `ModelState` on its own stdout pipe; anything else it prints goes to
    stderr, never to the LSP channel. Reads are serialised (one at a time).
    """

    def __init__(self, timeout: float = READ_TIMEOUT_S):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None

    def __call__(self, source: ModelSource) -> ModelState:
        shown = str(source.files[0])
        # the server's cwd is the workspace, whose own engine.py / engine/ must not replace ours
        args = python_module_command("hblsp.models", source.key, *map(str, source.files))
        why = None
        with self._lock:
            self._child = child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            try:
                out, _ = child.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
                why = f"reading it took longer than {self.timeout:g} s"
            finally:
                self._child = None
        if why is None and child.returncode == 0 and out:
            return pickle.loads(out)  # our own child's answer
        why = why or ("the reader process died while reading it (out of memory, or a crash in the ONNX library; "
                      f"exit code {child.returncode})")
        return ModelState("failed", problems=(error("model-invalid", f"Onnx file invalid: '{shown}': {why}",
                                                    (MP, source.key)),))

    def close(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:  # a read in flight must not outlive the server
            child.kill()


def _child_main(argv: list[str]) -> int:
    """`python -m hblsp.models KEY FILE...`: read one model, write the pickled state to stdout."""
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a chatty library's prints go to stderr
    key, *files = argv
    answer.write(pickle.dumps(read_state(ModelSource(key, tuple(Path(f) for f in files)))))
    answer.close()
    return 0


def load_state(source: ModelSource, max_bytes: int, known: Callable[[str], ModelState | None],
               reader: Callable[[ModelSource], ModelState] = read_state) -> ModelState:
    """Thread body: size check, hash, reuse a known digest, else read. Never raises for a bad file."""
    size = sum(f.stat().st_size for f in source.files)
    if size > max_bytes:
        mb, limit = size / 2**20, max_bytes / 2**20
        return ModelState("skipped", problems=(info(
            "model-too-big-for-editor", f"The model is {mb:.0f} MB; the editor reads models up to {limit:.0f} MB "
            "(setting hblsp.maxModelMegabytes), so checks that need the model are off", (MP, source.key)),))
    digest = content_digest(source.files)
    cached = known(digest)
    if cached is not None:
        return cached
    return replace(reader(source), digest=digest)


@dataclass
class ModelCache:
    """Model states by content digest (a few kept), file stamps by source, loads in flight."""

    executor: Executor
    on_loaded: Callable[[ModelSource], None]
    max_bytes: int = 1 << 30
    reader: Callable[[ModelSource], ModelState] = read_state
    _stamps: dict[ModelSource, tuple[tuple, str]] = field(default_factory=dict)
    _states: OrderedDict[str, ModelState] = field(default_factory=OrderedDict)
    _skipped: dict[tuple, ModelState] = field(default_factory=dict)
    _pending: dict[ModelSource, Future] = field(default_factory=dict)
    loads: int = 0  # how many times a model file was actually read (tests count these)

    def peek(self, source: ModelSource | None) -> ModelState | None:
        """Loop thread only. None: no readable model file (the config rules already say why)."""
        if source is None:
            return None
        stamp = _stamp(source.files)
        if stamp is None:
            return None
        known = self._stamps.get(source)
        if known is not None and known[0] == stamp:
            state = self._states.get(known[1]) or self._skipped.get((source, stamp))
            if state is not None:
                if known[1] in self._states:
                    self._states.move_to_end(known[1])
                return state
        if source not in self._pending:
            self._start(source, stamp)
        return PENDING

    def _start(self, source: ModelSource, stamp: tuple) -> None:
        loop = asyncio.get_running_loop()
        fut = self.executor.submit(load_state, source, self.max_bytes, self._states.get, self.reader)
        self._pending[source] = fut

        def done(f: Future) -> None:
            if not loop.is_closed():  # the server may have shut down during the read
                loop.call_soon_threadsafe(self._finish, source, stamp, f)

        fut.add_done_callback(done)

    def _finish(self, source: ModelSource, stamp: tuple, fut: Future) -> None:
        self._pending.pop(source, None)
        try:
            state = fut.result()
        except Exception:  # a bug in load_state: log it, leave the model unknown
            log.exception("model load failed for %s", source)
            return
        if state.status == "failed" and (_stamp(source.files) != stamp
                                         or any(p.code == "file-missing" for p in state.problems)):
            # the file went away (maybe only for a moment: moved and back) or changed during the
            # read: the failure says nothing of the bytes hashed before it (kept by digest, it would
            # stand for every identical copy); the re-check reads the file again if it is there
            self.on_loaded(source)
            return
        if state.status == "skipped":
            self._skipped[(source, stamp)] = state
            self._stamps[source] = (stamp, "")
        else:
            self.loads += state is not self._states.get(state.digest)
            self._states[state.digest] = state
            self._states.move_to_end(state.digest)
            while len(self._states) > KEEP_MODELS:
                self._states.popitem(last=False)
            self._stamps[source] = (stamp, state.digest)
        self.on_loaded(source)

    async def wait(self, source: ModelSource | None) -> ModelState | None:
        """Peek, and if a read is in flight, wait for it (tests, code actions that need the model)."""
        state = self.peek(source)
        fut = self._pending.get(source) if source is not None else None
        if state is PENDING and fut is not None:
            await asyncio.wrap_future(fut)
            await asyncio.sleep(0)  # let the done callback store the result
            state = self.peek(source)
        return state


if __name__ == "__main__":  # run from the importable module, so the pickled classes are hblsp.models'
    from hblsp.models import _child_main as child_main

    raise SystemExit(child_main(sys.argv[1:]))
