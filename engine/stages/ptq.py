"""ptq: calibration thresholds + hardware rules → `*_ptq_model.onnx` (int8 weights, int32 bias, shared scales)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import onnx

from engine.pipeline.recent import Recent
from engine.pipeline.stage import Stage, StageContext
from engine.quantize.planner import QuantOptions, make_plan
from engine.quantize.types import QuantPlan
from engine.stages.calibrate import ACCURACY_FILE, load_thresholds

PLANS_KEPT = 4  # plans an engine keeps (a few configs or edits back)
DIGESTS_KEPT = 64  # entry files whose sha256 an engine keeps by stat stamp

READS = ("calibration_parameters.run_on_cpu", "calibration_parameters.run_on_bpu",
         "calibration_parameters.optimization", "calibration_parameters.per_channel",
         "model_parameters.node_info")


def stage_plan(ctx: StageContext, model: onnx.ModelProto) -> QuantPlan:
    """`make_plan` of the optimized model (`model`, read from the optimize entry) and calibrate's output
    under this config's options: the same plan for ptq, quantize, report and compile, made once per
    engine (26 ms each on PP-OCRv4 det, a third of digits' ptq stage). Keyed by the optimized model's
    cache file, the contents of calibrate's thresholds and accuracy steps, and the options; its users
    only read it."""
    options = QuantOptions.from_config(ctx.config)
    source = ctx.input("optimize", "model.onnx")  # a cache file: it never changes once its entry is committed
    st = os.stat(source)
    made_from = [ctx.input("calibrate", "thresholds.json"), ctx.input("calibrate", ACCURACY_FILE)]
    key = (str(source), st.st_size, st.st_mtime_ns, repr(options), *(_entry_digest(ctx, f) for f in made_from))
    plans: Recent = ctx.engine.warm.setdefault("plans", Recent(PLANS_KEPT))
    plan = plans.get(key)
    if plan is None:
        plan = plans.put(key, make_plan(model, load_thresholds(ctx.input("calibrate", "thresholds.json")), options))
    return plan


def _entry_digest(ctx: StageContext, path: Path) -> str:
    """sha256 of a cache entry file ("" when absent), kept in the warm engine by its stat stamp: entry files
    never change once committed, and ptq, quantize, report and compile each read calibrate's two files
    to key the plan (digits, one calibration file changed: 8 reads, ~0.5 ms)."""
    from engine.pipeline.hashing import path_stamp

    stamp = path_stamp(path)
    if stamp is None:
        return ""
    digests: Recent = ctx.engine.warm.setdefault("entry_digests", Recent(DIGESTS_KEPT))
    found = digests.get(stamp)
    if found is None:
        found = digests.put(stamp, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.quantize.ptq import build_ptq_model

    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    plan = stage_plan(ctx, model)
    onnx.save(build_ptq_model(model, plan), str(ctx.out_dir / "model.onnx"))
    placement = {n.node: {"on": n.on, "reason": n.reason, "dtype": n.output_dtype} for n in plan.nodes.values()}
    (ctx.out_dir / "placement.json").write_text(json.dumps(placement, indent=1))
    cpu = [n for n, p in placement.items() if p["on"] == "CPU"]
    return {"nodes": len(placement), "cpu_nodes": cpu, "notes": plan.notes}


# version 2: lookup-table outputs with offset ranges; per-channel outputs only where a conv / matmul writes them
STAGE = Stage("ptq", 3, run, after=("optimize", "calibrate"), reads=READS,
              artefacts={"model.onnx": "{prefix}_ptq_model.onnx"},
              describe="int8 weights, int32 bias, shared scales, placement")
