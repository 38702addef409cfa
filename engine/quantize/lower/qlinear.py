"""Arithmetic between activations with onnxruntime's QLinear kernels (com.microsoft), uint8 in and out.

    Add(a, b)        → QLinearAdd      y = Q_y(DQ_a(a) + DQ_b(b))   (broadcasting)
    Mul(a, b)        → QLinearMul      y = Q_y(DQ_a(a) · DQ_b(b))
    Concat           → Concat on codes when every input has the output's encoding (the planner
                       shares Concat scales), else QLinearConcat (requantizes each input)
    Softmax          → QLinearSoftmax  (exact on uint8: equal to DQ → Softmax → Q at every element
                                        we measured; hb_compile's HzQSoftmax is the same idea)
    AveragePool      → QLinearAveragePool
    GlobalAveragePool, ReduceMean over H,W (keepdims) → QLinearGlobalAveragePool

An operand that is a constant instead of an activation makes Add / Mul a table op (scalar) or an
emulated op (per-channel); int16 and per-channel encodings are emulated.
"""

from __future__ import annotations

import onnx

from engine.quantize.lower.builder import MS, Builder, attr
from engine.quantize.lower.encoding import Encoding


def _uint8(*encs: Encoding | None) -> bool:
    return all(e is not None and e.dtype == "uint8" and not e.per_channel for e in encs)


def binary(b: Builder, node: onnx.NodeProto) -> str | None:
    from engine.quantize.lower.lut import lut_node

    a, c = node.input[0], node.input[1]
    constant = [t for t in (a, c) if b.is_constant(t)]
    if len(constant) == 2:
        return "both operands are constants"
    if constant and (b.planned(constant[0]) is None or b.constant_value(constant[0]).size == 1):
        return lut_node(b, node)  # x + c, x · c with a scalar (or unplanned) constant: a table
    out = node.output[0]
    enc_out = b.required(out, f"output of {node.op_type} '{node.name}'")
    if not _uint8(b.encoding_of(a), b.encoding_of(c), enc_out):
        return "int16 or per-channel operands"
    qa, qc = b.int_of(a), b.int_of(c)
    y = b.define_int(out, enc_out)
    with b.lowering(node.name):
        b.emit(f"QLinear{node.op_type}", [qa.name, qa.scale, qa.zero_point, qc.name, qc.scale, qc.zero_point,
                                          y.scale, y.zero_point], [y.name], node.name, domain=MS)
    return None


def concat(b: Builder, node: onnx.NodeProto) -> str | None:
    inputs = [i for i in node.input if i]
    if any(b.is_constant(i) for i in inputs):
        return "a constant Concat input"
    out = node.output[0]
    encs = [b.encoding_of(i) for i in inputs]
    enc_out = b.planned(out) or (encs[0] if encs and all(e is not None and e.same_as(encs[0]) for e in encs)
                                 else b.required(out, f"output of Concat '{node.name}'"))
    same = all(e is not None and e.same_as(enc_out) for e in encs)
    if not same and not _uint8(*encs, enc_out):
        return "inputs with different int16 / per-channel encodings"
    qs = [b.int_of(i) for i in inputs]
    y = b.define_int(out, enc_out)
    with b.lowering(node.name):
        if same:
            b.emit("Concat", [q.name for q in qs], [y.name], node.name, axis=attr(node, "axis"))
        else:
            args = [y.scale, y.zero_point] + [n for q in qs for n in (q.name, q.scale, q.zero_point)]
            b.emit("QLinearConcat", args, [y.name], node.name, domain=MS, axis=attr(node, "axis"))
    return None


def softmax(b: Builder, node: onnx.NodeProto) -> str | None:
    enc_in = b.encoding_of(node.input[0])
    enc_out = b.required(node.output[0], f"output of Softmax '{node.name}'")
    if not _uint8(enc_in, enc_out):
        return "QLinearSoftmax is uint8 only"
    if b.opset < 13:
        return "Softmax before opset 13 flattens to 2-D"
    x = b.int_of(node.input[0])
    y = b.define_int(node.output[0], enc_out)
    with b.lowering(node.name):
        b.emit("QLinearSoftmax", [x.name, x.scale, x.zero_point, y.scale, y.zero_point], [y.name], node.name,
               domain=MS, axis=attr(node, "axis", -1), opset=13)
    return None


def average_pool(b: Builder, node: onnx.NodeProto) -> str | None:
    enc_in = b.encoding_of(node.input[0])
    enc_out = b.required(node.output[0], f"output of AveragePool '{node.name}'")
    if not _uint8(enc_in, enc_out):
        return "QLinearAveragePool is uint8 only"
    if any(d != 1 for d in attr(node, "dilations", []) or []):
        return "dilated AveragePool"
    x = b.int_of(node.input[0])
    y = b.define_int(node.output[0], enc_out)
    keep = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
    attrs = {k: attr(node, k) for k in keep}
    with b.lowering(node.name):
        b.emit("QLinearAveragePool", [x.name, x.scale, x.zero_point, y.scale, y.zero_point], [y.name], node.name,
               domain=MS, channels_last=0, **attrs)
    return None


def global_average_pool(b: Builder, node: onnx.NodeProto) -> str | None:
    enc_in = b.encoding_of(node.input[0])
    enc_out = b.required(node.output[0], f"output of {node.op_type} '{node.name}'")
    if not _uint8(enc_in, enc_out):
        return "QLinearGlobalAveragePool is uint8 only"
    if node.op_type == "ReduceMean" and not _spatial_mean(b, node):
        return "ReduceMean over other axes than H, W (or without keepdims)"
    x = b.int_of(node.input[0])
    y = b.define_int(node.output[0], enc_out)
    with b.lowering(node.name):
        b.emit("QLinearGlobalAveragePool", [x.name, x.scale, x.zero_point, y.scale, y.zero_point], [y.name],
               node.name, domain=MS, channels_last=0)
    return None


def _spatial_mean(b: Builder, node: onnx.NodeProto) -> bool:
    rank = b.rank(node.input[0])
    if rank != 4 or attr(node, "keepdims", 1) != 1:
        return False
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = b.constant_value(node.input[1])
        axes = None if value is None else value.tolist()
    return axes is not None and sorted(int(a) % rank for a in axes) == [2, 3]

