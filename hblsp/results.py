"""A run's outcome in the editor's terms: the `hblsp/compileResult` payload, diagnostics, inlay hints.

Pure functions of a finished run (`engine.pipeline.RunReport`) and one document version, so the
same result is placed again on every later version of the config: diagnostics and hints are
anchored by key path and node name, never by the line numbers of the text that was compiled.

- `compile_result`: the payload of docs/protocol.md (stages, problems, artefacts, the similarity
  table, thresholds), JSON-safe (a non-finite float becomes null).
- `result_diagnostics`: information with the outputs' Quantized Cosine on the model line; a
  warning there listing the nodes under the node threshold and the outputs under the output
  threshold; when a stage failed, its problems on the key responsible for them.
- `node_mentions` + `inlay_hints`: the cosine beside every node name written in the config
  (`run_on_cpu`, `node_info`, `output_nodes`, … — every key the schema marks as holding node names).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from engine.config.inputs import MODEL_CHECK
from engine.config.loader import locate
from engine.config.yamltree import YamlDoc, YNode
from engine.problems import Problem, Span
from hblsp import schema_view as sv
from hblsp.analysis import to_diagnostic
from hblsp.positions import Positions

if TYPE_CHECKING:
    from engine.pipeline import RunReport

SOURCE = "hb_compile"
MODEL_KEYS = (("model_parameters", "onnx_model"), ("model_parameters", "caffe_model"),
              ("model_parameters", "prototxt"), ("model_parameters",))
# Where a stage's problem goes when it names no key: the key that feeds the stage.
STAGE_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "parse": MODEL_KEYS,
    "optimize": MODEL_KEYS,
    "calibrate": (("calibration_parameters", "cal_data_dir"), ("calibration_parameters",)),
    "ptq": (("model_parameters", "node_info"), ("calibration_parameters", "calibration_type")),
    "quantize": (("input_parameters",),),
    "report": (("calibration_parameters", "cal_data_dir"),),
    "compile": (("compiler_parameters",),),
}
LISTED = 8  # nodes named in the low-cosine warning before "… and N more"


@dataclass(frozen=True)
class Thresholds:
    node: float = 0.99
    output: float = 0.8

    def as_json(self) -> dict[str, float]:
        return {"node": self.node, "output": self.output}


@dataclass(frozen=True)
class Outcome:
    """What the editor keeps of one finished run: the payload sent and the problems to place."""

    payload: dict[str, Any]
    stage_problems: tuple[Problem, ...] = ()  # raised by the stages (the config's own are shown live)
    failed_stage: str | None = None

    @property
    def table(self) -> dict[str, Any] | None:
        return self.payload.get("table")


def _finite(value: Any) -> Any:
    """JSON has no NaN / Infinity: a client's parser would reject the whole message."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"code": p.code, "severity": p.severity.label, "message": p.message, "path": list(p.path),
            "file": p.file, "span": p.span.__dict__ if p.span else None}


def compile_result(uri: str, version: int | None, report: RunReport, thresholds: Thresholds) -> dict[str, Any]:
    """The `hblsp/compileResult` params for one finished run (docs/protocol.md)."""
    report_stage = report.stage("report")
    table = report.results.get("report") if report_stage and report_stage.status in ("ran", "reused") else None
    calibrate = report.results.get("calibrate")
    calibration = ({k: calibrate[k] for k in ("samples", "computed", "reused", "method") if k in calibrate}
                   if calibrate else None)
    calibrate_stage = report.stage("calibrate")
    if calibration and calibrate_stage is not None and calibrate_stage.status == "reused" and "samples" in calibration:
        calibration.update(computed=0, reused=calibration["samples"])  # the stage's result is from its earlier run
    config = report.config
    return _finite({
        "uri": uri,
        "version": version,
        "ok": report.ok,
        "cancelled": report.cancelled,
        "seconds": round(report.seconds, 4),
        "stages": [{"name": s.name, "status": s.status, "reason": s.reason, "seconds": round(s.seconds, 4),
                    "key": s.key} for s in report.stages],
        "problems": [_problem_json(p) for p in report.problems],
        "artefacts": {k: str(v) for k, v in report.artefacts.items()},
        "working_dir": str(config.working_dir) if config is not None else None,
        "table": table,
        "calibration": calibration,
        "thresholds": thresholds.as_json(),
    })


def outcome_of(payload: dict[str, Any], report: RunReport, config_problems: int) -> Outcome:
    """`config_problems`: how many of `report.problems` came from loading the config (shown live). The model
    checks' problems are left out too: the live analysis shows them for every version (placed again on a later
    version, the run's copy doubled them, then stayed after the fix until the next run)."""
    failed = next((s.name for s in report.stages if s.status == "failed"), None)
    if failed == "config":
        return Outcome(payload, (), failed)
    return Outcome(payload, tuple(p for p in report.problems[config_problems:] if not p.data.get(MODEL_CHECK)), failed)


# ---- diagnostics ----------------------------------------------------------------------------------

def _present(doc: YamlDoc, paths: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    return next((p for p in paths if doc.node_at(p) is not None), None)


def _cos(row: dict[str, Any], key: str = "quantized_cosine", fallback: str = "calibrated_cosine") -> float | None:
    value = row.get(key)
    return value if isinstance(value, (int, float)) else row.get(fallback)


def _fmt(value: float | None) -> str:
    return "--" if value is None else f"{value:.6f}"


def similarity_messages(table: dict[str, Any], thresholds: Thresholds) -> tuple[str | None, str | None]:
    """(information with the outputs' cosines, warning naming what is under the thresholds)."""
    outputs = table.get("outputs") or []
    info = None
    if outputs:
        parts = [f"{o['tensor']} {_fmt(_cos(o, 'quantized_cosine', 'cosine'))} (calibrated {_fmt(o.get('cosine'))})"
                 for o in outputs]
        info = "Output Quantized Cosine: " + "; ".join(parts)
    low_nodes = [(n["node"], c) for n in table.get("nodes") or []
                 if (c := _cos(n)) is not None and c < thresholds.node]
    low_outputs = [(o["tensor"], c) for o in outputs
                   if (c := _cos(o, "quantized_cosine", "cosine")) is not None and c < thresholds.output]
    parts = []
    if low_nodes:
        named = ", ".join(f"{name} {_fmt(c)}" for name, c in low_nodes[:LISTED])
        more = f" … and {len(low_nodes) - LISTED} more" if len(low_nodes) > LISTED else ""
        noun = "node" if len(low_nodes) == 1 else "nodes"
        parts.append(f"{len(low_nodes)} {noun} under Quantized Cosine {thresholds.node:g}: {named}{more}")
    if low_outputs:
        named = ", ".join(f"{name} {_fmt(c)}" for name, c in low_outputs)
        noun = "output" if len(low_outputs) == 1 else "outputs"
        parts.append(f"{len(low_outputs)} {noun} under {thresholds.output:g}: {named}")
    return info, ("; ".join(parts) or None)


def _diagnostic(message: str, severity: types.DiagnosticSeverity, code: str, span: Span,
                positions: Positions) -> types.Diagnostic:
    return types.Diagnostic(range=positions.range(span), message=message, severity=severity, code=code,
                            source=SOURCE)


def result_diagnostics(outcome: Outcome, doc: YamlDoc | None, positions: Positions,
                       thresholds: Thresholds) -> list[types.Diagnostic]:
    """The run's diagnostics placed on this version of the config (by key path)."""
    if doc is None or doc.root is None:
        return []
    out: list[types.Diagnostic] = []
    if outcome.failed_stage is not None and outcome.stage_problems:
        fallback = _present(doc, STAGE_KEYS.get(outcome.failed_stage, MODEL_KEYS)) or _present(doc, MODEL_KEYS) or ()
        placed = locate([replace(p, span=None, path=p.path or fallback) for p in outcome.stage_problems], doc, None)
        out += [to_diagnostic(p, positions) for p in placed]
    table = outcome.table
    if table is not None and outcome.failed_stage in (None, "compile"):
        model_key = _present(doc, MODEL_KEYS) or ()
        span = doc.key_span(model_key) or doc.span_for(model_key)
        info, warning = similarity_messages(table, thresholds)
        if info:
            out.append(_diagnostic(info, types.DiagnosticSeverity.Information, "output-cosine", span, positions))
        if warning:
            out.append(_diagnostic(warning, types.DiagnosticSeverity.Warning, "low-cosine", span, positions))
    return out


# ---- node names written in the config ------------------------------------------------------------

@dataclass(frozen=True)
class Mention:
    name: str
    span: Span  # the name's token (YAML line / code point columns)


def _items(doc: YamlDoc, path: tuple[str, ...], node: YNode, sep: str) -> Iterator[Mention]:
    if node.kind == "seq":
        for item in node.items:
            if item.kind == "scalar" and isinstance(item.value, str) and item.value.strip():
                yield Mention(item.value.strip(), item.span)
        return
    if node.kind != "scalar" or not isinstance(node.value, str):
        return
    for i, raw in enumerate(node.value.split(sep)):
        text = raw.strip()
        span = doc.item_span(path, i, sep) if text else None
        if span is None:
            continue
        yield Mention(text, span)


def node_mentions(doc: YamlDoc | None) -> list[Mention]:
    """Every node name the config writes, where the schema says a key holds node names."""
    if doc is None or doc.root is None or doc.root.kind != "map":
        return []
    found: list[Mention] = []

    def walk(node: YNode, path: tuple[str, ...]) -> None:
        for key, value in node.items:
            if not isinstance(key.value, str):
                continue
            sub = path + (key.value,)
            s = sv.at(sub)
            if s is None:
                continue
            if sv.model_values(s) == "node_name":
                if value.kind == "map":  # node_info / node_config: the entries' keys are node names
                    found.extend(Mention(k.value, k.span) for k, _ in value.items if isinstance(k.value, str))
                else:
                    found.extend(_items(doc, sub, value, sv.separator(s) or ";"))
            elif value.kind == "map":
                walk(value, sub)

    walk(doc.root, ())
    return found


def rows_by_name(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each node row under its own name and under every member node of its fusion group."""
    rows: dict[str, dict[str, Any]] = {}
    for row in table.get("nodes") or []:
        for member in row.get("nodes") or ():
            rows.setdefault(member, row)
        rows[row["node"]] = row
    return rows


def _row_for(name: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if name in rows:
        return rows[name]
    head, sep, _ = name.rpartition(":")  # node_info written as 'Conv_0:int16'
    return rows.get(head.strip()) if sep else None


def _tooltip(name: str, row: dict[str, Any]) -> str:
    group = f" (in `{row['node']}`)" if row["node"] != name else ""
    threshold = row.get("threshold")
    return (f"**{name}**{group}: {row.get('node_type')} on {row.get('on')}, output {row.get('output_dtype')}\n\n"
            f"| Threshold | Calibrated Cosine | Quantized Cosine |\n|---|---|---|\n"
            f"| {'--' if threshold is None else f'{threshold:.6f}'} | {_fmt(row.get('calibrated_cosine'))} | "
            f"{_fmt(row.get('quantized_cosine'))} |")


def inlay_hints(mentions: list[Mention], table: dict[str, Any], positions: Positions, thresholds: Thresholds,
                within: types.Range | None = None) -> list[types.InlayHint]:
    """`cos 0.998714` after each node name that has a row (`< 0.99` appended when under the threshold)."""
    rows = rows_by_name(table)
    hints = []
    for m in mentions:
        row = _row_for(m.name, rows)
        if row is None:
            continue
        cos = _cos(row)
        end = positions.range(m.span).end
        if within is not None and not (within.start.line <= end.line <= within.end.line):
            continue
        label = f"cos {_fmt(cos)}" + (f" < {thresholds.node:g}" if cos is not None and cos < thresholds.node else "")
        hints.append(types.InlayHint(position=end, label=label, kind=types.InlayHintKind.Parameter,
                                     padding_left=True, tooltip=types.MarkupContent(
                                         kind=types.MarkupKind.Markdown, value=_tooltip(m.name, row))))
    return hints
