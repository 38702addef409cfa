"""File events (watchdog) → one "something changed" call per config on the event loop, coalesced.

Each watched config (`key`) names the folders its run reads from and a predicate saying which
paths in them matter (`RunInputs.concerns`). Folders are watched non-recursively, once however
many configs share them. Saves that write a temporary file and rename it over the target arrive
as a move whose destination is the file, and count as a write to it; a burst of events (an
editor's save, a copy of 100 images) becomes one call `delay` seconds after the last event.
Each folder's parent is watched too, so a folder replaced as a whole (`mv cal cal_old; mv new
cal`, how sync tools refresh a data set) counts as a change and is watched again: an inotify
watch follows the old folder, not the name.
A folder created, removed or moved inside a watched folder is asked about like a file (a config
watching the folder that holds its cal_data_dir sees the folder come and go).
Whether anything really changed is for the caller to decide, by content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from hblsp.run_inputs import norm

log = logging.getLogger(__name__)

# what a write looks like; "opened" / "closed_no_write" are reads (the engine's own among them)
WRITES = {"created", "modified", "moved", "deleted", "closed", "attrib"}
Concerns = Callable[[Path], bool]


class Watcher(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[str], None], delay_s: float) -> None:
        self.loop = loop
        self.on_change = on_change
        self.delay_s = delay_s
        self._keys: dict[str, tuple[frozenset[Path], Concerns]] = {}  # loop thread only
        self._by_dir: dict[Path, tuple[tuple[str, Concerns], ...]] = {}  # replaced whole: read by the observer
        self._watches: dict[Path, tuple[object, int]] = {}  # folder → (watch, inode it follows)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._observer: Observer | None = None

    # ---- loop side
    def watch(self, key: str, dirs: set[Path], concerns: Concerns) -> None:
        """Watch `dirs` for `key` (replacing what it watched before)."""
        self._keys[key] = (frozenset(norm(d) for d in dirs), concerns)
        self._rebuild()

    def unwatch(self, key: str) -> None:
        if self._keys.pop(key, None) is not None:
            self._rebuild()
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def watched(self, key: str) -> frozenset[Path]:
        return self._keys.get(key, (frozenset(), None))[0]

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    def _rebuild(self) -> None:
        by_dir: dict[Path, list[tuple[str, Concerns]]] = {}
        for key, (dirs, concerns) in self._keys.items():
            for d in dirs:
                by_dir.setdefault(d, []).append((key, concerns))
        self._by_dir = {d: tuple(v) for d, v in by_dir.items()}
        if self._observer is None and by_dir:
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
        wanted = set(by_dir) | {d.parent for d in by_dir}
        for d in list(self._watches):
            if d not in wanted or self._inode(d) != self._watches[d][1]:  # gone, or replaced by another folder
                self._observer.unschedule(self._watches.pop(d)[0])
        for d in wanted:
            inode = self._inode(d)
            if d not in self._watches and inode is not None:  # a folder that appears later: its parent says so
                try:
                    self._watches[d] = (self._observer.schedule(self, str(d), recursive=False), inode)
                except OSError as exc:  # unreadable, or out of inotify watches: say so, keep serving
                    log.warning("cannot watch %s: %s", d, exc)

    @staticmethod
    def _inode(d: Path) -> int | None:
        try:
            return d.stat().st_ino if d.is_dir() else None
        except OSError:
            return None

    def _folder_changed(self, folder: Path) -> None:
        """A watched folder was created, removed or replaced: its keys re-run, the watch follows the name."""
        self._rebuild()
        for key, _ in self._by_dir.get(folder, ()):
            self._touched(key)

    def _touched(self, key: str) -> None:
        if key not in self._keys:
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = self.loop.call_later(self.delay_s, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        if key in self._keys:
            self.on_change(key)

    # ---- observer thread
    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in WRITES:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        by_dir = self._by_dir
        keys = set()
        for raw in paths:
            if not raw:
                continue
            path = norm(raw if isinstance(raw, str) else raw.decode())
            if event.is_directory and path in by_dir and event.event_type in ("created", "moved", "deleted"):
                self.loop.call_soon_threadsafe(self._folder_changed, path)
            for key, concerns in by_dir.get(path.parent, ()):  # a folder may be what concerns a key
                if concerns(path):
                    keys.add(key)
        for key in keys:
            self.loop.call_soon_threadsafe(self._touched, key)
