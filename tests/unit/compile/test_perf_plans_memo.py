"""The estimate keeps a program's candidate plans with its static part (`perf._Static.plans`): an edit of
compile_mode / balance_factor / advice re-times the kept plans instead of planning again, and must give
exactly the estimate a fresh plan gives."""

from __future__ import annotations

import hashlib

import pytest

import engine.compile.perf as perf
from engine.compile.perf import estimate, perf_json
from tests.unit.compile.test_perf import opts, wide  # noqa: F401  (the fixture)

MODES = [dict(compile_mode="latency"), dict(compile_mode="bandwidth"),
         dict(compile_mode="balance", balance_factor=30, advice=0.001), dict(compile_mode="latency", core_num=2)]


@pytest.mark.parametrize("march", ["bernoulli2", "nash-p"])
def test_kept_plans_give_the_fresh_estimate(wide, march):  # noqa: F811
    digest = hashlib.sha256(wide.SerializeToString()).hexdigest()
    perf._static_memo.clear()
    planned = []
    real = perf._plan
    perf._plan = lambda *a: planned.append(a[2:]) or real(*a)
    try:
        kept = [perf_json(estimate(wide, opts(march, **m), digest=digest)) for m in MODES]
    finally:
        perf._plan = real
    assert len(planned) == 8  # the 8 candidates planned once, for the first estimate; every later one re-times them
    assert len(perf._static_memo.get(digest).plans) == 8
    fresh = [perf_json(estimate(wide, opts(march, **m))) for m in MODES]  # no digest: planned from scratch
    assert kept == fresh
    if march == "bernoulli2":  # the plans differ by budget there: the kept ones are not all one plan
        assert len({(c["DDR bytes"], c["latency (ms)"]) for c in kept[0]["plan candidates"]}) > 2
        assert kept[0]["summary"]["DDR bytes per frame"] != kept[1]["summary"]["DDR bytes per frame"]
