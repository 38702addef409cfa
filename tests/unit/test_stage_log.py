"""`engine.pipeline.engine.StageLog`: a stage's lines kept per thread, the caller's level untouched."""

from __future__ import annotations

import logging
import threading

from engine.pipeline.engine import StageLog
from tests.conftest import hb_records

log = logging.getLogger("hbcompile")


def test_two_threads_keep_their_own_lines_and_the_level_comes_back():
    inside, leave = threading.Barrier(2), threading.Barrier(2)
    kept: dict[str, list] = {}

    def stage(name: str, first_out: bool) -> None:
        with StageLog() as said:
            inside.wait()
            log.info(f"{name} info")
            log.warning(f"{name} warning")
            if not first_out:
                leave.wait()  # the other thread has left: the logger must stay open for this one
            log.info(f"{name} after")
        kept[name] = said.lines
        if first_out:
            leave.wait()

    with hb_records(level=logging.WARNING) as seen:
        threads = [threading.Thread(target=stage, args=("a", True)), threading.Thread(target=stage, args=("b", False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert log.level == logging.WARNING
    assert kept["a"] == [(logging.INFO, "a info"), (logging.WARNING, "a warning"), (logging.INFO, "a after")]
    assert kept["b"] == [(logging.INFO, "b info"), (logging.WARNING, "b warning"), (logging.INFO, "b after")]
    assert sorted(r.getMessage() for r in seen) == ["a warning", "b warning"]  # nothing below the caller's level
