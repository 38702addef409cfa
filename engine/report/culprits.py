"""The sensitivity ranking as users read it: console, hb_compile.log, `{prefix}.html`, quant_info.

A `Culprits` joins two calibrate-stage results: the ranking of `engine.accuracy.sensitivity`
(`sensitivity.json`, published as `{prefix}_sensitivity.json`) and what automatic mixed
precision did with it (`accuracy.json`: the rows it moved to int16 or the CPU). Losses are output
cosine losses against the float model (1 − cosine); the ranking is of the int8 plan, before any
move, so the rows mixed precision moved are the ones it explains.

Columns: `Rank, Node, NodeType, Isolated Loss` (only this node quantized, activation + weight),
`Weight-only Loss, Activation-only Loss, Accumulated Loss` (1 − cosine at the node's own output
with every node quantized), `Mixed Precision` (int16 / CPU when moved, else `--`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.report.tables import plain_table

COLUMNS = ["Rank", "Node", "NodeType", "Isolated Loss", "Weight-only Loss", "Activation-only Loss",
           "Accumulated Loss", "Mixed Precision"]
QUANT_INFO_KEY = "hbcompile_sensitivity"  # top-level quant_info key: ours, not a node name
SERIOUS_LOSS = 0.01  # an isolated loss that alone takes the output below hb's 0.99 mark


@dataclass(frozen=True)
class Culprit:
    rank: int
    node: str  # the node table's row name: a node or a fusion group ("conv_b+relu_b")
    node_type: str
    isolated: float | None  # activation + weight loss; None when neither was run (screened out)
    activation: float | None
    weight: float | None
    accumulated: float | None
    culprit: str  # which part hurts more: "activation", "weight" or "-"
    moved: str | None = None  # "int16" / "CPU": where automatic mixed precision placed it
    nodes: tuple[str, ...] = ()


@dataclass
class Culprits:
    rows: list[Culprit]  # ranked, worst first
    output_cosine: float  # every node int8 (the plan the ranking is of)
    samples: int  # calibration samples it compared on
    measured: int  # rows that got model runs
    mixed_cosine: float | None = None  # output cosine after mixed precision's moves (ptq model), if any
    mixed_before: float | None = None  # the same before its moves: on its own evaluation samples, not this one
    notes: list[str] = field(default_factory=list)

    def top(self, n: int | None = None) -> list[Culprit]:
        return self.rows if n is None else self.rows[:max(n, 0)]

    @property
    def moved(self) -> list[Culprit]:
        return [r for r in self.rows if r.moved]

    def covers(self, n: int) -> bool:
        """Whether the top `n` are ranked by measurement (not screened out by local noise)."""
        return self.measured >= min(n, len(self.rows))

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_json(cls, sensitivity: Mapping[str, Any], accuracy: Mapping[str, Any] | None = None) -> Culprits:
        """From `sensitivity.json` (`Sensitivity.to_json()`) and, if given, calibrate's `accuracy.json`."""
        mixed = (accuracy or {}).get("mixed_precision") or {}
        moved = {m["row"]: m["to"] for m in mixed.get("moves", [])}
        rows = []
        for rank, r in enumerate(sensitivity.get("ranking", []), start=1):
            act, weight = r.get("activation"), r.get("weight")
            rows.append(Culprit(rank, r["node"], r.get("node_type", ""),
                                None if act is None and weight is None else (act or 0.0) + (weight or 0.0),
                                act, weight, r.get("accumulated"), r.get("culprit") or "-", moved.get(r["node"]),
                                tuple(r.get("nodes", ()))))
        after = mixed.get("verified") if mixed.get("verified") is not None else mixed.get("after")
        return cls(rows, float(sensitivity.get("output_cosine", math.nan)), int(sensitivity.get("samples", 0)),
                   int(sensitivity.get("measured", len(rows))), after if moved else None,
                   mixed.get("before") if moved else None, list(sensitivity.get("notes", [])))

    @classmethod
    def from_sensitivity(cls, sensitivity: Any, accuracy: Mapping[str, Any] | None = None) -> Culprits:
        """From an `engine.accuracy.sensitivity.Sensitivity`."""
        return cls.from_json(sensitivity.to_json(), accuracy)

    # ----------------------------------------------------------------------------- rendering
    def cells(self, n: int | None = None) -> list[list[str]]:
        return [[str(r.rank), r.node, r.node_type, _loss(r.isolated), _loss(r.weight), _loss(r.activation),
                 _loss(r.accumulated), r.moved or "--"] for r in self.top(n)]

    def title(self, n: int | None = None) -> str:
        shown = len(self.top(n))
        plural = "s" if self.samples != 1 else ""
        text = (f"Sensitivity: the top {shown} of {len(self.rows)} quantized nodes by output cosine loss when only "
                f"the node is quantized (every node int8: output cosine {self.output_cosine:.6f} on "
                f"{self.samples} calibration sample{plural}")
        if self.mixed_cosine is not None:  # its cosines are on its own evaluation samples: compare them together
            before = "" if self.mixed_before is None else f"{self.mixed_before:.6f} -> "
            text += f"; mixed precision, on its evaluation samples: {before}{self.mixed_cosine:.6f}"
        return text + ")"

    def table_text(self, n: int | None = 10) -> str:
        """hb_compile.log's plain layout."""
        return plain_table(COLUMNS, self.cells(n))

    def print_rich(self, n: int | None = 10, console: Any = None) -> None:
        """Coloured on a terminal: serious culprits red, moved rows green (rich degrades when piped)."""
        from rich.console import Console
        from rich.table import Table

        if console is None:
            console = Console()
            console.width = max(console.width, 150)
        t = Table(title=self.title(n), title_justify="left", header_style="bold")
        for h in COLUMNS:
            t.add_column(h, no_wrap=h != "Node", overflow="fold", justify="right" if "Loss" in h else "left")
        for r, cells in zip(self.top(n), self.cells(n), strict=True):
            style = "green" if r.moved else "red" if (r.isolated or 0.0) >= SERIOUS_LOSS else None
            t.add_row(*cells, style=style)
        console.print(t)

    def to_json(self, n: int | None = None) -> dict[str, Any]:
        """The ranked list as quant_info carries it (under `QUANT_INFO_KEY`)."""
        return {"what": "output cosine loss (1 - cosine against the float model) when only the node is quantized "
                        "(isolated = activation + weight), and at the node's own output with every node quantized "
                        "(accumulated); ranked worst first, on the int8 plan before mixed precision",
                "output_cosine": self.output_cosine, "mixed_precision_before": self.mixed_before,
                "mixed_precision_cosine": self.mixed_cosine,
                "samples": self.samples, "measured": self.measured, "notes": self.notes,
                "ranking": [_row_json(r) for r in self.top(n)]}

    def node_entries(self) -> dict[str, dict[str, Any]]:
        """Per node row: the fields quant_info adds to that node's own entry."""
        return {r.node: {k: v for k, v in _row_json(r).items() if k not in ("node", "node_type", "nodes")}
                for r in self.rows}


def _row_json(r: Culprit) -> dict[str, Any]:
    return {"rank": r.rank, "node": r.node, "node_type": r.node_type, "isolated_loss": r.isolated,
            "weight_loss": r.weight, "activation_loss": r.activation, "accumulated_loss": r.accumulated,
            "culprit": r.culprit, "mixed_precision": r.moved, "nodes": list(r.nodes)}


def _loss(v: float | None) -> str:
    """Six decimals like the similarity table; below 0.001 three significant digits, so the small
    losses of a robust model (PP-OCR cls: 1e-7 to 1e-5) still rank visibly."""
    if v is None:
        return "--"
    return f"{v:.6f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"


def load_culprits(calibrate_dir: Path, sensitivity_name: str = "sensitivity.json",
                  accuracy_name: str = "accuracy.json") -> Culprits | None:
    """The ranking a calibrate stage output folder holds; None when it wrote none (`sensitivity: 0`
    and mixed precision not needed) or the file is unreadable."""
    try:
        sensitivity = json.loads((calibrate_dir / sensitivity_name).read_text())
    except (OSError, ValueError):
        return None
    try:
        accuracy = json.loads((calibrate_dir / accuracy_name).read_text())
    except (OSError, ValueError):
        accuracy = None
    return Culprits.from_json(sensitivity, accuracy)


__all__ = ["COLUMNS", "QUANT_INFO_KEY", "Culprit", "Culprits", "load_culprits"]
