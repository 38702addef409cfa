"""The similarity tables hb_compile users read, in every form: console, log, csv, quant_info.json.

Columns are hb_compile's (reference §12.5): `Node, NodeType, ON, Threshold, Calibrated Cosine,
Quantized Cosine, Output Data Type`, and for outputs `TensorName, Calibrated Cosine, Quantized
Cosine`; without calibration data (`skip`) only `Node, NodeType, ON, Output Data Type`.
Missing values print as `--`. Cosines below 0.99 (nodes) or 0.8 (outputs) are flagged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

NODE_COLUMNS = ["Node", "NodeType", "ON", "Threshold", "Calibrated Cosine", "Quantized Cosine", "Output Data Type"]
NODE_COLUMNS_SKIP = ["Node", "NodeType", "ON", "Output Data Type"]
OUTPUT_COLUMNS = ["TensorName", "Calibrated Cosine", "Quantized Cosine"]
NODE_WARN, OUTPUT_BAD = 0.99, 0.8


def _num(v: float | None, digits: int = 6) -> str:
    return "--" if v is None else f"{v:.{digits}f}"


def node_cells(row: Any, calibrated: bool = True) -> list[str]:
    if not calibrated:
        return [row.node, row.node_type, row.on, row.output_dtype]
    return [row.node, row.node_type, row.on, _num(row.threshold), _num(row.calibrated_cosine),
            _num(row.quantized_cosine), row.output_dtype]


def output_cells(row: Any) -> list[str]:
    return [row.tensor, _num(row.cosine), _num(row.quantized_cosine)]


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """hb_compile's layout: '=' line above, '-' under the header, left-aligned, space padded."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(["=" * len(line), line.rstrip(), "-" * len(line), *body])


def node_table_text(nodes: Sequence[Any], calibrated: bool = True) -> str:
    header = NODE_COLUMNS if calibrated else NODE_COLUMNS_SKIP
    return plain_table(header, [node_cells(r, calibrated) for r in nodes])


def output_table_text(outputs: Sequence[Any]) -> str:
    return plain_table(OUTPUT_COLUMNS, [output_cells(r) for r in outputs])


def _worst(row: Any) -> float | None:
    vals = [v for v in (getattr(row, "calibrated_cosine", None), getattr(row, "cosine", None),
                        getattr(row, "quantized_cosine", None)) if v is not None]
    return min(vals) if vals else None


def print_rich(nodes: Sequence[Any], outputs: Sequence[Any], calibrated: bool = True, console=None) -> None:
    """Coloured tables on a terminal (rich degrades to plain text when piped)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:  # seven columns do not fit 80: let a narrow terminal wrap rather than squeeze
        console = Console()
        console.width = max(console.width, 150)
    t = Table(title="The main quantized node information", title_justify="left", header_style="bold")
    for h in (NODE_COLUMNS if calibrated else NODE_COLUMNS_SKIP):
        t.add_column(h, no_wrap=h != "Node", overflow="fold")
    for r in nodes:
        worst = _worst(r)
        style = "red" if worst is not None and worst < NODE_WARN else ("dim" if r.on == "CPU" else None)
        t.add_row(*node_cells(r, calibrated), style=style)
    console.print(t)
    if outputs:
        o = Table(title="The quantized model output", title_justify="left", header_style="bold")
        for h in OUTPUT_COLUMNS:
            o.add_column(h)
        for r in outputs:
            worst = _worst(r)
            style = "bold red" if worst is not None and worst < OUTPUT_BAD else (
                "yellow" if worst is not None and worst < NODE_WARN else "green")
            o.add_row(*output_cells(r), style=style)
        console.print(o)


def node_info_csv(nodes: Sequence[Any], calibrated: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(NODE_COLUMNS if calibrated else NODE_COLUMNS_SKIP)
    for r in nodes:
        w.writerow(node_cells(r, calibrated))
    return buf.getvalue()


def quant_info(nodes: Sequence[Any], outputs: Sequence[Any], node_io: dict[str, tuple[list[str], list[str]]],
               thresholds: dict[str, Any] | None = None, sensitivity: Any = None) -> dict[str, Any]:
    """hb_compile's `{prefix}_quant_info.json`: per node type / inputs / outputs / thresholds / cosine,
    plus `model_output_tensor`; also our threshold provenance (method, detail) per node and, with a
    sensitivity ranking (`engine.report.culprits.Culprits`), each node's rank and losses under
    `sensitivity` and the whole ranked list under the top-level key `hbcompile_sensitivity`."""
    out: dict[str, Any] = {}
    ranked = sensitivity.node_entries() if sensitivity is not None else {}
    for r in nodes:
        members = list(getattr(r, "nodes", ()) or (r.node,))
        ins = [t for m in members[:1] for t in node_io.get(m, ([], []))[0]]
        outs = node_io.get(members[-1], ([], []))[1]
        entry: dict[str, Any] = {"type": r.node_type, "inputs": ins, "outputs": list(outs),
                                 "thresholds": [[r.threshold]] if r.threshold is not None else [],
                                 "cosine_similarity": r.calibrated_cosine, "quantized_cosine": r.quantized_cosine,
                                 "ON": r.on, "output_data_type": r.output_dtype}
        prov = (thresholds or {}).get(r.tensor)
        if prov:
            entry["threshold_provenance"] = {"method": prov.get("method"), "detail": prov.get("detail")}
        if r.node in ranked:
            entry["sensitivity"] = ranked[r.node]
        out[r.node] = entry
    out["model_output_tensor"] = {r.tensor: {"cosine_similarity": r.cosine, "quantized_cosine": r.quantized_cosine,
                                             "l1": getattr(r, "l1", None), "l2": getattr(r, "l2", None),
                                             "chebyshev": getattr(r, "chebyshev", None)} for r in outputs}
    if sensitivity is not None:
        from engine.report.culprits import QUANT_INFO_KEY

        out[QUANT_INFO_KEY] = sensitivity.to_json()
    return json.loads(json.dumps(out, default=float))
