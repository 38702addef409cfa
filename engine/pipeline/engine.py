"""The warm engine: runs the stage list over a config, reusing every stage whose key is unchanged.

One `Engine` lives as long as its process: the CLI makes one per run, the language server and
the daemon keep one, so file hashes, parsed models and onnxruntime sessions stay warm. State
kept here is only a speed-up; every result is a pure function of the stage keys.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import Config, read_config
from engine.config.loader import LoadResult, locate
from engine.pipeline.cache import StageCache, atomic_copy, published_mode
from engine.pipeline.hashing import shared_hashes
from engine.pipeline.report import RunReport, StageRun
from engine.pipeline.stage import Cancelled, KeyParts, Stage, StageContext, explain
from engine.problems import HbError, error

log = logging.getLogger("hbcompile")
Progress = Callable[[str, str, float | None], None]  # (stage, message, fraction)


class Engine:
    def __init__(self) -> None:
        self.hashes = shared_hashes()  # shared with the calibration set's per-sample digests
        self.warm: dict[str, Any] = {}  # stage-owned warm state (sessions, parsed models)
        self.lock = threading.Lock()  # one run at a time per engine
        self.copied: dict[str, tuple[str, int, int]] = {}  # published artefact -> (cache file, size, mtime_ns)
        self.writable: set[str] = set()  # working_dirs a probe file was written into by this engine

    def cache_root(self, config: Config) -> Path:
        return config.working_dir / ".hb_cache"

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
        cache = StageCache(self.cache_root(config))
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
                    out = stage.fn(ctx)
                    self._inputs_unchanged(stage, config, outputs, parts)
                    entry = cache.commit(stage.name, key, tmp, out, digest=stage.name in read_by_later)
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
        """Copy each stage's artefacts into working_dir (temp file + os.replace each). An artefact the
        stage's entry does not have this time (sensitivity off, no removed nodes), or of a stage this
        run stopped before (`--skip compile`: no `.hbm`), is removed, so working_dir never mixes this
        run's files with an older run's (an old `.hbm` beside a new `.bc` is not the model just built)."""
        out: dict[str, Path] = {}
        for stage in self.stages():
            entry = entries.get(stage.name)
            for src_name, template in stage.artefacts.items():
                dest = config.working_dir / template.format(prefix=config.prefix)
                if entry is None:
                    if dest.exists():
                        log.info("removed %s: a stage this run stopped before (%s) built it", dest.name, stage.name)
                    self._unpublish(dest)
                    continue
                src = entry / src_name
                if src.is_dir():  # a folder artefact (calibration_data/): replaced as a whole
                    if self.copied.get(str(dest)) != (str(src), 0, 0) or not dest.is_dir():
                        replace_folder(src, dest)
                        self.copied[str(dest)] = (str(src), 0, 0)
                    out[template.format(prefix="{prefix}")] = dest
                    continue
                if not src.is_file():
                    self._unpublish(dest)
                    continue
                if not self._published_from(dest, src):
                    atomic_copy(src, dest)
                    self._remember_copy(dest, src)
                out[template.format(prefix="{prefix}")] = dest
        return out

    def _published_from(self, dest: Path, src: Path) -> bool:
        """Whether `dest` holds `src`'s bytes: this engine copied it from that entry (entries never
        change) and its (size, mtime) are what the copy left; else compared by content (files written in
        the last 2 s are hashed again on every look: the hash memo's racy window)."""
        try:
            st = os.stat(dest)
        except OSError:
            return False
        if self.copied.get(str(dest)) == (str(src), st.st_size, st.st_mtime_ns):
            return True
        if self.hashes.file(dest) != self.hashes.file(src):
            return False
        self._remember_copy(dest, src, st)
        return True

    def _remember_copy(self, dest: Path, src: Path, st: os.stat_result | None = None) -> None:
        """`dest` now holds `src`'s bytes: remembered by (size, mtime) so the next publish skips it."""
        st = st or os.stat(dest)
        self.copied[str(dest)] = (str(src), st.st_size, st.st_mtime_ns)

    def _unpublish(self, dest: Path) -> None:
        """An artefact this run does not make leaves working_dir (a folder artefact as a whole), and
        the record of what was copied there."""
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink(missing_ok=True)
        self.copied.pop(str(dest), None)


def replace_folder(src: Path, dest: Path) -> None:
    """`dest` becomes a copy of `src`: copied beside it first, then swapped in by renames."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        os.chmod(tmp, published_mode(directory=True))  # after copytree: it copies the entry folder's mode
        if dest.is_dir():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class InputsChangedError(HbError):
    """An input file of a stage was rewritten while the stage ran."""


def peak_rss_mb() -> float:
    """This process's own peak (VmHWM): ru_maxrss carries a big parent's peak over fork + exec."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
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
