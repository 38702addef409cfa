"""`{prefix}.html`: the static performance report as one self-contained page.

No scripts, fonts or images from anywhere: inline CSS and SVG charts drawn here — per-layer time
(compute vs data movement) and per-layer DDR bytes (loaded vs stored), and, when the similarity
rows are passed, the cosine of every node (calibrated and quantized) against hb's 0.99 / 0.8
marks — then the tables hb_perf's page has (summary, DDR access data, subgraphs, layer details
with `debug`, CPU nodes) and the similarity table, and beside it, when calibrate ranked the nodes
(`engine.report.culprits`), the sensitivity section: the culprits worst first, isolated against
accumulated loss, and which of them automatic mixed precision moved to int16 or the CPU.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.report.culprits import Culprits

TEAL, ORANGE, GREY, RED, BLUE, GREEN = "#0f8b8d", "#ec9a29", "#8d99ae", "#d1495b", "#3d5a80", "#2a9d57"
ROW_H, LABEL_W, PLOT_W = 16, 260, 560
COSINE_GOOD, COSINE_BAD = 0.99, 0.8
SENSITIVITY_ROWS = 20  # culprits drawn and listed; the JSON beside the page has every row

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2731;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #0f8b8d;padding-bottom:3px}
.sub{color:#5c6b7a;margin-bottom:16px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #d8dee4;border-radius:8px;padding:10px 14px;min-width:150px;background:#f7fafb}
.card b{display:block;font-size:20px;color:#0f8b8d}.card span{font-size:12px;color:#5c6b7a}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border:1px solid #d8dee4;padding:3px 7px;text-align:left}
th{background:#eef3f5}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.bad td{background:#fbe4e7}
tr.warn td{background:#fff4e0}tr.moved td{background:#e3f4ea}.src{color:#5c6b7a;font-size:11px}svg text{font-size:11px;fill:#1d2731}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
ul.advice{font-family:ui-monospace,monospace;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
"""


_SPECIAL = re.compile(r"[&<>\"']")


def _e(value: Any) -> str:
    """`html.escape(str(value))`; most of a page's ~500 texts (names, numbers) have nothing to escape."""
    text = value if type(value) is str else str(value)
    return html.escape(text, quote=True) if _SPECIAL.search(text) else text


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "--"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -digits):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}f}"
    return _e(value)


def _si(value: float) -> str:
    """Axis and total labels: 3 significant digits with k / M / G."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        cells = "".join(f'<td class="n">{_num(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
                        else f"<td>{_e(c) if c is not None else '--'}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _legend(series: Sequence[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f'<span style="background:{c}"></span>{_e(n)}' for n, c in series) + \
        "</div>"


def bar_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], unit: str,
              title: str, stacked: bool = True, x_min: float = 0.0, x_max: float | None = None,
              marks: Sequence[tuple[float, str, str]] = (), label_width: int = LABEL_W,
              plot_width: int = PLOT_W, show_labels: bool = True) -> str:
    """Horizontal bars, one row per label; `series` are (name, values, colour), stacked or side by side.
    `show_labels` False: a second chart beside one that has them (rows aligned), labels in tooltips only."""
    n = len(labels)
    if n == 0:
        return f"<p>{_e(title)}: nothing to show.</p>"
    totals = [sum(s[1][i] for s in series) if stacked else max(s[1][i] for s in series) for i in range(n)]
    top = x_max if x_max is not None else max(max(totals), 1e-30)
    span = max(top - x_min, 1e-30)
    sub = len(series) if not stacked else 1
    row = ROW_H if stacked else max(ROW_H, 7 * sub + 4)
    height = 24 + n * row + 22
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + plot_width + 90}" height="{height}" '
             f'role="img" aria-label="{_e(title)}">', f'<text x="0" y="14" font-weight="bold">{_e(title)}</text>']
    names, e_unit = [_e(s[0]) for s in series], _e(unit)
    for i, label in enumerate(labels):
        y = 24 + i * row
        short = label if len(label) <= 38 else "…" + label[-37:]
        e_label = _e(label)
        if show_labels:
            parts.append(f'<text x="{label_width - 6}" y="{y + row - 5}" text-anchor="end">{_e(short)}'
                         f"<title>{e_label}</title></text>")
        x = label_width
        for k, (_, values, colour) in enumerate(series):
            v = max(0.0, float(values[i]) - (x_min if not stacked else 0.0))
            w = plot_width * min(v, span) / span
            if stacked:
                parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="{colour}">'
                             f"<title>{e_label} — {names[k]}: {_num(float(values[i]))} {e_unit}</title></rect>")
                x += w
            else:
                h = (row - 4) / sub
                parts.append(f'<rect x="{label_width}" y="{y + 2 + k * h:.1f}" width="{w:.1f}" height="{h - 1:.1f}" '
                             f'fill="{colour}"><title>{e_label} — {names[k]}: {_num(float(values[i]))} '
                             f"{e_unit}</title></rect>")
        parts.append(f'<text x="{label_width + plot_width + 6}" y="{y + row - 5}">{_si(totals[i])}</text>')
    axis_y = 24 + n * row
    parts.append(f'<line x1="{label_width}" y1="{axis_y}" x2="{label_width + plot_width}" y2="{axis_y}" stroke="#8d99ae"/>')
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{label_width + plot_width * frac:.1f}" y="{axis_y + 14}" text-anchor="middle">'
                     f"{_si(x_min + span * frac)} {_e(unit) if frac == 1.0 else ''}</text>")
    for value, label, colour in marks:
        if x_min <= value <= top:
            mx = label_width + plot_width * (value - x_min) / span
            parts.append(f'<line x1="{mx:.1f}" y1="20" x2="{mx:.1f}" y2="{axis_y}" stroke="{colour}" '
                         f'stroke-dasharray="4 3"><title>{_e(label)}</title></line>')
    parts.append("</svg>")
    return _legend([(s[0], s[2]) for s in series]) + "".join(parts)


def _row(r: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(r) and not isinstance(r, type):
        return dataclasses.asdict(r)
    return dict(r)


def similarity_section(rows: Sequence[Any], outputs: Sequence[Any] = ()) -> str:
    """Cosine per node (chart) and the similarity tables; rows are `engine.similarity.NodeRow`s or dicts."""
    rows = [_row(r) for r in rows]
    parts = ["<h2>Similarity</h2>"]
    if rows:
        labels = [r.get("node", "") for r in rows]
        cal = [float(r.get("calibrated_cosine") or 0.0) for r in rows]
        quant = [float(r["quantized_cosine"]) if r.get("quantized_cosine") is not None else 0.0 for r in rows]
        lows = [min([v for v in (c, q) if v > 0] or [1.0]) for c, q in zip(cal, quant)]
        floor = max(0.0, min(0.95, math.floor(min(lows) * 20) / 20 - 0.05))  # the lowest bar stays visible
        series = [("Calibrated Cosine", cal, TEAL)]
        if any(r.get("quantized_cosine") is not None for r in rows):
            series.append(("Quantized Cosine", quant, BLUE))
        parts.append(bar_chart(labels, series, "", "Cosine similarity per node", stacked=False, x_min=floor,
                               x_max=1.0, marks=[(COSINE_GOOD, "0.99", ORANGE), (COSINE_BAD, "0.8", RED)]))
        classes = []
        for r in rows:
            vals = [v for v in (r.get("calibrated_cosine"), r.get("quantized_cosine")) if v is not None]
            classes.append("bad" if vals and min(vals) < COSINE_BAD else "warn" if vals and min(vals) < COSINE_GOOD
                           else "")
        parts.append(_table(["Node", "NodeType", "ON", "Threshold", "Calibrated Cosine", "Quantized Cosine",
                             "Output Data Type"],
                            [[r.get("node"), r.get("node_type"), r.get("on"), r.get("threshold"),
                              r.get("calibrated_cosine"), r.get("quantized_cosine"), r.get("output_dtype")]
                             for r in rows], classes))
    outs = [_row(o) for o in outputs]
    if outs:
        parts.append(_table(["TensorName", "Calibrated Cosine", "Quantized Cosine"],
                            [[o.get("tensor") or o.get("name"), o.get("calibrated_cosine", o.get("cosine")),
                              o.get("quantized_cosine")]
                             for o in outs]))
    return "".join(parts)


def _culprit_label(r: Any, width: int = 38) -> str:
    """`rank. node → int16`, the node shortened in the middle so rank and move stay readable."""
    head, tail = f"{r.rank}. ", f" → {r.moved}" if r.moved else ""
    room = width - len(head) - len(tail)
    node = r.node if len(r.node) <= room else r.node[:room // 2 - 1] + "…" + r.node[-(room - room // 2):]
    return head + node + tail


def sensitivity_section(culprits: Culprits, n: int = SENSITIVITY_ROWS) -> str:
    """The top `n` culprits worst first: isolated loss (only this node quantized; activation and
    weight parts) and, beside it on its own scale, the accumulated loss (every node quantized, at
    the node's own output) — on real models the second is 10–100× the first, one axis would hide
    the ranking. Then the table; rows mixed precision moved are green and say where to."""
    rows = culprits.top(n)
    parts = ['<h2 id="sensitivity">Sensitivity</h2>',
             f'<div class="sub">{_e(culprits.title(n))}. Loss = 1 − output cosine against the float model. A large '
             "isolated loss marks a node whose own quantization hurts (int16 or the CPU helps); a large accumulated "
             "loss with a small isolated one is error piled up before it.</div>"]
    if not rows:
        return "".join(parts) + "<p>No quantized node to rank.</p>"
    labels = [_culprit_label(r) for r in rows]
    isolated = bar_chart(labels, [("isolated: activation", [r.activation or 0.0 for r in rows], RED),
                                  ("isolated: weight", [r.weight or 0.0 for r in rows], ORANGE)],
                         "", "Isolated loss (only this node quantized)", plot_width=340)
    accumulated = bar_chart(labels, [("accumulated", [r.accumulated or 0.0 for r in rows], GREY)], "",
                            "Accumulated loss (at its output)", label_width=16, plot_width=260, show_labels=False)
    parts.append(f'<div class="charts"><div>{isolated}</div><div>{accumulated}</div></div>')
    moved = culprits.moved
    if moved:
        counts = ", ".join(f"{sum(r.moved == to for r in moved)} to {'the ' if to == 'CPU' else ''}{to}"
                           for to in sorted({r.moved for r in moved}, reverse=True))
        beyond = [r for r in moved if r.rank > len(rows)]
        parts.append(f'<p>Automatic mixed precision moved <b style="color:{GREEN}">{len(moved)} '
                     f"row{'s' if len(moved) != 1 else ''}</b> ({counts}): green in the table"
                     + ("; beyond it: " + ", ".join(f"{_e(r.node)} → {_e(r.moved)} (rank {r.rank})" for r in beyond)
                        if beyond else "") + ".</p>")
    classes = ["moved" if r.moved else "bad" if (r.isolated or 0.0) >= 1.0 - COSINE_GOOD else "" for r in rows]
    parts.append(_table(["Rank", "Node", "NodeType", "Isolated Loss", "Weight-only Loss", "Activation-only Loss",
                         "Accumulated Loss", "Culprit", "Mixed Precision"],
                        [[r.rank, r.node, r.node_type, r.isolated, r.weight, r.activation, r.accumulated, r.culprit,
                          r.moved] for r in rows], classes))
    return "".join(parts)


def quality_sections(similarity: Sequence[Any] = (), outputs: Sequence[Any] = (),
                     sensitivity: Culprits | None = None) -> str:
    """The similarity and sensitivity sections of the page: made from the report and calibrate
    stages' results alone, the same text for every compiler_parameters edit (the compile stage keeps it)."""
    parts = []
    if similarity or outputs:
        parts.append(similarity_section(similarity, outputs))
    if sensitivity is not None:
        parts.append(sensitivity_section(sensitivity))
    return "".join(parts)


def render(perf: Mapping[str, Any], similarity: Sequence[Any] = (), outputs: Sequence[Any] = (),
           sensitivity: Culprits | None = None, *, quality: str | None = None) -> str:
    """The page for a `perf_json` dict (plus the node / output similarity rows and the sensitivity
    ranking, if any; or `quality`, those sections as `quality_sections` made them)."""
    s = perf["summary"]
    prof = perf.get("march profile", {})
    measured = s.get("measured on this machine")
    title = f"{s.get('model', 'model')} — static performance"
    cards = [("Model Latency (ms)", s["latency (ms)"]), ("FPS", s["FPS"]),
             ("DDR per frame (MB)", s["DDR (MB per frame)"]), ("GOPs per frame", s["computation (GOPs per frame)"]),
             ("BPU subgraphs", s["BPU subgraphs"]), ("CPU nodes", s["CPU nodes"])]
    if measured:
        cards.append((f"measured here (ms, {measured.get('threads')} thr)", measured.get("latency (ms)")))
    body = [f"<h1>{_e(title)}</h1>",
            f'<div class="sub">march {_e(s["march"])} ({_e(s.get("board", ""))}) · compile_mode '
            f'{_e(s["compile_mode"])} (balance_factor {_e(s["balance_factor"])}) · core_num {_e(s["core_num"])} · '
            f'optimize_level {_e(s["optimize_level"])}</div>',
            '<div class="cards">' + "".join(f"<div class=\"card\"><b>{_num(v)}</b><span>{_e(k)}</span></div>"
                                            for k, v in cards) + "</div>",
            "<h2>Model Performance Summary</h2>",
            _table(["Model Name", "Model Latency (ms)", "FPS", "Total DDR (loaded+stored) bytes per frame",
                    "Loaded Bytes per Frame", "Stored Bytes per Frame", "MACs per frame", "function calls"],
                   [[s["model"], s["latency (ms)"], s["FPS"], s["DDR bytes per frame"],
                     s["DDR loaded bytes per frame"], s["DDR stored bytes per frame"], s["MACs per frame"],
                     s["function calls"]]])]
    if measured:
        body.append(_table(["Measured on this machine", "median latency (ms)", "min latency (ms)", "FPS", "runs",
                            "threads", "onnxruntime"],
                           [[measured.get("processor"), measured.get("latency (ms)"), measured.get("min latency (ms)"),
                             measured.get("FPS"), measured.get("runs"), measured.get("threads"),
                             measured.get("onnxruntime")]]))
    body += ["<h2>DDR access data</h2>", _table(["kind", "bytes"], list(s["DDR access data"].items()))]
    layers = perf.get("layers")
    if layers:
        labels = [lay["name"] for lay in layers]
        data_only = [max(0.0, lay["time (us)"] - lay["compute time (us)"]) for lay in layers]
        body += ["<h2>Layer time</h2>",
                 bar_chart(labels, [("compute", [lay["compute time (us)"] for lay in layers], TEAL),
                                    ("data movement not hidden", data_only, ORANGE)], "µs", "Estimated time per layer"),
                 "<h2>Layer DDR traffic</h2>",
                 bar_chart(labels, [("loaded", [lay["DDR loaded bytes"] for lay in layers], BLUE),
                                    ("stored", [lay["DDR stored bytes"] for lay in layers], GREY)], "bytes",
                           "DDR bytes per layer")]
    body += ["<h2>Details per BPU subgraph</h2>",
             _table(["Subgraph", "layers", "Calculation Load (GOPs)", "DDR loaded bytes", "DDR stored bytes",
                     "Latency (ms)", "function calls"],
                    [[f"id({g['id']})", g["layers"], g["ops"] / 1e9, g["DDR loaded bytes"], g["DDR stored bytes"],
                      g["latency (ms)"], g["function calls"]] for g in perf.get("subgraphs", [])])]
    if layers:
        body += ["<h2>Layer Details</h2>",
                 _table(["Layer", "Type", "Subgraph", "MACs", "ops", "weights (B)", "DDR loaded", "DDR stored",
                         "compute (µs)", "data (µs)", "time (µs)", "bound", "recompute"],
                        [[lay["name"], lay["type"], "--" if lay["subgraph"] is None else f"id({lay['subgraph']})",
                          lay["macs"], lay["ops"], lay["weight_bytes"], lay["DDR loaded bytes"],
                          lay["DDR stored bytes"], lay["compute time (us)"], lay["data time (us)"],
                          lay["time (us)"], lay["bound"], lay["recompute"]] for lay in layers])]
    else:
        body.append("<p>Per-layer details are written when compiled with <code>debug: True</code>.</p>")
    cpu = perf.get("cpu nodes", [])
    body += ["<h2>CPU nodes (not estimated)</h2>",
             _table(["Node", "Type", "why on the CPU"], [[c["name"], c["op_type"], c["reason"]] for c in cpu])
             if cpu else "<p>None: every node runs on the BPU.</p>"]
    if perf.get("advice"):
        body += ["<h2>Advice</h2>", '<ul class="advice">' + "".join(f"<li>{_e(a)}</li>" for a in perf["advice"])
                 + "</ul>"]
    body.append(quality if quality is not None else quality_sections(similarity, outputs, sensitivity))
    if prof:
        rows = []
        for key in ("peak_int8_ops", "ddr_bandwidth", "onchip_memory", "cores"):
            fig = prof.get(key, {})
            rows.append([key, fig.get("value"), fig.get("source")])
        plan = perf.get("plan", {})
        body += ["<h2>March profile and plan (what the estimate assumes)</h2>",
                 _table(["figure", "value", "source"], rows),
                 _table(["plan", "value"], [[k, v if not isinstance(v, list) else "; ".join(map(str, v)) or "--"]
                                            for k, v in plan.items()])]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")
