"""Content hashes of input files and canonical JSON, memoised by (path, size, mtime).

A warm process (daemon, language server) re-hashes only files whose stat changed; a touch
that changes nothing is re-hashed once and then recognised as unchanged by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


class HashMemo:
    def __init__(self) -> None:
        self._memo: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def file(self, path: Path) -> str:
        st = os.stat(path)
        key = str(Path(path).resolve())
        with self._lock:
            hit = self._memo.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(path)
        with self._lock:
            self._memo[key] = (st.st_size, st.st_mtime_ns, digest)
        return digest


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
