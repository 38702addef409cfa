"""Strip a QDQ model's fake quantization: a QAT export or onnxruntime's `quantize_static` (QDQ format)
given as `onnx_model` becomes the float model it simulates int8 on.

    activation pair  t → QuantizeLinear(s, z) → q → DequantizeLinear(s, z) → t'
                     t' = (clip(round(t / s) + z) − z) · s ≈ t: the readers of t' read t
    clamping pair    the same with z = the type's minimum (range [0, ...]) after a node that can go
                     negative (a Conv): onnxruntime removed the float model's Relu or Clip there and lets
                     the saturation clamp, so the pair becomes that activation — Clip(0, 6) when the range
                     ends at 6 or follows x + 3 (ReLU6, HardSwish), else Relu — writing t (the tensor whose
                     range the pair describes); the producer writes `t_before_relu` / `t_before_clip`
    weight           W_q (integer constant) → DequantizeLinear(s, z, axis) → W'
                     W' = (W_q − z) · s, per channel along `axis`: a float initializer named W'
    weight pair      W (float constant) → QuantizeLinear → DequantizeLinear → W': W' = DQ(Q(W)), the
                     weight on its quantization grid, as the QAT model computed it

hbcompile quantizes the float model itself (calibrate → quantize). The pairs' scales are the model's
thresholds, and `calibration_type: load` reads them from the user's model file (threshold =
scale · (qmax − zero point), keyed by the QuantizeLinear's input tensor: the tensor this pass keeps);
any other calibration_type calibrates the float model again. Kept as they were, the pairs would be
float CPU nodes and every Conv reading a DequantizeLinear weight a float CPU Conv.

A DequantizeLinear output that is a graph output keeps its name (graph outputs are never renamed): the
pair's input tensor is renamed to it, as `remove_identity` does. Refused (Skip): a QuantizeLinear whose
output is read by something other than DequantizeLinear or is a graph output; scale or zero point that is
not constant, or a DequantizeLinear whose scale / zero point differ from its QuantizeLinear's (a
requantization, not an identity); a graph input passed straight to a graph output; blocked quantization
(`block_size`); a constant that is itself a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from engine.passes.activations import scalar
from engine.passes.graph import Graph, attr, subgraphs
from engine.passes.result import PassResult, Skip

NAME, VERSION = "strip_qdq", 3

DOMAINS = ("", "ai.onnx", "com.microsoft")  # onnxruntime's contrib Q/DQ (int16, uint16) compute the same
RELU6 = 6.0
NON_NEGATIVE = frozenset({"Relu", "Sigmoid", "Softmax", "HardSigmoid", "Abs", "Exp", "Sqrt", "Softplus"})
MOVES_VALUES = frozenset({"MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Transpose",
                          "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Resize", "Upsample", "Identity",
                          "DepthToSpace", "SpaceToDepth", "Gather", "ReduceMax", "ReduceMean"})


def _params(g: Graph, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scale, zero point) of a Q / DQ node; zero point 0 of the quantized type when absent."""
    scale = g.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if len(node.input) > 2 and node.input[2]:
        return scale, g.constant(node.input[2])
    return scale, np.zeros((), np.uint8)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _along_axis(node: onnx.NodeProto, scale: np.ndarray, ndim: int) -> list[int]:
    """The shape a Quantize / DequantizeLinear's scale and zero point broadcast with over an `ndim` tensor:
    per channel along its `axis` when the scale is a vector."""
    shape = [1] * ndim
    if scale.ndim == 1 and ndim:
        shape[int(attr(node, "axis", 1)) % ndim] = -1
    return shape


def _dequantize(g: Graph, dq: onnx.NodeProto, codes: np.ndarray) -> np.ndarray:
    """(codes − zero point) · scale, per channel along DequantizeLinear's `axis`, in the scale's dtype."""
    scale, zp = _params(g, dq)
    shape = _along_axis(dq, scale, codes.ndim)
    values = (codes.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)
    return values.astype(scale.dtype)


def _quantize(g: Graph, q: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """QuantizeLinear: round half to even, add the zero point, saturate to the zero point's type."""
    scale, zp = _params(g, q)
    shape = _along_axis(q, scale, x.ndim)
    codes = np.rint(x.astype(np.float64) / scale.astype(np.float64).reshape(shape)) + zp.astype(np.float64).reshape(shape)
    info = np.iinfo(zp.dtype)
    return np.clip(codes, info.min, info.max).astype(zp.dtype)


def check_pair(g: Graph, q: onnx.NodeProto) -> Skip | None:
    """Why the activation pair(s) after QuantizeLinear `q` cannot become the plain tensor, or None."""
    readers = g.consumers(q.output[0])
    if q.output[0] in g.outputs or not readers:
        return Skip(q.name, f"its output '{q.output[0]}' is a graph output (the model gives integer codes)")
    others = [n.name for n in readers if n.op_type != "DequantizeLinear" or n.domain not in DOMAINS]
    if others:
        return Skip(q.name, f"its codes are read by {', '.join(others)}, not only by DequantizeLinear")
    scale, zp = _params(g, q)
    if scale is None or zp is None:
        return Skip(q.name, "its scale or zero point is not constant")
    for dq in readers:
        if attr(dq, "block_size", 0) or attr(q, "block_size", 0):
            return Skip(dq.name, "blocked quantization (block_size) is not a per-tensor or per-channel threshold")
        dq_scale, dq_zp = _params(g, dq)
        if not (_same(scale, dq_scale) and _same(zp, dq_zp)) or attr(dq, "axis", 1) != attr(q, "axis", 1):
            return Skip(dq.name, f"its scale or zero point differs from QuantizeLinear '{q.name}''s: a "
                                 "requantization, not a fake quantization")
    to_outputs = [dq for dq in readers if dq.output[0] in g.outputs]
    t = q.input[0]
    source = g.producer(t)
    if source is not None and source.op_type == "DequantizeLinear" and g.constant(source.input[0]) is None:
        return Skip(q.name, f"'{t}' is another pair's DequantizeLinear output (a requantization chain)")
    if len(to_outputs) > 1:
        return Skip(q.name, f"'{t}' reaches {len(to_outputs)} graph outputs through DequantizeLinear")
    if to_outputs and (source is None or t in g.outputs):  # no producer: a graph input or an initializer
        return Skip(to_outputs[0].name, f"its output '{to_outputs[0].output[0]}' is a graph output and '{t}' is a "
                                        "graph input, initializer or graph output")
    return None


def clamp(g: Graph, q: onnx.NodeProto) -> tuple[str, float | None] | None:
    """The activation onnxruntime removed where the pair now clamps, as ("Relu", None) or ("Clip", 6.0);
    None when the pair's range does not start at 0 (zero point ≠ the type's minimum) or its input is ≥ 0
    anyway. An upper end of 6 (within half a step), or a pair right after x + 3, is ReLU6 — MobileNet's,
    and HardSwish's x·relu6(x + 3)/6 — so the Clip keeps the exact 6 the activation passes recognise; any
    other upper end is only where calibration stopped (onnxruntime gives the removed activation's input
    its output's range)."""
    scale, zp = _params(g, q)
    if scale is None or not _starts_at_zero(zp):
        return None
    t = q.input[0]
    if g.producer(t) is None or t in g.outputs or _non_negative(g, t):
        return None
    top = (float(np.iinfo(zp.dtype).max) - float(np.max(zp))) * float(np.max(scale))
    relu6 = scale.size == 1 and abs(top - RELU6) <= float(scale) / 2
    return ("Clip", RELU6) if relu6 or _plus_three(g, g.producer(t)) else ("Relu", None)


def _starts_at_zero(zp: np.ndarray | None) -> bool:
    """An integer zero point at its type's minimum: the pair's range starts at 0."""
    return zp is not None and zp.dtype.kind in "iu" and bool(np.all(zp == np.iinfo(zp.dtype).min))


def _plus_three(g: Graph, node: onnx.NodeProto) -> bool:
    """`node` is x + 3: the relu6 after it is HardSwish's / HardSigmoid's, whatever range calibration saw."""
    return node.op_type == "Add" and len(node.input) == 2 and any(scalar(g, i) == 3.0 for i in node.input)


def _non_negative(g: Graph, t: str, depth: int = 8) -> bool:
    """`t` is ≥ 0 by construction (an activation's output, a pair's range starting at 0, or values moved
    from one)."""
    node = g.producer(t)
    if node is None or depth == 0:
        return False
    if node.op_type in NON_NEGATIVE:
        return True
    if node.op_type == "DequantizeLinear":
        return _starts_at_zero(_params(g, node)[1])
    if node.op_type == "Clip":
        low = g.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return low is not None and float(np.min(low)) >= 0
    if node.op_type in MOVES_VALUES:
        return _non_negative(g, node.input[0], depth - 1)
    if node.op_type == "Concat":
        return all(_non_negative(g, i, depth - 1) for i in node.input)
    return False


@dataclass
class Rewrites:
    """The pairs' rewrites, planned on the graph as it was and applied in one sweep (one refresh, not
    one per pair: a QDQ PP-OCR cls has 326 pairs)."""

    alias: dict[str, str] = field(default_factory=dict)  # tensor → the tensor its readers read instead
    doomed: list[str] = field(default_factory=list)  # Q / DQ nodes that go
    before: dict[str, tuple[str, str]] = field(default_factory=dict)  # producer → (t, t_before_clamp)
    clamps: dict[str, onnx.NodeProto] = field(default_factory=dict)  # producer → the Relu / Clip after it
    unclamped: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)  # t → readers of the raw value
    taken: set[str] | None = None  # the graph's names as planned so far (the graph itself changes at apply)

    def name(self, g: Graph, base: str) -> str:
        if self.taken is None:
            self.taken = g.names()
        return g.unique_name(base, self.taken)

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.alias and name not in seen:
            seen.add(name)
            name = self.alias[name]
        return name


def plan_pair(g: Graph, q: onnx.NodeProto, plan: Rewrites) -> None:
    """Readers of every DequantizeLinear after `q` read q's input t (through the removed activation where
    the pair clamped at 0); a graph-output DequantizeLinear's name replaces t's."""
    t = q.input[0]
    readers = g.consumers(q.output[0])
    activation = clamp(g, q)
    if activation is not None:
        producer = g.producer(t)
        raw = plan.name(g, f"{t}_before_{activation[0].lower()}")
        inputs = [raw]
        if activation[0] == "Clip":
            low, high = plan.name(g, f"{raw}_min"), plan.name(g, f"{raw}_max")
            g.set_initializer(low, np.array(0.0, np.float32))
            g.set_initializer(high, np.array(activation[1], np.float32))
            inputs += [low, high]
        plan.before[producer.name] = (t, raw)
        plan.clamps[producer.name] = helper.make_node(activation[0], inputs, [t],
                                                      name=plan.name(g, f"{producer.name}_{activation[0].lower()}"))
        plan.unclamped[t] = [n for n in g.consumers(t) if n.op_type != "QuantizeLinear"]
    for dq in readers:
        plan.alias[dq.output[0]] = t
        if dq.output[0] in g.outputs:
            plan.alias[t] = dq.output[0]
            del plan.alias[dq.output[0]]
    plan.doomed += [q.name, *(dq.name for dq in readers)]


def _resolve_inputs(nodes, plan: Rewrites) -> None:
    for n in nodes:
        for k, name in enumerate(n.input):
            if name:
                n.input[k] = plan.resolve(name)
        for sub in subgraphs(n):
            _resolve_inputs(sub.node, plan)


def apply(g: Graph, plan: Rewrites) -> None:
    """The planned rewrites: clamps after their producers, readers re-pointed, the pairs removed."""
    raw_of = dict(plan.before.values())  # t → its value before the clamp
    for t, readers in plan.unclamped.items():
        raw = raw_of[t]
        for n in readers:
            for k, name in enumerate(n.input):
                if name == t:
                    n.input[k] = raw
    doomed = set(plan.doomed)
    nodes = []
    for node in g.g.node:
        if node.name in doomed:
            continue
        nodes.append(node)
        if node.name in plan.before:
            t, raw = plan.before[node.name]
            node.output[list(node.output).index(t)] = raw
            nodes.append(plan.clamps[node.name])
    renamed = [t for t, y in plan.alias.items() if y in g.outputs]
    for node in nodes:
        for k, name in enumerate(node.output):
            if name in renamed:
                node.output[k] = plan.alias[name]
    _resolve_inputs(nodes, plan)
    del g.g.node[:]
    g.g.node.extend(nodes)
    g.refresh()
    g.drop_value_info(v.name for v in list(g.g.value_info) if v.name not in g.producers)  # pairs' and renamed


def check_constant(g: Graph, dq: onnx.NodeProto, q: onnx.NodeProto | None) -> Skip | None:
    """Why DequantizeLinear `dq` of a constant (behind QuantizeLinear `q`, if any) cannot become a float
    initializer, or None."""
    if dq.output[0] in g.outputs:
        return Skip(dq.name, f"its output '{dq.output[0]}' is a graph output")
    if attr(dq, "block_size", 0) or (q is not None and attr(q, "block_size", 0)):
        return Skip(dq.name, "blocked quantization (block_size) is not folded")
    for node in (dq, q) if q is not None else (dq,):
        scale, zp = _params(g, node)
        if scale is None or zp is None:
            return Skip(node.name, "its scale or zero point is not constant")
        if zp.dtype.kind not in "iu" or scale.ndim > 1:
            return Skip(node.name, f"quantized type {zp.dtype} / scale of rank {scale.ndim} is not folded")
    return None


def fold_constant(g: Graph, dq: onnx.NodeProto, q: onnx.NodeProto | None) -> np.ndarray:
    """DQ(codes) — or DQ(Q(W)) for a float weight behind its own pair: the initializer DQ's output becomes."""
    codes = _quantize(g, q, g.constant(q.input[0])) if q is not None else g.constant(dq.input[0])
    return _dequantize(g, dq, codes)


def _constant_source(g: Graph, dq: onnx.NodeProto) -> tuple[bool, onnx.NodeProto | None]:
    """(dq reads a constant, the QuantizeLinear before it when that constant is a float weight behind its
    own pair)."""
    if g.constant(dq.input[0]) is not None:
        return True, None
    q = g.producer(dq.input[0])
    if q is not None and q.op_type == "QuantizeLinear" and q.domain in DOMAINS and g.constant(q.input[0]) is not None:
        return True, q
    return False, None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    folded: list[tuple[onnx.NodeProto, np.ndarray]] = []
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.domain in DOMAINS]:
        constant, q = _constant_source(g, dq)
        if not constant:
            continue
        skip = check_constant(g, dq, q)
        if skip:
            result.skipped.append(skip)
            continue
        folded.append((dq, fold_constant(g, dq, q)))
    if folded:  # the QuantizeLinear of a float weight's pair, left without readers, goes with remove_dead_nodes
        g.remove_nodes([dq.name for dq, _ in folded])
        for dq, value in folded:
            g.set_initializer(dq.output[0], value)
        result.changed += len(folded)
    plan = Rewrites()
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.domain in DOMAINS]:
        if g.constant(q.input[0]) is not None:
            continue  # a weight's pair: folded above
        skip = check_pair(g, q)
        if skip:
            result.skipped.append(skip)
            continue
        plan_pair(g, q, plan)
        result.changed += 1
    if plan.doomed:
        apply(g, plan)
    return result
