"""A process-wide map of the few most recently used results, by content digest.

A warm engine (language server, daemon) compiles the same few programs again and again: a
compiler_parameters edit re-runs the compile stage on the program it compiled a second ago. The
compile stage keeps what is costly to derive from a program (its tensor types, its static
performance part, its structure digest) under the sha256 of the program's bytes, a handful each.
Keys are content digests, so a hit can never be stale; the bound keeps memory flat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most `size` entries; `get` makes an entry the most recent, `put` drops the least recent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()  # two engines (the server's and a test's) may share the process

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
