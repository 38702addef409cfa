"""The integer program `*_quantized_model.bc`: the optimized float model lowered by its QuantPlan.

`lower_to_integer(model, plan)` writes an ONNX model that onnxruntime runs with integer kernels:
activations as uint8 codes (int8 values + 128, DESIGN §5), int16 where the plan says, int8 weights
per output channel, int32 bias and accumulators, requantization half to even with saturation,
lookup tables for activations, and float islands only for CPU nodes and for BPU ops onnxruntime
has no integer kernel for. The model's inputs stay the train-view float tensors, each quantized by
a node `HZ_PREPROCESS_FOR_<input>` (the input-conversion stage extends exactly that node); outputs
are dequantized to float32 under their original names. Encoding, op list and the node-by-node
mapping: docs/formats.md.

`integer_intermediates(bc, sample)` runs the `.bc` with every mapped integer tensor exposed and
returns them dequantized, keyed by the float tensor name — the Quantized Cosine per node compares
these with the float model's tensors (engine.similarity); `integer_values` gives the `.bc`'s
outputs from the same run too.

Determinism: `session_options()` / `open_session()` (engine.runtime.session, re-exported here) are
the one session configuration every runner of a `.bc` or `.hbm` uses (onnxruntime's rewrites that
change values, e.g. WeightBiasQuantization on CPU-island convs, are disabled there).
The integer kernels give the same bits run after run and for any thread count; float islands (CPU
nodes, emulated ops) give the same bits run after run, and may differ in the last float bit across
thread counts when a kernel splits a reduction (a requantized output can then move by one code).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from engine.quantize.lower.builder import MS, Builder, planner_bug
from engine.quantize.lower.emulate import cpu_node, emulate
from engine.quantize.lower.encoding import Encoding
from engine.quantize.lower.registry import GROUPS, NODES
from engine.quantize.types import QuantPlan
from engine.runtime.session import open_session, session_options  # noqa: F401  (session_options: re-exported)

TENSOR_MAP_KEY = "hbcompile.tensor_map"
NODE_MAP_KEY = "hbcompile.node_map"
EMULATED_KEY = "hbcompile.emulated"
FORMAT_KEY = "hbcompile.bc_format"
FORMAT_VERSION = "1"


def lower_to_integer(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The integer program of `model` (the optimized float model) under `plan`."""
    try:  # shapes help (ranks of per-channel constants); a custom op shape inference rejects is fine
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        pass
    b = Builder(model, plan)
    for name in b.graph_inputs:
        b.float_forms[name] = name
        if b.planned(name) is not None:
            b.int_of(name)  # HZ_PREPROCESS_FOR_<input>
    last_of_group = _group_order(model, plan)
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue  # copied where a float node reads it
        if node.name not in plan.nodes:
            raise planner_bug(f"node '{node.name}' ({node.op_type}) is not in the plan")
        group = plan.group_of(node.name)
        if group is not None and all(plan.nodes[n].on == "BPU" for n in group.nodes if n in plan.nodes):
            if last_of_group.get(group.name) == node.name:
                _lower_group(b, [n for n in model.graph.node if n.name in group.nodes], group.name, group.kind)
            continue
        if plan.nodes[node.name].on == "CPU":
            cpu_node(b, node)
        else:
            _lower_node(b, node)
    for out in b.graph_outputs:
        _float_output(b, out)
    return _assemble(model, b)


def _group_order(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, str]:
    """Each group is lowered at its last node in graph order (all its inputs exist by then)."""
    index = {n.name: i for i, n in enumerate(model.graph.node)}
    return {g.name: max(g.nodes, key=lambda n: index.get(n, -1)) for g in plan.groups}


def _lower_node(b: Builder, node: onnx.NodeProto) -> None:
    lowering = NODES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    reason = lowering(b, node) if lowering else f"no integer form of {node.op_type} in onnxruntime"
    if reason is not None:
        emulate(b, [node], reason, _si32_encodings(b, [node]))


def _lower_group(b: Builder, nodes: list[onnx.NodeProto], name: str, kind: str) -> None:
    lowering = GROUPS.get(kind)
    reason = lowering(b, nodes, name) if lowering else f"no integer form of a '{kind}' group"
    if reason is not None:
        emulate(b, nodes, reason, _si32_encodings(b, nodes))


def _si32_encodings(b: Builder, nodes: list[onnx.NodeProto]) -> dict[str, Encoding]:
    """An emulated si32 output keeps hb_compile's meaning: int32 at s_in · s_w per channel."""
    if not any(b.plan.nodes[n.name].output_bits == 32 for n in nodes if n.name in b.plan.nodes):
        return {}
    first = nodes[0]
    w = next((i for i in first.input[1:2] if i in b.plan.weights), None)
    x_enc = b.encoding_of(first.input[0])
    if w is None or x_enc is None or x_enc.per_channel:
        raise planner_bug(f"si32 output of '{first.name}' without a quantized input and weight")
    scales = np.float32(x_enc.scale_array()) * np.asarray(b.plan.weights[w].scale, np.float32).reshape(-1)
    axis = -1 if first.op_type in ("Gemm", "MatMul") else 1
    return {nodes[-1].output[0]: Encoding.accumulator(scales, axis)}


def _float_output(b: Builder, out: str) -> None:
    """Model outputs keep their names and are float32 (dequantized from uint8 / int16 / int32)."""
    source = b.float_of(out)
    if source != out:
        b.emit("Identity", [source], [out], b.fresh(f"{out}_output"))


def _assemble(model: onnx.ModelProto, b: Builder) -> onnx.ModelProto:
    g = model.graph
    graph = helper.make_graph(b.nodes, g.name or "quantized", list(g.input), list(g.output), b.initializers)
    del graph.input[:]
    graph.input.extend(i for i in g.input if i.name not in b.source_init)
    opsets = [o for o in model.opset_import if o.domain != MS] + [helper.make_opsetid(MS, 1)]
    out = helper.make_model(graph, opset_imports=opsets, producer_name="hbcompile")
    out.ir_version = model.ir_version
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({
        "hbcompile.stage": "quantized",
        FORMAT_KEY: FORMAT_VERSION,
        TENSOR_MAP_KEY: json.dumps(b.tensor_map(), sort_keys=True),
        NODE_MAP_KEY: json.dumps(b.node_map, sort_keys=True),
        EMULATED_KEY: json.dumps(b.emulated, sort_keys=True),
    })
    helper.set_model_props(out, meta)
    onnx.checker.check_model(out)
    return out


def read_tensor_map(bc_model: onnx.ModelProto) -> dict[str, dict]:
    """`{float tensor: {"tensor", "scale", "zero_point", "dtype"[, "axis"]}}` stored in the `.bc`."""
    raw = next((p.value for p in bc_model.metadata_props if p.key == TENSOR_MAP_KEY), None)
    if raw is None:
        raise planner_bug("the model has no hbcompile.tensor_map: it is not a `.bc` written by hbcompile")
    return json.loads(raw)


def integer_intermediates(bc_model: onnx.ModelProto, sample: Mapping[str, np.ndarray] | np.ndarray,
                          threads: int = 1) -> dict[str, np.ndarray]:
    """Run the `.bc` on `sample` and return every mapped tensor, dequantized to float32.

    Keys are the float model's tensor names, so each value compares directly with the float
    model's tensor of the same name (the Quantized Cosine).
    """
    return integer_values(bc_model, sample, threads)[0]


def integer_values(bc_model: onnx.ModelProto, sample: Mapping[str, np.ndarray] | np.ndarray,
                   threads: int = 1, tensors: Collection[str] | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(`integer_intermediates`, the `.bc`'s outputs by name) from one session and one run: the
    report needs both, and a second session on the program cost as much as the run (det 640).
    The outputs are the values a plain run gives: exposing the mapped tensors adds graph outputs
    only, and the integer kernels give the same bits whatever is read (checked in the tests).
    `tensors`: only these float tensors are fetched and dequantized (the report's rows its memo does not
    know: PP-OCRv4 det after a threshold-moving change, ~half); every mapped tensor is still a graph
    output, so the session and each value are those of a run that reads them all."""
    tmap = read_tensor_map(bc_model)
    model = onnx.ModelProto()
    model.CopyFrom(bc_model)
    outputs = [o.name for o in bc_model.graph.output]
    present = set(outputs)
    for entry in tmap.values():
        if entry["tensor"] not in present:  # typed by onnxruntime itself
            model.graph.output.append(helper.make_empty_tensor_value_info(entry["tensor"]))
            present.add(entry["tensor"])
    session = open_session(model, threads, "the integer program")
    feeds = _feeds(session, sample)
    wanted = None if tensors is None else set(tensors)
    if wanted is not None:
        tmap = {t: entry for t, entry in tmap.items() if t in wanted}
    fetched = set(outputs) | {entry["tensor"] for entry in tmap.values()}
    names = [o.name for o in session.get_outputs() if o.name in fetched]
    values = dict(zip(names, session.run(names, feeds)))
    result: dict[str, np.ndarray] = {}
    for t, entry in tmap.items():
        v = values[entry["tensor"]]
        if entry["dtype"] == "float32":
            result[t] = v.astype(np.float32)
        else:
            scale = entry["scale"]
            enc = Encoding(entry["dtype"], tuple(scale) if isinstance(scale, list) else scale,
                           entry["zero_point"], entry.get("axis"))
            result[t] = enc.dequantize(v)
    return result, {n: values[n] for n in outputs}


def _feeds(session: ort.InferenceSession, sample: Mapping[str, np.ndarray] | np.ndarray) -> dict:
    inputs = session.get_inputs()
    if not isinstance(sample, Mapping):
        if len(inputs) != 1:
            raise ValueError(f"the model has {len(inputs)} inputs; pass a dict of arrays by input name")
        sample = {inputs[0].name: sample}
    # each input in the type the program declares: runtime formats are uint8 (NV12, pixels) or
    # int8 (yuv444_128), featuremaps and train-view inputs float32
    return {i.name: np.asarray(sample[i.name], dtype=_ORT_TYPES.get(i.type, np.float32)) for i in inputs}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(int16)": np.int16, "tensor(uint16)": np.uint16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(bool)": np.bool_}



def quantized_similarity(similarity, float_model: onnx.ModelProto, bc_model: onnx.ModelProto,
                         sample: Mapping[str, np.ndarray]):
    """`engine.similarity.Similarity` with `quantized_cosine` filled from the `.bc` on `sample`
    (`engine.similarity.with_quantized`; the float model runs here)."""
    from engine.similarity import run_model, with_quantized

    inter, bc_outputs = integer_values(bc_model, sample)
    tensors = [r.tensor for r in similarity.nodes if r.tensor] + [o.tensor for o in similarity.outputs]
    return with_quantized(similarity, run_model(float_model, sample, tensors), inter, bc_outputs)
