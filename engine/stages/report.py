"""report: the similarity of every node and output — float vs calibrated (Calibrated Cosine) and
float vs the integer `.bc` (Quantized Cosine) on the first calibration sample — as
`*_node_info.csv`, `*_quant_info.json` and the tables the CLI prints and the editor shows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import onnx

from engine.pipeline.stage import Stage, StageContext
from engine.quantize.planner import QuantOptions, make_plan
from engine.report import tables
from engine.stages.calibrate import load_thresholds
from engine.stages.quantize import READS as QUANTIZE_READS


def quantized_values(bc: onnx.ModelProto, sample: dict[str, np.ndarray], specs: list[dict[str, Any]]
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dequantized intermediates by float tensor name, outputs by name) of the `.bc` on `sample`,
    fed in each input's runtime format."""
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import integer_intermediates
    from engine.runtime.session import open_session

    feeds = {s["name"]: to_runtime(sample[s["name"]], s["input_type_rt"], s["input_type_train"],
                                   s["input_layout_train"], s.get("input_space_and_range") or "regular",
                                   s.get("input_layout_rt")) for s in specs}
    batch = program_batch(bc)
    if batch > 1:  # input_batch: the program takes N samples; every tensor keeps them on axis 0
        feeds = {k: np.repeat(v, batch, axis=0) for k, v in feeds.items()}
    inter = integer_intermediates(bc, feeds)
    sess = open_session(bc, what="the integer program")
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    if batch > 1:
        inter, outs = ({k: v[:1] for k, v in d.items()} for d in (inter, outs))
    return inter, outs


def program_batch(bc: onnx.ModelProto) -> int:
    """The batch the `.bc` takes (`input_batch`, recorded per input by the quantize stage)."""
    stored = next((p.value for p in bc.metadata_props if p.key == "hbcompile.inputs"), "[]")
    return max((int(s.get("input_batch") or 1) for s in json.loads(stored)), default=1)


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.similarity import compare, cosine, run_model

    optimized = onnx.load(str(ctx.input("optimize", "model.onnx")))
    calibrated = onnx.load(str(ctx.input("calibrate", "model.onnx")))
    bc = onnx.load(str(ctx.input("quantize", "model.bc")))
    specs = json.loads(ctx.input("calibrate", "inputs.json").read_text())
    with np.load(ctx.input("calibrate", "first_sample.npz")) as z:
        sample = {k: z[k] for k in z.files}
    thresholds_path = ctx.input("calibrate", "thresholds.json")
    plan = make_plan(optimized, load_thresholds(thresholds_path), QuantOptions.from_config(ctx.config))
    sim = compare(optimized, calibrated, sample, plan)
    inter, bc_outputs = quantized_values(bc, sample, specs)
    wanted = sorted({r.tensor for r in sim.nodes if r.tensor and r.tensor in inter})
    ref = run_model(optimized, sample, wanted)
    nodes = [replace(r, quantized_cosine=cosine(ref[r.tensor], inter[r.tensor]) if r.tensor in inter else None)
             for r in sim.nodes]
    outputs = [replace(o, quantized_cosine=cosine(ref[o.tensor], bc_outputs[o.tensor])
                       if o.tensor in bc_outputs else None) for o in sim.outputs]
    calibrated_flag = ctx.config.calibration.calibration_type != "skip"
    (ctx.out_dir / "node_info.csv").write_text(tables.node_info_csv(nodes, calibrated_flag))
    node_io = {n.name: (list(n.input), list(n.output)) for n in optimized.graph.node}
    info = tables.quant_info(nodes, outputs, node_io, json.loads(thresholds_path.read_text()))
    (ctx.out_dir / "quant_info.json").write_text(json.dumps(info, indent=1))
    return {"calibrated": calibrated_flag, "nodes": [asdict(r) for r in nodes],
            "outputs": [asdict(o) for o in outputs]}


STAGE = Stage("report", 1, run, after=("optimize", "calibrate", "quantize"),
              reads=QUANTIZE_READS + ("calibration_parameters.calibration_type",),
              artefacts={"node_info.csv": "{prefix}_node_info.csv", "quant_info.json": "{prefix}_quant_info.json"},
              describe="similarity tables (calibrated and quantized cosine per node and output)")
