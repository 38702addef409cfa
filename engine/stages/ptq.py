"""ptq: calibration thresholds + hardware rules → `*_ptq_model.onnx` (int8 weights, int32 bias, shared scales)."""

from __future__ import annotations

import json
from typing import Any

import onnx

from engine.pipeline.stage import Stage, StageContext
from engine.quantize.planner import QuantOptions, make_plan
from engine.stages.calibrate import load_thresholds

READS = ("calibration_parameters.run_on_cpu", "calibration_parameters.run_on_bpu",
         "calibration_parameters.optimization", "calibration_parameters.per_channel",
         "model_parameters.node_info")


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.quantize.ptq import build_ptq_model

    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    plan = make_plan(model, load_thresholds(ctx.input("calibrate", "thresholds.json")),
                     QuantOptions.from_config(ctx.config))
    onnx.save(build_ptq_model(model, plan), str(ctx.out_dir / "model.onnx"))
    placement = {n.node: {"on": n.on, "reason": n.reason, "dtype": n.output_dtype} for n in plan.nodes.values()}
    (ctx.out_dir / "placement.json").write_text(json.dumps(placement, indent=1))
    cpu = [n for n, p in placement.items() if p["on"] == "CPU"]
    return {"nodes": len(placement), "cpu_nodes": cpu, "notes": plan.notes}


STAGE = Stage("ptq", 1, run, after=("optimize", "calibrate"), reads=READS,
              artefacts={"model.onnx": "{prefix}_ptq_model.onnx"},
              describe="int8 weights, int32 bias, shared scales, placement")
