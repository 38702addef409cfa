"""optimize: original float model → `*_optimized_float_model.onnx` (the pass list in engine.passes)."""

from __future__ import annotations

import json
from typing import Any

import onnx

from engine.frontend import onnx_model as fe
from engine.pipeline.stage import Stage, StageContext


def _signature(config) -> dict[str, Any]:
    from engine.passes import passes_signature

    return {"passes": passes_signature()}


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.passes import optimize

    model = onnx.load(str(ctx.input("parse", "model.onnx")))
    before = len(model.graph.node)
    result = optimize(model)
    fe.set_metadata(result.model, {"hbcompile.stage": "optimized_float"})
    onnx.save(result.model, str(ctx.out_dir / "model.onnx"))
    (ctx.out_dir / "inputs.json").write_bytes(ctx.input("parse", "inputs.json").read_bytes())
    changed = {name: r.changed for name, r in result.results.items() if r.changed}
    return {"nodes_before": before, "nodes_after": len(result.model.graph.node), "changed": changed,
            "iterations": result.iterations,
            "skipped": [f"{s.node}: {s.reason}" for r in result.results.values() for s in r.skipped][:50],
            "groups": json.loads(next((p.value for p in result.model.metadata_props
                                       if p.key == "hb_fusion_groups"), "[]"))}


# version 2: folded scalar constants keep rank 0 (they became shape [1])
STAGE = Stage("optimize", 2, run, after=("parse",), extra=_signature,
              artefacts={"model.onnx": "{prefix}_optimized_float_model.onnx"},
              describe="graph optimizations (BN folding, constant folding, fusions)")
