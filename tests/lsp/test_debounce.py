"""The per-document debounce on its own: the last call in a burst runs once; keys are independent."""

from __future__ import annotations

import asyncio

import pytest

from hblsp.debounce import Debouncer

pytestmark = pytest.mark.asyncio


async def test_last_call_of_a_burst_runs_once():
    d, ran = Debouncer(), []
    for i in range(5):
        d.call("a.yaml", 0.05, lambda i=i: ran.append(i))
    assert d.pending("a.yaml")
    await asyncio.sleep(0.12)
    assert ran == [4] and not d.pending("a.yaml")


async def test_keys_do_not_delay_each_other_and_cancel_drops():
    d, ran = Debouncer(), []
    d.call("a", 0.2, lambda: ran.append("a"))
    d.call("b", 0.0, lambda: ran.append("b"))
    d.call("c", 0.05, lambda: ran.append("c"))
    d.cancel("c")
    for _ in range(500):
        if "a" in ran:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert ran == ["b", "a"] and not d.pending("c")


async def test_coroutines_run_and_errors_do_not_escape():
    d, ran = Debouncer(), []

    async def job():
        await asyncio.sleep(0)
        ran.append("job")

    def broken():
        raise RuntimeError("bug")

    d.call("x", 0.0, job)
    d.call("y", 0.0, broken)
    await asyncio.sleep(0.02)
    assert ran == ["job"]
