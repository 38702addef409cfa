"""What a run prints: problems (one line each), stage outcomes, the summary blocks, the tables."""

from __future__ import annotations

import logging

from engine.pipeline.report import RunReport
from engine.problems import Severity
from engine.report.summary import config_blocks, deps_block, memory_block

log = logging.getLogger("hbcompile")


def print_problems(report: RunReport) -> None:
    for p in report.problems:
        if p.is_error:
            log.error(p.render())
        elif p.severity == Severity.WARNING:
            log.warning(p.render())
        else:
            log.info(p.render())


def print_run(report: RunReport) -> None:
    print_problems(report)
    for s in report.stages:
        log.debug(s.line())
        if s.status == "reused":
            log.info(f"{s.name}: reused (unchanged)")
        elif s.status == "ran":
            log.info(f"{s.name}: done in {s.seconds:.2f}s")
        elif s.status == "cancelled":
            log.warning(f"{s.name}: cancelled")
    if report.config is None or not report.ok:
        return
    inputs = (report.results.get("parse") or {}).get("inputs_spec") or []
    for line in deps_block() + config_blocks(report.config, inputs) + memory_block(
            {s.name: s.peak_rss_mb for s in report.stages if s.status == "ran"}):
        log.info(line)
    for name, path in report.artefacts.items():
        log.debug(f"artefact {name}: {path}")
