"""What a run prints: problems (one line each), stage outcomes, the summary blocks, the tables."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

from engine.pipeline.report import RunReport
from engine.problems import Problem, Severity
from engine.report import tables
from engine.report.summary import config_blocks, deps_block, memory_block

log = logging.getLogger("hbcompile")


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        if p.is_error:
            log.error(p.render())
        elif p.severity == Severity.WARNING:
            log.warning(p.render())
        else:
            log.info(p.render())


def print_run(report: RunReport) -> None:
    """Summary blocks (problems are printed by the caller as they arise; each stage's "Successfully …" /
    "Reuse …" line as the stage ends, through the run's progress callback)."""
    for s in report.stages[1:]:
        log.debug(s.line())
        if s.status == "cancelled":
            log.warning(f"{s.name}: cancelled")
    if report.config is None or not report.ok:
        return
    inputs = (report.results.get("parse") or {}).get("inputs_spec") or []
    rss = {s.name: s.peak_rss_mb if s.status == "ran" else None for s in report.stages[1:]
           if (s.status == "ran" and s.peak_rss_mb) or s.status == "reused"}
    for line in deps_block() + config_blocks(report.config, inputs) + (memory_block(rss) if rss else []):
        log.info(line)
    for name, path in report.artefacts.items():
        log.debug(f"artefact {name}: {path}")
    print_similarity(report.results.get("report"))


def print_similarity(result: dict | None) -> None:
    """The node and output tables: coloured on the console, plain in hb_compile.log."""
    if not result:
        return
    nodes = [SimpleNamespace(**r) for r in result["nodes"]]
    outputs = [SimpleNamespace(**o) for o in result["outputs"]]
    calibrated = result.get("calibrated", True)
    text = ("The main quantized node information:\n" + tables.node_table_text(nodes, calibrated)
            + "\nThe quantized model output:\n" + tables.output_table_text(outputs))
    if sys.stdout.isatty():
        log.debug(text)  # the log file keeps hb_compile's plain layout
        tables.print_rich(nodes, outputs, calibrated)
    else:
        log.info(text)
