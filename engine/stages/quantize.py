"""quantize: the plan lowered to the integer program `*_quantized_model.bc`, taking the runtime view.

The integer program (engine.quantize.integer) is lowered from the optimized float model, which
takes the train view. Then every image input gets its runtime conversion as integer work
(engine.preprocess.integer): the device's uint8 pixels / NV12 bytes go through data movement on
the bytes and ONE quantized 1×1 conv `HZ_PREPROCESS_FOR_<input>` that folds the colour matrix
and the mean/scale into the tensor the model's first nodes read — replacing the program's own
QuantizeLinear of the float input and its lowered mean/scale nodes. featuremap inputs stay float.

input_batch (decided, engine.preprocess.batch): for N > 1 the optimized model is rewritten for
batch N before lowering — Reshapes with a constant batch of 1 keep the batch (0 = copy), and
the rewritten model must give, on two samples, exactly the two batch-1 results stacked on axis
0 for every tensor; otherwise the stage stops with an error naming the node that mixes or moves
the batch, and nothing is written. The plan (scales, placement) is the batch-1 plan; the `.bc`
inputs are (N, …) in their runtime format and `hbcompile.inputs` records `input_batch`.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from engine.frontend import onnx_model as fe
from engine.pipeline.stage import Stage, StageContext
from engine.stages.ptq import READS as PTQ_READS
from engine.stages.ptq import stage_plan

READS = PTQ_READS + ("input_parameters.input_type_rt", "input_parameters.input_layout_rt",
                     "input_parameters.input_space_and_range", "input_parameters.input_batch",
                     "model_parameters.march")  # stamped into the .bc (hbcompile.march, hb_model_info's BPU march)


def attach_runtime_inputs(bc: onnx.ModelProto, specs: list[dict[str, Any]], float_model: onnx.ModelProto,
                          batch: int = 1, cpu_nodes: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every image input of `bc` in its runtime format (in place); {input: "integer" | "float" | "none"}.

    "integer": HZ_PREPROCESS_FOR_<input> is a quantized conv on the rt pixels; "float": the program
    reads that input only in float (CPU readers), so the colour step stays float in front of it.
    """
    from engine.preprocess.integer import attach_runtime_input

    return {spec["name"]: attach_runtime_input(bc, spec, float_model, batch * int(spec["shape"][0]), cpu_nodes).mode
            for spec in specs}


def runtime_specs(specs: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The input specs the `.bc` stores: the batch it takes in `shape[0]` (the model's own N, times
    `input_batch`, which requires N = 1), and `input_batch`."""
    return [{**s, "shape": [batch * int(s["shape"][0]), *s["shape"][1:]], "input_batch": batch} for s in specs]


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.compile.program import drop_unused_initializers
    from engine.preprocess.batch import with_batch
    from engine.quantize.integer import lower_to_integer

    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    specs = json.loads(ctx.input("calibrate", "inputs.json").read_text())
    batch = int(ctx.config.inputs.input_batch or 1)
    plan = stage_plan(ctx, model)
    rewrites = []
    body = model
    if batch > 1:
        body, rewrites = with_batch(model, batch)
    ctx.check_cancel()
    bc = lower_to_integer(body, plan)
    cpu = frozenset(n for n, p in plan.nodes.items() if p.on == "CPU")
    conversions = attach_runtime_inputs(bc, specs, model, batch, cpu)
    drop_unused_initializers(bc)  # scales / zero points lowering defines for tensors nothing dequantizes
    onnx.checker.check_model(bc)
    fe.set_metadata(bc, {"hbcompile.stage": "quantized", "hbcompile.inputs": json.dumps(runtime_specs(specs, batch)),
                         "hbcompile.march": ctx.config.model.march})
    onnx.save(bc, str(ctx.out_dir / "model.bc"))
    return {"nodes": len(bc.graph.node), "runtime_conversion": conversions, "input_batch": batch,
            "batch_rewrites": [{"node": r.node, "before": list(r.before), "after": list(r.after)} for r in rewrites]}


# version 4: int32 biases carry the plan's bias corrections (the ptq model's bias values)
# version 5: an image input with N > 1 in input_shape takes N frames (it took one)
# version 6: lookup-table outputs with offset ranges (zero point 128 + z)
# version 8: no initializer nothing reads (onnxruntime warned "Removing initializer ... not used" on opening the .bc)
# version 9: uint8 HardSwish as a gate + product (QLinearLeakyRelu, QLinearMul), HardSigmoid as one QLinearLeakyRelu
STAGE = Stage("quantize", 9, run, after=("optimize", "calibrate"), reads=READS,
              artefacts={"model.bc": "{prefix}_quantized_model.bc"},
              describe="integer program (.bc) taking the runtime input format")
