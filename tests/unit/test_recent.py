"""`engine.pipeline.recent.Recent`: the bounded most-recently-used map the compile stage keeps
program facts in (types, static performance part, structure digest)."""

from __future__ import annotations

import threading

from engine.pipeline.recent import Recent


def test_the_least_recently_used_entry_goes_first_and_a_get_renews_an_entry():
    r: Recent[str, int] = Recent(2)
    r.put("a", 1)
    r.put("b", 2)
    assert r.get("a") == 1  # "a" is now the most recent
    r.put("c", 3)  # drops "b", the least recent
    assert ("a" in r, "b" in r, "c" in r, len(r)) == (True, False, True, 2)
    assert r.get("b") is None
    r.put("a", 10)  # a put of a kept key replaces it and renews it
    r.put("d", 4)  # drops "c"
    assert (r.get("a"), r.get("c"), r.get("d")) == (10, None, 4)


def test_put_returns_the_value_and_threads_never_overfill_it():
    r: Recent[int, int] = Recent(8)
    assert r.put(1, 5) == 5

    def fill(base: int) -> None:
        for i in range(500):
            r.put(base + i, i)
            r.get(base + i - 3)

    threads = [threading.Thread(target=fill, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(r) == 8
