"""parse: model file(s) + input_parameters → `*_original_float_model.onnx`.

Loads the ONNX (or converts Caffe), checks it, brings old opsets up to 13+, applies
`input_shape`, names every node, inserts the input normalization (mean/scale/std) so the model
takes the un-normalized train view (what calibration samples hold), runs shape inference,
honours `output_nodes`, and stamps `metadata_props`. Also writes the resolved per-input specs
(`inputs.json`) every later stage reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from engine import __version__
from engine.config import Config
from engine.config.inputs import InputSpec, resolve_inputs
from engine.frontend import onnx_model as fe
from engine.frontend.model_info import model_info
from engine.pipeline.hashing import sha256_json
from engine.pipeline.stage import Stage, StageContext
from engine.problems import ModelError, error

READS = ("model_parameters.onnx_model", "model_parameters.caffe_model", "model_parameters.prototxt",
         "model_parameters.output_nodes", "input_parameters.input_name", "input_parameters.input_shape",
         "input_parameters.input_type_train", "input_parameters.input_layout_train",
         "input_parameters.norm_type", "input_parameters.mean_value", "input_parameters.scale_value",
         "input_parameters.std_value", "input_parameters.input_type_rt", "input_parameters.input_layout_rt",
         "input_parameters.input_space_and_range", "calibration_parameters.cal_data_dir",
         "calibration_parameters.cal_data_type")


def load_float_model(onnx_model: Path | None = None, caffe_model: Path | None = None,
                     prototxt: Path | None = None,
                     input_shapes: dict[str, list[int]] | None = None) -> tuple[onnx.ModelProto, str, str]:
    """The user's model as ONNX, checked and at a supported opset; (model, shown path, config key)."""
    if onnx_model is not None:
        shown, key = str(onnx_model), "onnx_model"
        model = fe.load_onnx(onnx_model, key=key)
    else:
        from engine.frontend.caffe import convert

        shown, key = str(caffe_model), "caffe_model"
        model = convert(prototxt, caffe_model, input_shapes or None)
    fe.check(model, shown, key)
    fe.check_domains(model, key)
    fe.check_finite_weights(model, key)
    model = fe.upgrade_opset(model, shown, key)
    fe.initializers_as_constants(model)
    return model, shown, key


def parse_model(config: Config) -> tuple[onnx.ModelProto, list[InputSpec], dict[str, Any]]:
    mp, ip = config.model, config.inputs
    shapes = {n: list(s) for n, s in zip(ip.input_name, ip.input_shape) if n and s}
    model, shown, key = load_float_model(mp.onnx_model, mp.caffe_model, mp.prototxt, shapes)
    opset_from = fe.default_opset(model)
    renamed = fe.name_nodes(model)
    info = model_info(model)
    specs = resolve_inputs(config, info)
    for spec in specs:
        fe.set_input_shape(model, spec.name, spec.shape)
    fe.clear_inferred_shapes(model)
    model = _infer_with_given_shapes(model, specs, info, shown, key)
    normalized = insert_normalizations(model, specs)
    if normalized:
        model = fe.infer_shapes(model, shown, key)
    if config.model.output_nodes:
        fe.add_outputs(model, list(config.model.output_nodes))
    _shapes_through_constant_chains(model, shown, key)
    _check_static(model, shown, key)
    return model, specs, {"opset_from": opset_from, "opset": fe.default_opset(model), "renamed_nodes": renamed,
                          "normalized_inputs": normalized, "nodes": len(model.graph.node),
                          "model_check": info.checked_part()}


def _infer_with_given_shapes(model: onnx.ModelProto, specs: list[InputSpec], info, shown: str,
                             key: str) -> onnx.ModelProto:
    """Shape inference after input_shape is applied; a model that cannot take the given shape is told on
    input_shape (what the model's input is, what was given, the first node that refuses it), not left to
    fail in onnxruntime during calibration on an internal node."""
    original = {t.name: list(t.shape or []) for t in info.inputs}
    changed = [(i, s) for i, s in enumerate(specs) if list(s.shape) != original.get(s.name)]
    try:
        model = fe.infer_shapes(model, shown, key)
        mismatches = fe.channel_mismatches(model)
    except ModelError as exc:
        if not changed:
            raise
        mismatches, why = [], exc.problems[0].message.removeprefix("model conversion faild: ")
    else:
        if not mismatches:
            return model
        m = mismatches[0]
        why = f"node '{m.node}' ({m.op_type}) takes {m.expected} input channels, the given shape gives it {m.found}"
    if not changed:
        m = mismatches[0]
        raise ModelError(error("model-shape", f"model conversion faild: node '{m.node}' ({m.op_type}) of {shown} "
                               f"takes {m.expected} input channels but gets {m.found}", ("model_parameters", key)))
    i, spec = changed[0]
    given = "x".join(str(d) for d in spec.shape)
    raise ModelError(error("input-shape-model", f"input_shape {given} of input '{spec.name}' does not fit the model, "
                           f"whose input is {original.get(spec.name)}: {why}", ("input_parameters", "input_shape"),
                           data={"item": i}))


def insert_normalizations(model: onnx.ModelProto, specs: list[InputSpec]) -> list[str]:
    done = []
    for spec in specs:
        if spec.mean is None and spec.scale is None and spec.std is None:
            continue
        from engine.preprocess import Normalization, insert_normalization

        channels = spec.shape[3 if spec.layout_train == "NHWC" else 1] if len(spec.shape) == 4 else 1
        norm = Normalization.from_values(spec.mean, spec.scale, spec.std, channels)
        insert_normalization(model, spec.name, norm, spec.layout_train or "NCHW")
        done.append(spec.name)
    return done


FOLD_ROUNDS = 4  # fold + infer rounds: a folded chain can make a Shape of a later tensor constant


def _dynamic_outputs(model: onnx.ModelProto) -> list[str]:
    """Outputs without a static shape: a dim left symbolic, or no shape at all (inference gave up on the rank)."""
    return [o.name for o in model.graph.output if not o.type.tensor_type.HasField("shape")
            or any(not d.HasField("dim_value") for d in o.type.tensor_type.shape.dim)]


def _shapes_through_constant_chains(model: onnx.ModelProto, shown: str, key: str) -> None:
    """Static shapes where onnx's inference stops at a shape computed by ops on constants: torch's legacy
    exporter writes every F.pad's pads as ConstantOfShape → Concat → Reshape → Slice → Transpose → Reshape →
    Cast, which data propagation does not evaluate, and the model was refused as dynamic. A copy is folded
    (the passes' constant folding: ONNX's reference evaluator) and inferred again; the shapes it finds are
    written onto the model, which otherwise stays as given (the optimize stage folds it)."""
    if not _dynamic_outputs(model):
        return
    from engine.passes import fold_constants

    work = onnx.ModelProto()
    work.CopyFrom(model)
    for _ in range(FOLD_ROUNDS):
        if not fold_constants.run(work).changed:
            break
        fe.clear_inferred_shapes(work)
        try:
            work = fe.infer_shapes(work, shown, key)
        except ModelError:
            return  # the model's own inference result stands; _check_static says what is dynamic
        if not _dynamic_outputs(work):
            break
    produced = {o for n in model.graph.node for o in n.output if o}
    inferred = {vi.name: vi for vi in work.graph.value_info if vi.name in produced}
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.values())
    found = {o.name: o for o in work.graph.output}
    for out in model.graph.output:
        if out.name in found and found[out.name].type.tensor_type.HasField("shape"):
            out.type.CopyFrom(found[out.name].type)


DATA_SIZED = frozenset({"NonMaxSuppression", "NonZero", "Unique", "Compress"})  # output sizes the data decides


def _data_sized_source(model: onnx.ModelProto, output: str) -> onnx.NodeProto | None:
    """The first node upstream of `output` whose output size depends on the values (NMS, NonZero, …)."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    stack, seen = [output], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in DATA_SIZED and node.domain in ("", "ai.onnx"):
            return node
        stack.extend(i for i in node.input if i)
    return None


def _check_static(model: onnx.ModelProto, shown: str, key: str) -> None:
    for out in model.graph.output:
        t = out.type.tensor_type
        if not t.HasField("shape") or any(not d.HasField("dim_value") for d in t.shape.dim):
            source = _data_sized_source(model, out.name)
            if source is not None:  # hb_mapper: no NMS / post-processing ops (reference §17)
                raise ModelError(error("model-data-sized-output", f"Output '{out.name}' of {shown} has a size the "
                                       f"data decides (node '{source.name}', {source.op_type}); the model needs "
                                       "static shapes: export it without post-processing and run that after the "
                                       "deployed model", ("model_parameters", key)))
        if t.HasField("shape") and any(not d.HasField("dim_value") for d in t.shape.dim):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            raise ModelError(error("model-dynamic-output", f"Output '{out.name}' of {shown} still has a dynamic shape "
                                   f"{dims} after applying input_shape; the model needs static shapes",
                                   ("input_parameters", "input_shape")))


def stamp(model: onnx.ModelProto, stage: str, config: Config, specs: list[InputSpec], slice_keys) -> None:
    fe.set_metadata(model, {
        "hbcompile.version": __version__,
        "hbcompile.stage": stage,
        "hbcompile.inputs": json.dumps([s.describe() for s in specs]),
        "hbcompile.config_sha256": sha256_json(config.slice(*slice_keys)),
    })  # no march: the float model is not march-specific, and march is not in this stage's key


def run(ctx: StageContext) -> dict[str, Any]:
    model, specs, info = parse_model(ctx.config)
    stamp(model, "original_float", ctx.config, specs, READS)
    onnx.save(model, str(ctx.out_dir / "model.onnx"))
    (ctx.out_dir / "inputs.json").write_text(json.dumps([s.describe() for s in specs], indent=1))
    info["inputs_spec"] = [s.describe() for s in specs]
    return info


def model_files(config: Config) -> list[Path]:
    """The model file(s) and the external-data files its weights live in."""
    files = list(config.model.model_files)
    return files + [e for f in files if f.suffix.lower() == ".onnx" for e in fe.external_data_files(f)]


# version 3: initializers listed as graph inputs are weights (dropped from the inputs, IR ≥ 4)
# version 4: the result keeps the model's names and input types (`model_check`) for the run's config warnings
# version 5: a model with non-finite weights is refused (`check_finite_weights`): an old entry of one is not reused
# version 6: shapes behind ops on constants found by folding a copy (torch's F.pad); outputs sized by the data refused
# version 7: also for an output whose rank inference lost
STAGE = Stage("parse", 7, run, reads=READS, files=model_files,
              artefacts={"model.onnx": "{prefix}_original_float_model.onnx"},
              describe="load, check and normalize the float model")
