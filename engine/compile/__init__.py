"""compile: partition (BPU / CPU, advice), node removal, the `.hbm` container and its packaging,
static performance estimate (json + html). Pure functions the pipeline's compile and report stages call."""

from engine.compile.hbm import Hbm, read_hbm, write_hbm
from engine.compile.package import HbmBuild, build_hbm
from engine.compile.params import CompileOptions, resolve
from engine.compile.partition import (
    Partition,
    Placement,
    advice_json,
    format_table,
    node_table,
    partition,
    placement_table,
    stamp_placement,
)
from engine.compile.perf import estimate, perf_json, perf_log_lines, perf_report, write_perf_reports
from engine.compile.remove_nodes import RemovedNode, remove_nodes

__all__ = [
    "CompileOptions", "Hbm", "HbmBuild", "Partition", "Placement", "RemovedNode", "advice_json", "build_hbm",
    "estimate", "format_table", "node_table", "partition", "perf_json", "perf_log_lines", "perf_report",
    "placement_table", "read_hbm", "remove_nodes", "resolve", "stamp_placement", "write_hbm", "write_perf_reports",
]
