"""Content hashes of input files and canonical JSON, memoised by (path, size, mtime).

A warm process (daemon, language server) re-hashes only files whose stat changed; a touch
that changes nothing is re-hashed once and then recognised as unchanged by content.

File timestamps are coarse (a kernel tick, 1–10 ms; 2 s on FAT), so a file rewritten with the
same size within one tick keeps its (size, mtime): a hash taken while the file's mtime is that
recent is not trusted and is taken again next time ("racy" entries, as git treats its index).
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

_CHUNK = 1 << 20
RACY_NS = 2_000_000_000  # a hash taken less than this after the file's mtime is taken again next time


class HashMemo:
    def __init__(self) -> None:
        self._memo: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def file(self, path: Path) -> str:
        """sha256 of the file's bytes (hex), read again only when its size or mtime changed or the
        last hash was taken within `RACY_NS` of its mtime."""
        st = os.stat(path)
        # the memo's slot: the absolute path as written (resolving symlinks cost more than the rest of
        # an unchanged run's keys); the slot's (size, mtime) is checked against this stat anyway
        key = os.path.join(os.getcwd(), path)
        with self._lock:
            hit = self._memo.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        hashed_at = time.time_ns()
        digest = sha256_file(path)
        if hashed_at - st.st_mtime_ns >= RACY_NS:
            with self._lock:
                self._memo[key] = (st.st_size, st.st_mtime_ns, digest)
        return digest


_shared = HashMemo()


def shared_hashes() -> HashMemo:
    """The process's file-hash memo (engines, calibration sets): each file is read once per change."""
    return _shared


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
