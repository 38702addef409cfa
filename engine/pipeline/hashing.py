"""Content hashes of input files and canonical JSON, memoised by (path, size, mtime, ctime, inode).

A warm process (daemon, language server) re-hashes only files whose stat changed; a touch
that changes nothing is re-hashed once and then recognised as unchanged by content. The stamp
holds ctime and the inode as well as (size, mtime), as git's index does: `cp -p`, `rsync -t` or
an archive with normalised timestamps writes new bytes under the old (size, mtime), but no user
call can set ctime, and a replace-by-rename brings a new inode.

File timestamps are coarse (a kernel tick, 1–10 ms; 2 s on FAT mtimes), so a file rewritten with
the same size within one tick keeps its stamp: a hash taken within `RACY_NS` of the file's mtime,
or within `CTIME_RACY_NS` of its ctime, is not trusted and is taken again next time ("racy"
entries, as git treats its index). The ctime window is short so that files just copied with their
old mtimes (`cp -p`, `shutil.copytree`) are trusted after a tick, not after 2 s.
`shared_hashes()` is the process's one memo: the engine's stage keys and the calibration set's
per-sample digests (engine.calibration.data) read each file once between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes read at a time when hashing or copying a file
RACY_NS = 2_000_000_000  # a hash taken less than this after the file's mtime is taken again next time
CTIME_RACY_NS = 50_000_000  # … or this after its ctime (several kernel ticks; ctime is set by the kernel only)



def stat_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another without reading it: size, mtime, ctime (a write in place
    with the mtime put back moves it) and inode (a file renamed over it)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def path_stamp(path: os.PathLike | str) -> tuple | None:
    """(path, *`stat_stamp`) of a file, None when it cannot be stat'ed: a memo key for what was read from it."""
    try:
        return (str(path), *stat_stamp(os.stat(path)))
    except OSError:
        return None


class HashMemo:
    def __init__(self) -> None:
        self._memo: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._lock = threading.Lock()

    def file(self, path: Path) -> str:
        """sha256 of the file's bytes (hex), read again only when its stat stamp changed or the last
        hash was taken within `RACY_NS` of its last change."""
        name = os.fspath(path)
        st = os.stat(name)
        stamp = stat_stamp(st)
        # the memo's slot: the absolute path as written (resolving symlinks cost more than the rest of
        # an unchanged run's keys); the slot's stamp is checked against this stat anyway
        key = name if os.path.isabs(name) else os.path.join(os.getcwd(), name)
        with self._lock:
            hit = self._memo.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
        hashed_at = time.time_ns()
        digest = sha256_file(path)
        if hashed_at - st.st_mtime_ns >= RACY_NS and hashed_at - st.st_ctime_ns >= CTIME_RACY_NS:
            with self._lock:
                self._memo[key] = (stamp, digest)
        return digest


_shared = HashMemo()


def shared_hashes() -> HashMemo:
    """The process's file-hash memo (engines, calibration sets): each file is read once per change."""
    return _shared


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
