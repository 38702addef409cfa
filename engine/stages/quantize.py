"""quantize: the plan lowered to the integer program `*_quantized_model.bc`, taking the runtime view.

The integer program (engine.quantize.integer) takes the train view; for every input whose
runtime type differs (nv12, yuv444, …) the runtime conversion (engine.preprocess) is attached in
front, so the `.bc` — and the `.hbm` built from it — takes what the device feeds.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from engine.frontend import onnx_model as fe
from engine.pipeline.stage import Stage, StageContext
from engine.quantize.planner import QuantOptions, make_plan
from engine.stages.calibrate import load_thresholds
from engine.stages.ptq import READS as PTQ_READS

READS = PTQ_READS + ("input_parameters.input_type_rt", "input_parameters.input_layout_rt",
                     "input_parameters.input_space_and_range")


def attach_runtime_inputs(bc: onnx.ModelProto, specs: list[dict[str, Any]]) -> list[str]:
    """Prepend rt → train conversion for every image input (the device feeds uint8 pixels in the rt
    layout even when rt == train); featuremap inputs stay float. Returns the converted inputs."""
    from engine.preprocess import attach_input_conversion, build_input_conversion

    converted = []
    for spec in specs:
        rt, train = spec["input_type_rt"], spec["input_type_train"]
        if rt == "featuremap":
            continue
        conversion = build_input_conversion(rt, train, spec["input_layout_train"], tuple(spec["shape"]),
                                            spec.get("input_space_and_range") or "regular", None,
                                            input_name=spec["name"], rt_layout=spec.get("input_layout_rt"))
        # the integer program keeps its own HZ_PREPROCESS_FOR_<input> normalization: tag the colour part
        attach_input_conversion(bc, spec["name"], conversion, tag="_rt")
        converted.append(spec["name"])
    return converted


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.quantize.integer import lower_to_integer

    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    specs = json.loads(ctx.input("calibrate", "inputs.json").read_text())
    plan = make_plan(model, load_thresholds(ctx.input("calibrate", "thresholds.json")),
                     QuantOptions.from_config(ctx.config))
    bc = lower_to_integer(model, plan)
    converted = attach_runtime_inputs(bc, specs)
    fe.set_metadata(bc, {"hbcompile.stage": "quantized", "hbcompile.inputs": json.dumps(specs),
                         "hbcompile.march": ctx.config.model.march})
    onnx.save(bc, str(ctx.out_dir / "model.bc"))
    return {"nodes": len(bc.graph.node), "runtime_conversion": converted}


STAGE = Stage("quantize", 1, run, after=("optimize", "calibrate"), reads=READS,
              artefacts={"model.bc": "{prefix}_quantized_model.bc"},
              describe="integer program (.bc) taking the runtime input format")
