"""Content-addressed stage outputs under `working_dir/.hb_cache/<stage>/<key>/`.

An entry is a folder written under a temporary name and renamed into place, so it is either
complete or absent. `meta.json` lists its files; an entry whose files are missing is a corrupt
entry: logged, removed and treated as a miss.

`meta.json` also holds the entry's output digest (`content_digest`): what later stages key on in
place of this stage's key, so a re-run that writes the same outputs (a changed calibration file
that moves no threshold) re-runs nothing after it — the early cutoff of build systems (Shake's,
Bazel's). Later stages read an entry's files only, never its result (what the run tells the user:
"computed 1 of 32 samples").

Finer memos live in `.hb_cache/memo/<kind>/`. One named by `memo_name(owner key, …)` belongs to
that stage entry and is removed once the entry is pruned (every commit checks), so per-sample
memos do not outgrow the kept entries (about 0.6 MB per sample and model version on det).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine.pipeline.hashing import CHUNK, sha256_file, stat_stamp

log = logging.getLogger("hbcompile")
KEEP_PER_STAGE = 4
MEMO = "memo"
TRASH = ".trash"  # pruned entries on their way out (`StageCache._trash`)
_OWNED = re.compile(r"^([0-9a-f]{16})-")  # memo entries named by memo_name
STALE_TEMP_SECONDS = 3600  # a memo temp file this old was left by a process that died


class StageCache:
    """One cache root. A warm engine keeps its `StageCache` between runs (`Engine.stage_cache`): each
    entry's `meta.json` is parsed once and known again by its stat stamp, and `last_run.json` likewise,
    so a run that reuses seven stages reads no JSON to find them (only stats)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._meta: dict[Path, dict[str, Any]] = {}  # meta.json of entries looked up (entries never change)
        self._stamps: dict[Path, tuple[int, ...]] = {}  # entry → its meta.json's stat_stamp when read
        self._last: tuple[tuple[int, int, int], dict[str, Any]] | None = None  # last_run.json (stamp, parts)
        self._trash_checked = False
        self._memos_checked = False  # whether a commit of this cache pruned the memos yet (`commit`)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        d = self.entry(stage, key)
        stamp = _stamp(d / "meta.json")
        if stamp is None:
            return None
        if self._stamps.get(d) == stamp and d in self._meta:  # read before: only its files' presence is asked
            read = self._meta[d] if all((d / f).is_file() for f in self._meta[d]["files"]) else None
        else:
            read = self._complete(d)
        if read is not None:
            try:
                os.utime(d)  # recency for pruning
                self._meta[d] = read
                self._stamps[d] = stamp
                return d
            except OSError:
                pass
        log.warning("cache entry %s/%s is corrupt; it is removed and recomputed", stage, key[:12])
        self._meta.pop(d, None)
        self._stamps.pop(d, None)
        shutil.rmtree(d, ignore_errors=True)
        return None

    def new_temp(self, stage: str) -> Path:
        try:  # the stage folder is there but on a stage's first run: no mkdir of it each time
            return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / stage))
        except FileNotFoundError:
            (self.root / stage).mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / stage))

    def commit(self, stage: str, key: str, tmp: Path, result: dict[str, Any] | None, digest: bool = True,
               said: list[tuple[int, str]] | None = None) -> Path:
        """Rename `tmp` into place as the entry of (`stage`, `key`). `digest`: record the output digest
        (no later stage reading this one: it is taken if ever asked for, by `outputs`); `said`: the
        (level, message) lines the stage logged, told again when the entry is reused (`said`)."""
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        meta = {"stage": stage, "key": key, "files": files, "result": result or {}, "said": said or []}
        if digest:
            meta["outputs"] = content_digest(tmp, files)
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        dest = self.entry(stage, key)
        for _ in range(3):
            try:
                os.replace(tmp, dest)  # atomic; refused (ENOTEMPTY / EEXIST) when dest holds an entry
                break
            except OSError:
                if not dest.is_dir():
                    raise
            if self._complete(dest) is not None:  # another process committed this key meanwhile: same inputs, keep theirs
                self.discard(tmp)
                break
            shutil.rmtree(dest, ignore_errors=True)  # a torn entry: ours replaces it
        else:
            raise OSError(f"cannot commit cache entry {dest}: it keeps reappearing incomplete")
        if self._prune(stage, keep=dest) or not self._memos_checked:
            # memos change owners only when an entry goes: a warm digits run after one calibration file
            # changed commits five entries, and listing every stage and memo folder each time cost ~1.2 ms
            self._memos_checked = True
            self.prune_memos()
        return dest

    def prune_memos(self) -> list[Path]:
        """Remove memo entries (`memo/<kind>/<owner>-…`) whose owner stage entry no longer exists."""
        memo = self.root / MEMO
        if not memo.is_dir():
            return []
        # os.scandir: the folder types come with the listing (a warm compile edit lists ~40 names here)
        live = {e.name[:16] for stage in _folders(self.root) if stage.name != MEMO and not stage.name.startswith(".")
                for e in os.scandir(stage.path)}
        removed = []
        for kind in _folders(memo):
            for entry in os.scandir(kind.path):
                m = _OWNED.match(entry.name)
                if m and m.group(1) not in live:
                    path = Path(entry.path)
                    (shutil.rmtree(path, ignore_errors=True) if entry.is_dir() else path.unlink(missing_ok=True))
                    removed.append(path)
        return removed

    @staticmethod
    def _complete(entry: Path) -> dict[str, Any] | None:
        """The entry's meta when every file it lists is there, else None (missing, torn or corrupt)."""
        try:
            meta = json.loads((entry / "meta.json").read_text())
            return meta if all((entry / f).is_file() for f in meta["files"]) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def meta(self, entry: Path) -> dict[str, Any]:
        if entry not in self._meta:
            self._meta[entry] = json.loads((entry / "meta.json").read_text())
        return self._meta[entry]

    def result(self, entry: Path) -> dict[str, Any]:
        return self.meta(entry).get("result", {})

    def said(self, entry: Path) -> list[tuple[int, str]]:
        """What the stage logged when it made this entry (hb_compile prints it on every run: `FPS=…`)."""
        return [(int(level), str(message)) for level, message in self.meta(entry).get("said", [])]

    def outputs(self, entry: Path) -> str:
        """The entry's output digest (`content_digest`), taken again for an entry written without one."""
        meta = self.meta(entry)
        return meta.get("outputs") or content_digest(entry, meta["files"])

    def _prune(self, stage: str, keep: Path) -> bool:
        """Move the stage's oldest entries beyond `KEEP_PER_STAGE` out; whether any went."""
        found = [e for e in _folders(self.root / stage) if not e.name.startswith(".tmp-")]
        if len(found) <= KEEP_PER_STAGE:
            return False
        mtimes = {}
        for e in found:
            try:
                mtimes[Path(e.path)] = e.stat().st_mtime
            except OSError:  # pruned meanwhile by another process
                pass
        entries = sorted(mtimes, key=mtimes.__getitem__, reverse=True)
        pruned = False
        for old in entries[KEEP_PER_STAGE:]:
            if old != keep:
                self._trash(old)
                self._meta.pop(old, None)
                self._stamps.pop(old, None)
                pruned = True
        return pruned

    def _trash(self, entry: Path) -> None:
        """Take a pruned entry out of its stage folder at once (one rename into `TRASH`) and delete it on
        a background thread: removing an entry's files cost a compile edit 2-3 ms of waiting on this
        disk (0.3 ms CPU), for a folder no run reads again. A process that dies first leaves it in
        `TRASH`, which the next pruning `StageCache` empties."""
        trash = self.root / TRASH
        if not self._trash_checked:  # left by a process that died before deleting it
            self._trash_checked = True
            for left in _folders(trash):
                _deleter.put(Path(left.path))
        dest = trash / f"{entry.parent.name}-{entry.name[:16]}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            trash.mkdir(exist_ok=True)
            os.replace(entry, dest)
        except OSError:  # gone meanwhile, or the rename refused: delete it here
            shutil.rmtree(entry, ignore_errors=True)
            return
        _deleter.put(dest)

    def discard(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- what the last run was made of, for explanations
    def last_parts(self) -> dict[str, Any]:
        """What the last run's keys were made of (`save_parts`), as JSON gives it back; callers only read it."""
        path = self.root / "last_run.json"
        stamp = _stamp(path)
        if stamp is not None and self._last is not None and self._last[0] == stamp:
            return self._last[1]
        try:
            parts = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if stamp is not None:
            self._last = (stamp, parts)
        return parts

    def save_parts(self, parts: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        """Write what this run's keys were made of; nothing when it equals `previous` (as last_parts read it)."""
        text = json.dumps(parts, default=str)
        written = json.loads(text)
        if previous is not None and written == previous:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "last_run.json"
        atomic_write_text(path, text)
        stamp = _stamp(path)
        self._last = (stamp, written) if stamp is not None else None


class _Deleter:
    """One daemon thread that deletes the folders it is handed (pruned cache entries moved to `TRASH`)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._pending = 0

    def put(self, folder: Path) -> None:
        with self._done:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hbcompile-prune", daemon=True)
                self._thread.start()
        self._queue.put(folder)

    def _run(self) -> None:
        while True:
            folder = self._queue.get()
            shutil.rmtree(folder, ignore_errors=True)
            with self._done:
                self._pending -= 1
                self._done.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every folder handed so far is deleted; False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)


_deleter = _Deleter()


def _folders(path: Path) -> list[os.DirEntry]:
    """The folders directly in `path` (none when it is gone)."""
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir()]
    except OSError:
        return []


def _stamp(path: Path) -> tuple[int, ...] | None:
    """A regular file's `stat_stamp`, None when there is none: a file rewritten gets another stamp."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat_stamp(st) if stat.S_ISREG(st.st_mode) else None


TIMING_KEYS = frozenset({"seconds", "cpu_seconds"})  # how long a step took, not what it produced


def content_digest(folder: Path, files: list[str]) -> str:
    """sha256 over an entry's files by name and content: what later stages read of it. A `.json` counts
    by its value without timings (`TIMING_KEYS` at any depth: mixed precision and sensitivity record
    their search time in calibrate's accuracy.json / sensitivity.json, and no later stage reads it)."""
    return hashlib.sha256(json.dumps([[name, _file_digest(folder / name)] for name in sorted(files)]).encode()
                          ).hexdigest()


def _file_digest(path: Path) -> str:
    if path.suffix == ".json":
        data = path.read_bytes()
        try:
            value = _without_timings(json.loads(data))
            return "json:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
        except (ValueError, RecursionError):  # not JSON after all: its bytes
            return hashlib.sha256(data).hexdigest()
    return sha256_file(path)  # models: streamed, not read whole into memory


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def memo_name(owner_key: str, rest: str) -> str:
    """The name of a memo entry that lives as long as the stage entry `owner_key` (see `prune_memos`)."""
    return f"{owner_key[:16]}-{rest}"


def memo_temp(folder: Path, name: str) -> Path:
    """A temp path for writing memo file `name`, unique per process (two runs may fill one memo)."""
    return folder / f".{name}.{os.getpid()}.tmp"


def memo_write(folder: Path, name: str, data: bytes) -> bool:
    """Save memo file `name` through a `memo_temp` path (so `prune_memo_files` clears what a crashed
    writer leaves); a folder pruned meanwhile by another process only loses the memo (False)."""
    tmp = memo_temp(folder, name)
    try:
        tmp.write_bytes(data)
        tmp.replace(folder / name)
        return True
    except OSError as e:
        log.debug(f"memo {folder.name}/{name} not saved: {e}")
        tmp.unlink(missing_ok=True)
        return False


def prune_memo_files(folder: Path, keep: set[str]) -> list[Path]:
    """Remove the files of a per-sample memo folder that are not in `keep` (samples no longer in the
    set), and temp files left by dead processes; another process's fresh temp files stay."""
    removed = []
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:  # the whole folder was pruned meanwhile
        return []
    for p in entries:
        try:
            if p.name.startswith("."):
                if p.name.endswith(".tmp") and now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                    p.unlink(missing_ok=True)
                    removed.append(p)
            elif p.is_file() and p.name not in keep:
                p.unlink(missing_ok=True)
                removed.append(p)
        except OSError:  # gone meanwhile
            pass
    return removed


def _process_umask() -> int:
    """The umask, read without changing it where Linux says it (/proc, 4.7+); else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def published_mode() -> int:
    """The mode a plain `mkdir()` would give a folder: mkdtemp makes 0700 ones, which other users, a
    container or a web server serving the models could not read (files get theirs from `_new_temp`)."""
    return 0o777 & ~_process_umask()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _new_temp(path: Path) -> tuple[int, str]:
    """A new file beside `path` (`.name.<random>`), open for writing, with the mode a plain `open()` gives
    (0666 less the umask, applied by the kernel: no umask read, no chmod)."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dest: Path) -> str:
    """Copy `src` over `dest` atomically; returns the sha256 of the bytes copied, so a publisher does not
    read `src` again to hash it."""
    fd, tmp = _new_temp(dest)
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fsrc, os.fdopen(fd, "wb", buffering=0) as fdst:
            while chunk := fsrc.read(CHUNK):
                h.update(chunk)
                fdst.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest()
