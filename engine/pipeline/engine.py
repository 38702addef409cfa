"""The warm engine: runs the stage list over a config, reusing every stage whose key is unchanged.

One `Engine` lives as long as its process: the CLI makes one per run, the language server and
the daemon keep one, so file hashes, parsed models and onnxruntime sessions stay warm. State
kept here is only a speed-up; every result is a pure function of the stage keys.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import Config, read_config
from engine.config.loader import LoadResult, locate
from engine.config.values import resolve_path
from engine.pipeline.cache import StageCache
from engine.pipeline.hashing import shared_hashes
from engine.pipeline.publish import Publisher
from engine.pipeline.recent import Recent
from engine.pipeline.report import RunReport, StageRun
from engine.pipeline.stage import Cancelled, KeyParts, Stage, StageContext, explain
from engine.problems import HbError, error

log = logging.getLogger("hbcompile")
CACHES_KEPT = 16  # working_dirs whose StageCache an engine keeps (a daemon may serve many)
Progress = Callable[[str, str, float | None], None]  # (stage, message, fraction)


class Engine:
    def __init__(self) -> None:
        self.hashes = shared_hashes()  # shared with the calibration set's per-sample digests
        self.warm: dict[str, Any] = {}  # stage-owned warm state (sessions, parsed models)
        self.lock = threading.Lock()  # one run at a time per engine
        self.publisher = Publisher(self.hashes)  # what it copied into working_dirs (kept warm)
        self.writable: set[str] = set()  # working_dirs a probe file was written into by this engine
        self.caches: Recent[str, StageCache] = Recent(CACHES_KEPT)  # cache root → its StageCache (kept warm)

    def cache_root(self, config: Config) -> Path:
        return config.working_dir / ".hb_cache"

    def stage_cache(self, config: Config) -> StageCache:
        """The config's `StageCache`, kept between runs (it knows entries it read by their files' stat)."""
        root = self.cache_root(config)
        cache = self.caches.get(str(root))
        if cache is None:
            cache = self.caches.put(str(root), StageCache(root))
        return cache

    def stages(self) -> list[Stage]:
        from engine.stages import STAGES

        return STAGES

    def key_parts(self, stage: Stage, config: Config, upstream: dict[str, str]) -> KeyParts:
        """`upstream`: each earlier stage's output digest (not its key: a stage that re-ran and wrote
        the same outputs leaves every later key as it was)."""
        files = {}
        for p in stage.files(config):
            files[str(p)] = self.hashes.file(p)
        return KeyParts(stage.name, stage.version, config.slice(*stage.reads), files,
                        {u: upstream[u] for u in stage.after}, stage.extra(config))

    def run(self, config_path: str | Path, until: str | None = None, progress: Progress | None = None,
            cancel: threading.Event | None = None, loaded: LoadResult | None = None) -> RunReport:
        with self.lock:
            return self._run(Path(config_path), until, progress, cancel, loaded)

    def _run(self, config_path: Path, until: str | None, progress: Progress | None,
             cancel: threading.Event | None, loaded: LoadResult | None) -> RunReport:
        cpu = time.process_time()
        report = self._stages(config_path, until, progress, cancel, loaded)
        report.cpu_seconds = time.process_time() - cpu
        return report

    def _stages(self, config_path: Path, until: str | None, progress: Progress | None,
                cancel: threading.Event | None, loaded: LoadResult | None) -> RunReport:
        t0 = time.perf_counter()
        report = RunReport(config_path, until=until)
        result = loaded or read_config(config_path)
        report.problems.extend(result.problems)
        config_run = StageRun("config", "ran", seconds=time.perf_counter() - t0)
        report.stages.append(config_run)
        if not result.ok:
            config_run.status = "failed"
            report.seconds = time.perf_counter() - t0
            return report
        config = result.config
        report.config = config
        shown = str(config_path)
        if not self._working_dir_ok(config, report, result, shown):
            report.seconds = time.perf_counter() - t0
            return report
        cache = self.stage_cache(config)
        previous = cache.last_parts()
        keys: dict[str, str] = {}
        outputs: dict[str, str] = {}  # stage -> digest of its entry's files (StageCache.outputs)
        read_by_later = {u for s in self.stages() for u in s.after}
        entries: dict[str, Path] = {}
        parts_now: dict[str, Any] = dict(previous)
        for stage in self.stages():
            if cancel is not None and cancel.is_set():
                report.stages.append(StageRun(stage.name, "cancelled", "cancelled before start"))
                break
            t, cpu = time.perf_counter(), time.process_time()
            try:
                parts = self.key_parts(stage, config, outputs)
            except OSError as exc:
                report.problems.append(error("file-unreadable", f"Cannot read {exc.filename}: {exc.strerror}",
                                             file=shown))
                report.stages.append(StageRun(stage.name, "failed", "input file unreadable"))
                break
            key = parts.key
            keys[stage.name] = key
            entry = cache.lookup(stage.name, key)
            if entry is not None:
                report.stages.append(StageRun(stage.name, "reused", "unchanged", time.perf_counter() - t, key))
                report.results[stage.name] = cache.result(entry)
                if progress:
                    progress(stage.name, f"Reuse {stage.name} result (unchanged inputs).", 1.0)
                for level, message in cache.said(entry):
                    log.log(level, message)
                if stage.name in read_by_later:
                    outputs[stage.name] = cache.outputs(entry)
                entries[stage.name] = entry
                parts_now[stage.name] = parts.as_json()
            else:
                reason = explain(parts, previous.get(stage.name))
                if progress:
                    progress(stage.name, f"Start to {stage.name} model ({reason}).", 0.0)
                log.debug("Start stage %s (%s)", stage.name, reason)
                run = StageRun(stage.name, "ran", reason, key=key)
                report.stages.append(run)
                tmp = cache.new_temp(stage.name)
                ctx = StageContext(stage, config, tmp, dict(entries), self, key, cancel,
                                   (lambda m, f, s=stage.name: progress(s, m, f)) if progress else None, log)
                try:
                    with StageLog() as said:
                        out = stage.fn(ctx)
                    self._inputs_unchanged(stage, config, outputs, parts)
                    entry = cache.commit(stage.name, key, tmp, out, digest=stage.name in read_by_later,
                                         said=said.lines)
                except Cancelled:
                    cache.discard(tmp)
                    run.status, run.reason = "cancelled", "cancelled"
                    break
                except HbError as exc:
                    cache.discard(tmp)
                    run.status = "failed"
                    report.problems.extend(locate(exc.problems, result.doc, shown) if result.doc else exc.problems)
                    break
                except Exception as exc:  # a bug: say so in one line, keep the traceback in the log
                    cache.discard(tmp)
                    run.status = "failed"
                    log.debug("stage %s crashed:\n%s", stage.name, traceback.format_exc())
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    report.problems.append(error("stage-crash", f"*** ERROR-OCCUR-DURING {stage.name} ***: "
                                                 f"{type(exc).__name__}: {first}", file=shown))
                    break
                finally:
                    run.seconds = time.perf_counter() - t
                    run.cpu_seconds = time.process_time() - cpu
                    run.peak_rss_mb = peak_rss_mb()
                report.results[stage.name] = out or {}
                if progress:  # the console says it as the stage ends, as hb_compile does
                    progress(stage.name, f"Successfully {stage.name} model ({run.seconds:.2f}s).", 1.0)
                if stage.name in read_by_later:
                    outputs[stage.name] = cache.outputs(entry)
                entries[stage.name] = entry
                parts_now[stage.name] = parts.as_json()
                log.debug("Stage %s done in %.2fs", stage.name, run.seconds)
            if until is not None and stage.name == until:
                break
        if report.ok:
            try:
                report.artefacts = self._publish(config, entries)
            except OSError as exc:
                report.problems.append(error("working-dir-unwritable", f"Cannot write into working_dir "
                                             f"{config.working_dir}: {exc.strerror}", ("model_parameters", "working_dir"),
                                             file=shown))
            except HbError as exc:
                report.problems.extend(locate(exc.problems, result.doc, shown) if result.doc else exc.problems)
            cache.save_parts(parts_now, previous)
        report.seconds = time.perf_counter() - t0
        return report

    def _inputs_unchanged(self, stage: Stage, config: Config, outputs: dict[str, str], before: KeyParts) -> None:
        """A stage's result is filed under the key of the inputs it was started on: an input file
        rewritten while it ran would file one file's result under another's key (an undo in the
        editor then reuses the wrong thresholds). The hash memo re-reads only files whose stat changed."""
        after = self.key_parts(stage, config, outputs)
        if after.key == before.key:
            return
        changed = sorted(f for f in set(before.files) | set(after.files) if before.files.get(f) != after.files.get(f))
        what = f"input file {', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}" if changed else "an input"
        raise InputsChangedError(error("input-changed", f"{what} changed during the {stage.name} stage; run again"))

    def _working_dir_ok(self, config: Config, report: RunReport, result: LoadResult, shown: str) -> bool:
        wd = config.working_dir
        if str(wd) in self.writable and os.access(wd, os.W_OK | os.X_OK):  # probed before: a warm run asks only
            return True
        try:
            wd.mkdir(parents=True, exist_ok=True)
            probe = wd / f".hb_write_probe_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            self.writable.add(str(wd))
            return True
        except OSError as exc:
            p = error("working-dir-unwritable", f"Cannot write into working_dir {wd}: {exc.strerror}",
                      ("model_parameters", "working_dir"))
            report.problems.extend(locate([p], result.doc, shown) if result.doc else [p])
            report.stages[0].status = "failed"
            return False

    def _publish(self, config: Config, entries: dict[str, Path]) -> dict[str, Path]:
        """Copy each stage's artefacts into working_dir (`engine.pipeline.publish`). An artefact the
        stage's entry does not have this time (sensitivity off, no removed nodes), or of a stage this
        run stopped before (`--skip compile`: no `.hbm`), is removed, so working_dir never mixes this
        run's files with an older run's (an old `.hbm` beside a new `.bc` is not the model just built)."""
        artefacts: list[tuple[str, Path | None]] = []
        keys: dict[str, str] = {}
        for stage in self.stages():
            entry = entries.get(stage.name)
            for src_name, template in stage.artefacts.items():
                name = template.format(prefix=config.prefix)
                artefacts.append((name, None if entry is None else entry / src_name))
                keys[name] = template.format(prefix="{prefix}")
        quant_config = config.calibration.quant_config
        inputs = [p for p in (config.path, *config.model.model_files, *config.calibration.cal_data_dir,
                              resolve_path(quant_config, config.base_dir) if isinstance(quant_config, str) else None)
                  if p]
        published = self.publisher.publish(config.working_dir, self.cache_root(config), artefacts, inputs)
        return {keys[name]: path for name, path in published.items()}


class StageLog:
    """The INFO-and-above lines a stage logs on this thread (`Select max method.`, `FPS=…`): kept in its
    cache entry and told again when the entry is reused, so a reused run prints what a cold one does.

    Whoever runs the engine sets the level (the language server: WARNING): while any stage runs, the
    logger is opened to INFO so the lines exist to be kept, and one shared filter hands each record to
    the stage of its thread and drops what the level the logger had would not have let through, so
    nobody sees more than before. Engines running stages on several threads at once share that one
    opening (the first to enter opens, the last to leave restores)."""

    _lock = threading.Lock()
    _active: dict[int, StageLog] = {}  # thread id → its running stage's log
    _level = logging.NOTSET  # the logger's own level before the first stage entered
    _shown = logging.NOTSET  # the level the logger let through before

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.lines: list[tuple[int, str]] = []

    @classmethod
    def _filter(cls, record: logging.LogRecord) -> bool:
        mine = cls._active.get(record.thread)
        if mine is not None and record.levelno >= logging.INFO:
            mine.lines.append((record.levelno, record.getMessage()))
        return record.levelno >= cls._shown

    def __enter__(self) -> StageLog:
        with StageLog._lock:
            if not StageLog._active:
                StageLog._level, StageLog._shown = log.level, log.getEffectiveLevel()
                if StageLog._shown > logging.INFO:
                    log.setLevel(logging.INFO)
                log.addFilter(StageLog._filter)
            StageLog._active[self.thread] = self
        return self

    def __exit__(self, *exc: object) -> None:
        with StageLog._lock:
            StageLog._active.pop(self.thread, None)
            if not StageLog._active:
                log.removeFilter(StageLog._filter)
                log.setLevel(StageLog._level)


class InputsChangedError(HbError):
    """An input file of a stage was rewritten while the stage ran."""


def peak_rss_mb() -> float:
    """This process's own peak (VmHWM): ru_maxrss carries a big parent's peak over fork + exec. Read with
    os.read: a text-mode open cost ~0.1 ms per stage."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        try:
            status = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        at = status.find(b"\nVmHWM:")
        if at >= 0:
            return int(status[at + 7:status.index(b"\n", at + 1)].split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_default: Engine | None = None


def default_engine() -> Engine:
    global _default
    if _default is None:
        _default = Engine()
    return _default


def run(config_path: str | Path, until: str | None = None, *, engine: Engine | None = None,
        progress: Progress | None = None, cancel: threading.Event | None = None) -> RunReport:
    """Run the pipeline over a config file up to stage `until` (inclusive). Never raises for bad input."""
    return (engine or default_engine()).run(config_path, until, progress, cancel)
