"""Per-key debounce on the asyncio event loop: within `delay` of each other, only the last call runs.

Typing sends a didChange per keystroke; checking each one would waste the CPU on versions nobody
sees. Each document (key) gets its own timer, so a burst in one file does not delay another.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class Debouncer:
    def __init__(self) -> None:
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    def call(self, key: Hashable, delay: float, fn: Callable[[], Awaitable[Any] | Any]) -> None:
        """Run `fn` after `delay` seconds unless another `call` with the same key comes first."""
        self.cancel(key)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(delay, 0.0), self._fire, key, fn)

    def cancel(self, key: Hashable) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def pending(self, key: Hashable) -> bool:
        return key in self._timers

    def _fire(self, key: Hashable, fn: Callable[[], Any]) -> None:
        self._timers.pop(key, None)
        try:
            result = fn()
        except Exception:
            log.exception("debounced call for %s failed", key)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("debounced task failed", exc_info=task.exception())
