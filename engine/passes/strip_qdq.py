"""Strip a QDQ model's fake quantization: a QAT export or onnxruntime's `quantize_static` (QDQ format)
given as `onnx_model` becomes the float model it simulates int8 on.

    activation pair  t → QuantizeLinear(s, z) → q → DequantizeLinear(s, z) → t'
                     t' = (clip(round(t / s) + z) − z) · s ≈ t: the readers of t' read t
    clamping pair    the same with z = the type's minimum (range [0, ...]) after a node that can go
                     negative (a Conv): onnxruntime removed the float model's Relu (or Clip at 0) there
                     and lets the saturation clamp, so the pair becomes that Relu, writing t (the tensor
                     whose range the pair describes); the producer writes `t_before_relu`
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

import numpy as np
import onnx

from engine.passes.graph import Graph, attr
from engine.passes.remove_identity import bypass
from engine.passes.result import PassResult, Skip

NAME, VERSION = "strip_qdq", 1

DOMAINS = ("", "ai.onnx", "com.microsoft")  # onnxruntime's contrib Q/DQ (int16, uint16) compute the same
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


def _dequantize(g: Graph, dq: onnx.NodeProto, codes: np.ndarray) -> np.ndarray:
    """(codes − zero point) · scale, per channel along DequantizeLinear's `axis`, in the scale's dtype."""
    scale, zp = _params(g, dq)
    shape = [1] * codes.ndim
    if scale.ndim == 1 and codes.ndim:
        shape[int(attr(dq, "axis", 1)) % codes.ndim] = -1
    values = (codes.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)
    return values.astype(scale.dtype)


def _quantize(g: Graph, q: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """QuantizeLinear: round half to even, add the zero point, saturate to the zero point's type."""
    scale, zp = _params(g, q)
    shape = [1] * x.ndim
    if scale.ndim == 1 and x.ndim:
        shape[int(attr(q, "axis", 1)) % x.ndim] = -1
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
    if len(to_outputs) > 1:
        return Skip(q.name, f"'{t}' reaches {len(to_outputs)} graph outputs through DequantizeLinear")
    if to_outputs and (g.producer(t) is None or t in g.inputs or t in g.outputs or g.is_initializer(t)):
        return Skip(to_outputs[0].name, f"its output '{to_outputs[0].output[0]}' is a graph output and '{t}' is a "
                                        "graph input, initializer or graph output")
    return None


def clamps_at_zero(g: Graph, q: onnx.NodeProto) -> bool:
    """The pair's range starts at 0 (zero point = the type's minimum) after a node that can go negative:
    where onnxruntime removed a Relu (or a Clip at 0) whose work the pair's saturation does."""
    scale, zp = _params(g, q)
    if zp.dtype.kind not in "iu" or np.any(zp != np.iinfo(zp.dtype).min):
        return False
    t = q.input[0]
    return g.producer(t) is not None and t not in g.inputs and t not in g.outputs and not _non_negative(g, t)


def _non_negative(g: Graph, t: str, depth: int = 8) -> bool:
    """`t` is ≥ 0 by construction (an activation's output, or values moved from one)."""
    node = g.producer(t)
    if node is None or depth == 0:
        return False
    if node.op_type in NON_NEGATIVE:
        return True
    if node.op_type == "Clip":
        low = g.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return low is not None and float(np.min(low)) >= 0
    if node.op_type in MOVES_VALUES:
        return _non_negative(g, node.input[0], depth - 1)
    if node.op_type == "Concat":
        return all(_non_negative(g, i, depth - 1) for i in node.input)
    return False


def _insert_relu(g: Graph, q: onnx.NodeProto) -> None:
    """t's producer writes `t_before_relu`; a Relu writes t (the tensor whose range the pair describes);
    t's other readers (not clamped in the QDQ model either) read the producer's output."""
    t = q.input[0]
    producer = g.producer(t)
    before = g.unique_name(f"{t}_before_relu")
    producer.output[list(producer.output).index(t)] = before
    _rename_readers([n for n in g.consumers(t) if n.name != q.name], t, before)
    relu = onnx.helper.make_node("Relu", [before], [t], name=g.unique_name(f"{producer.name}_relu"))
    g.g.node.insert(g.index[producer.name] + 1, relu)
    g.refresh()


def _rename_readers(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new


def rewrite_pair(g: Graph, q: onnx.NodeProto) -> None:
    """Readers of every DequantizeLinear after `q` read q's input (through a Relu where the pair clamped at
    0); the graph-output DequantizeLinear last (its name replaces the tensor's)."""
    if clamps_at_zero(g, q):
        _insert_relu(g, q)
    t = q.input[0]
    for dq in sorted(g.consumers(q.output[0]), key=lambda n: n.output[0] in g.outputs):
        skip = bypass(g, dq, t, dq.output[0])
        assert skip is None, skip  # check_pair refused every case bypass refuses
        if dq.output[0] in g.outputs:
            t = dq.output[0]
    g.remove_nodes([q.name])


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


def rewrite_constant(g: Graph, dq: onnx.NodeProto, q: onnx.NodeProto | None) -> None:
    """DQ(codes) — or DQ(Q(W)) for a float weight behind its own pair — as the initializer DQ wrote; a
    QuantizeLinear left without readers goes with `remove_dead_nodes`."""
    codes = _quantize(g, q, g.constant(q.input[0])) if q is not None else g.constant(dq.input[0])
    value = _dequantize(g, dq, codes)
    out = dq.output[0]
    g.remove_nodes([dq.name])
    g.set_initializer(out, value)


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
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.domain in DOMAINS]:
        constant, q = _constant_source(g, dq)
        if not constant:
            continue
        skip = check_constant(g, dq, q)
        if skip:
            result.skipped.append(skip)
            continue
        rewrite_constant(g, dq, q)
        result.changed += 1
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.domain in DOMAINS]:
        if g.constant(q.input[0]) is not None:
            continue  # a weight's pair: folded above
        skip = check_pair(g, q)
        if skip:
            result.skipped.append(skip)
            continue
        rewrite_pair(g, q)
        result.changed += 1
    return result
