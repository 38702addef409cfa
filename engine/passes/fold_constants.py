"""Constant folding: a node whose inputs are all constant is replaced by initializers holding its
outputs (same tensor names), evaluated by `onnx.reference.ReferenceEvaluator`, ONNX's reference
implementation — no kernels of our own.

Constant means: an initializer that is not also a graph input, the output of a folded node, or
the result of Shape / Size on a tensor whose shape is fully known (input shapes are static here).
All foldable nodes are evaluated in one go, in graph order; if that fails, node by node, so one
node that cannot be evaluated only keeps itself and what depends on it.

Refused (Skip), for nodes whose inputs are all constant: random ops; QuantizeLinear /
DequantizeLinear (a QDQ model's thresholds are read from them by `calibration_type: load`); ops in
other domains; ops with subgraphs; nodes producing a graph output (its name must stay a node
output); and folds that would grow the model — an output over MAX_NEW_BYTES larger than the
constants it reads (ConstantOfShape / Expand / Tile of a big shape stay ops).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.passes.graph import Graph, attr, subgraphs
from engine.passes.result import PassResult

NAME, VERSION = "constant_folding", 1

MAX_NEW_BYTES = 4 * 1024 * 1024
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"})
KEPT = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def refusal(g: Graph, node: onnx.NodeProto) -> str | None:
    """Why a node with constant inputs must not be folded, or None."""
    if node.domain not in ("", "ai.onnx"):
        return f"op domain '{node.domain}' is not evaluated at compile time"
    if node.op_type in RANDOM:
        return f"{node.op_type} is random"
    if node.op_type in KEPT:
        return f"{node.op_type} is kept (calibration_type load reads thresholds from it)"
    if any(True for _ in subgraphs(node)):
        return f"{node.op_type} has a subgraph"
    outputs = [o for o in node.output if o in g.outputs]
    if outputs:
        return f"its output '{outputs[0]}' is a graph output"
    return _growth(g, node)


def _nbytes(g: Graph, name: str) -> int | None:
    shape, elem = g.static_shape(name), g.elem_type(name)
    if shape is None or not elem:
        return None
    return math.prod(shape) * helper.tensor_dtype_to_np_dtype(elem).itemsize


def _growth(g: Graph, node: onnx.NodeProto, out_bytes: int | None = None) -> str | None:
    """A refusal when the outputs (known from shape inference, or `out_bytes`) are too big."""
    if out_bytes is None:
        sizes = [_nbytes(g, o) for o in node.output if o]
        if not sizes or any(s is None for s in sizes):
            return None
        out_bytes = sum(sizes)  # type: ignore[arg-type]
    in_bytes = sum(_nbytes(g, i) or 0 for i in node.input if i)
    if out_bytes > MAX_NEW_BYTES and out_bytes > in_bytes:
        return f"folding would add {out_bytes / 2**20:.1f} MB of constants"
    return None


def shape_value(g: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """Shape / Size of a tensor whose shape is fully known, without evaluating anything."""
    shape = g.static_shape(node.input[0])
    if shape is None or node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Size":
        return np.array(math.prod(shape), dtype=np.int64)
    rank = len(shape)
    start, end = int(attr(node, "start", 0)), int(attr(node, "end", rank))
    start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
    return np.array(shape[start:end], dtype=np.int64)


def evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], known: dict[str, np.ndarray],
             g: Graph) -> dict[str, np.ndarray]:
    """Run `nodes` (constant inputs only) with the reference evaluator; returns their outputs."""
    produced = {o for n in nodes for o in n.output if o}
    needed = dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced)
    inits = [numpy_helper.from_array(known[n], n) if n in known else g.initializers[n] for n in needed]
    outs = [onnx.ValueInfoProto(name=o) for n in nodes for o in n.output if o]
    graph = helper.make_graph(list(nodes), "fold", [], outs, inits)
    mini = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    values = ReferenceEvaluator(mini).run(None, {})
    return {vi.name: v for vi, v in zip(outs, values, strict=True)}


def _evaluate_each(model, nodes, known, g, result) -> dict[str, np.ndarray]:
    """Node-by-node fallback: a node that fails is reported and its dependents are not folded."""
    values: dict[str, np.ndarray] = {}
    for node in nodes:
        if any(i and i not in g.initializers and i not in known and i not in values for i in node.input):
            continue
        try:
            values.update(evaluate(model, [node], {**known, **values}, g))
        except Exception as exc:  # the evaluator raises many types; the reason is what matters
            result.skip(node.name, f"cannot be evaluated: {str(exc).strip().splitlines()[0][:200]}")
    return values


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    constant = {name for name in g.initializers if g.is_initializer(name)}
    known: dict[str, np.ndarray] = {}
    plan: list[onnx.NodeProto] = []
    for node in model.graph.node:
        value = shape_value(g, node) if node.op_type in ("Shape", "Size") else None
        if value is not None and node.output[0] not in g.outputs:
            known[node.output[0]] = value
            constant.add(node.output[0])
            continue
        if not all(i in constant for i in node.input if i):
            continue
        reason = refusal(g, node)
        if reason:
            result.skip(node.name, reason)
            continue
        plan.append(node)
        constant.update(o for o in node.output if o)
    if not plan and not known:
        return result
    try:
        values = {**known, **evaluate(model, plan, known, g)} if plan else dict(known)
    except Exception:
        values = {**known, **_evaluate_each(model, plan, known, g, result)}
    folded: list[str] = []
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        if not outs or not all(o in values for o in outs):
            continue
        arrays = [_as_tensor(g, o, values[o]) for o in outs]
        if any(a is None for a in arrays):
            result.skip(node.name, "its output is not a tensor (sequence or optional)")
            continue
        reason = _growth(g, node, sum(a.nbytes for a in arrays))  # type: ignore[union-attr]
        if reason:
            result.skip(node.name, reason)
            continue
        for name, array in zip(outs, arrays, strict=True):
            g.set_initializer(name, array)  # type: ignore[arg-type]
        folded.append(node.name)
    if folded:
        g.remove_nodes(folded)
    result.changed = len(folded)
    return result


def _as_tensor(g: Graph, name: str, value) -> np.ndarray | None:
    """The evaluated value as an array of the tensor's declared type (None for non-tensors)."""
    if not isinstance(value, (np.ndarray, np.generic)):
        return None
    array = np.asarray(value)
    elem = g.elem_type(name)
    if elem and elem != onnx.TensorProto.STRING:
        array = array.astype(helper.tensor_dtype_to_np_dtype(elem), copy=False)
    return array
