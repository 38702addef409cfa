"""Conv / Gemm / MatMul: int8 weights, int32 accumulation, one requantization.

    Conv            → QLinearConv(x uint8, W int8 per output channel, bias int32 at s_x·s_w)
                      y = sat(rne((Σ x·w + b) · s_x·s_w / s_y)) + 128
    Conv+Relu/Clip  → QLinearConv at y's scale → Clip on codes at Q(lo), Q(hi)
                      (exact: Q is monotone, so Q(clip(v)) = clip(Q(v)))
    Conv+LeakyRelu  → Max(QLinearConv at s_y, QLinearConv at s_y/α) for 0 < α < 1 (Min for α > 1)
                      (exact: LeakyRelu(v) = max(v, αv) and Q(max(a, b)) = max(Q(a), Q(b)); the
                      convolution runs twice — still ~2× faster than float, where one int32 epilogue
                      through ConvInteger measured ~4× *slower* than float)
    Conv+Add        → QLinearConv at s_y/4 and at s_y + s_r, each QLinearAdd-ed to r, the first
                      where it did not clip, else the second (`conv_add`: within one step of
                      Q_y(conv + r); the exact int32 form measured slower than float here)
    si32 output     → ConvInteger (uint8 weights, zero point 128) + int32 bias: the accumulator
                      itself, scale s_x·s_w per channel (+ Max / Min on int32 for a fused Relu / Clip)
    1×1, int16 out  → ConvInteger + int32 bias → DequantizeLinear(M per channel) → QuantizeLinear
                      int16: QLinearConv's arithmetic with an int16 result (`_conv_to_int16`)
    Gemm            → QGemm (int8 B per column, int32 C);   si32: MatMulInteger + int32 bias
    MatMul          → QLinearMatMul (constant B: int8 per column; activation B: uint8 per tensor);
                      si32: MatMulInteger

ConvTranspose (no integer kernel in onnxruntime's CPU provider), non-constant weights, int16 inputs,
other int16 outputs and per-channel activations are emulated (engine.quantize.lower.emulate). A kernel = stride = 2
ConvTranspose is a 1×1 conv to 4·C_out channels and a DepthToSpace, but onnxruntime's uint8
DepthToSpace (or the same move as Reshape/Transpose in NHWC) costs more than the float
ConvTranspose saves: PP-OCRv4 det's 24 → 24 upsampling at 160×160, float 4.7 ms, QLinearConv +
DepthToSpace 5.2 ms, NHWC move 10.4 ms (1 thread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from engine.quantize.lower.builder import MS, Builder, QTensor, QWeight, attr
from engine.quantize.lower.encoding import Encoding
from engine.quantize.lower.layout import clamp_bounds, emit_clamp

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
FINE = 4  # Conv+Add: the fine path's scale is s_y / FINE (see `conv_add`)


def _uint8(enc: Encoding | None) -> bool:
    return enc is not None and enc.dtype == "uint8" and not enc.per_channel


def _si32(b: Builder, nodes: Sequence[onnx.NodeProto]) -> bool:
    return any(b.plan.nodes[n.name].output_bits == 32 for n in nodes if n.name in b.plan.nodes)


def _conv_refusal(b: Builder, conv: onnx.NodeProto) -> str | None:
    if conv.op_type != "Conv":
        return f"{conv.op_type} has no integer kernel in onnxruntime's CPU provider"
    if not _uint8(b.encoding_of(conv.input[0])):
        return "the input is not an 8-bit per-tensor activation"
    if conv.input[1] not in b.plan.weights or not b.is_constant(conv.input[1]):
        return "the weight is not a planned constant"
    return None


def accumulator(b: Builder, x: QTensor, w: QWeight, axis: int = 1) -> Encoding:
    """The int32 accumulator's encoding: scale s_x · s_w per output channel."""
    return Encoding.accumulator(np.float32(x.enc.scale_array()) * w.scales, axis)


def _bias(b: Builder, bias: str | None, x: QTensor, w: QWeight, shape: Sequence[int] = (-1,)) -> str:
    """The bias as int32 codes at s_x · s_w (what QLinearConv / QGemm add to the accumulator)."""
    if not bias:
        return ""
    codes = b.bias_codes(bias, np.float32(x.enc.scale_array()) * w.scales).reshape(-1)
    return b.const(f"{bias}_quantized", codes.reshape(shape))


def _qlinear_conv(b: Builder, conv: onnx.NodeProto, x: QTensor, w: QWeight, bias: str, y: QTensor,
                  name: str | None) -> None:
    inputs = [x.name, x.scale, x.zero_point, w.name, w.scale, w.zero_point, y.scale, y.zero_point]
    b.emit("QLinearConv", inputs + ([bias] if bias else []), [y.name], name,
           **{k: attr(conv, k) for k in CONV_ATTRS})


def _conv_integer(b: Builder, conv: onnx.NodeProto, x: QTensor, w: QWeight, out: str) -> None:
    """int32 accumulator (+ bias): ConvInteger, then Add of the int32 bias as (1, C, 1, …)."""
    rank = b.rank(conv.input[0]) or 4
    bias = _bias(b, conv.input[2] if len(conv.input) > 2 else None, x, w, [1, -1] + [1] * (rank - 2))
    acc = out if not bias else b.fresh(f"{out}_accumulator")
    b.emit("ConvInteger", [x.name, w.name, x.zero_point, w.zero_point], [acc], conv.name,
           **{k: attr(conv, k) for k in CONV_ATTRS})
    if bias:
        b.emit("Add", [acc, bias], [out])


def conv(b: Builder, node: onnx.NodeProto) -> str | None:
    refusal = _conv_refusal(b, node)
    if refusal:
        return refusal
    out = node.output[0]
    si32 = _si32(b, [node])
    enc_out = None if si32 else b.required(out, f"output of Conv '{node.name}'")
    if not si32 and not _uint8(enc_out):
        if _pointwise(b, node) and enc_out.dtype == "int16" and not enc_out.per_channel:
            _conv_to_int16(b, node, enc_out)
            return None
        return "int16 / per-channel output"
    x, w = b.int_of(node.input[0]), b.weight(node.input[1], unsigned=si32)
    with b.lowering(node.name):
        if si32:
            _conv_integer(b, node, x, w, b.define_int(out, accumulator(b, x, w)).name)
        else:
            bias = _bias(b, node.input[2] if len(node.input) > 2 else None, x, w)
            _qlinear_conv(b, node, x, w, bias, b.define_int(out, enc_out), node.name)
    return None


def _pointwise(b: Builder, node: onnx.NodeProto) -> bool:
    """An ungrouped 1×1 convolution (stride 1, no padding): the shape ConvInteger runs fast."""
    w = b.constant_value(node.input[1])
    return w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and int(attr(node, "group", 1)) == 1 \
        and all(v == 1 for v in attr(node, "strides", [1, 1])) and not any(attr(node, "pads", [0] * 4)) \
        and attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def _conv_to_int16(b: Builder, node: onnx.NodeProto, enc_out: Encoding) -> None:
    """A 1×1 Conv from uint8 to an int16 output (mixed precision's int16 tensors) on integer kernels:

        acc = ConvInteger(x uint8 / z_x, W + 128 uint8 / 128) + b     the exact int32 accumulator
        y   = QuantizeLinear(DequantizeLinear(acc, M_c, 0, axis 1), 1, 0)  → int16
            = sat16(rne(fl(acc · M_c))),  M_c = fl(fl(s_x · s_w[c]) / s_y)

    QLinearConv's arithmetic (int32 accumulation, one float32 multiply by its multiplier, round half
    to even, saturate) with an int16 result, which QLinearConv cannot write. Before, these convs ran
    as float kernels (DequantizeLinear → float Conv → QuantizeLinear, the fake-quant value in
    float32); measured on PP-OCRv4 det's six 1×1 int16-output convs (1 thread, alone): 16→32 at
    320×320 4.8 → 3.9 ms, 48→48 at 160² 2.2 → 1.6, 192→192 at 40² 1.33 → 0.90. The bias could be
    DequantizeLinear's int32 zero point instead of an Add (one pass fewer: 3.9 → 3.2 ms on the
    first), but onnxruntime takes a non-zero int32 zero point only from 1.23 and the `.bc` / `.hbm`
    must run on every onnxruntime this project supports (≥ 1.18). (3×3 and depthwise ConvInteger
    are no faster than the float kernel, or much slower: those stay emulated.)"""
    x, w = b.int_of(node.input[0]), b.weight(node.input[1], unsigned=True)
    scale_xw = np.float32(x.enc.scale_array()) * w.scales
    multiplier = (scale_xw / np.float32(enc_out.scale_array())).astype(np.float32)
    out = node.output[0]
    with b.lowering(node.name):
        y = b.define_int(out, enc_out)
        acc, scaled = b.fresh(f"{out}_accumulator"), b.fresh(f"{out}_requantized")
        _conv_integer(b, node, x, w, acc)
        b.emit("DequantizeLinear", [acc, b.const(f"{out}_multiplier", multiplier),
                                    b.const(f"{out}_accumulator_zero_point", np.zeros(len(multiplier), np.int32))],
               [scaled], axis=1)
        b.emit("QuantizeLinear", [scaled, b.const(f"{out}_one", np.array(1.0, np.float32)), y.zero_point], [y.name],
               domain="" if b.opset >= 21 else MS)


def conv_act(b: Builder, nodes: Sequence[onnx.NodeProto], name: str) -> str | None:
    """Conv + Relu / Clip / LeakyRelu as one integer op (see the module docstring)."""
    cv, act = nodes[0], nodes[-1]
    refusal = _conv_refusal(b, cv) or (None if len(nodes) == 2 else "more than one activation")
    if refusal:
        return refusal
    out = act.output[0]
    si32 = _si32(b, nodes)
    enc_out = None if si32 else b.required(out, f"output of '{name}'")
    if not si32 and not _uint8(enc_out):
        return "int16 / per-channel output"
    bounds = clamp_bounds(b, act) if act.op_type in ("Relu", "Clip") else None
    alpha = float(attr(act, "alpha", 0.01)) if act.op_type == "LeakyRelu" else None
    if bounds is None and (alpha is None or alpha < 0 or si32):
        return f"{act.op_type} after the Conv is not a clamp or a LeakyRelu with alpha ≥ 0"
    x, w = b.int_of(cv.input[0]), b.weight(cv.input[1], unsigned=si32)
    with b.lowering(*(n.name for n in nodes)):
        if si32:
            y = b.define_int(out, accumulator(b, x, w))
            acc = b.fresh(f"{out}_preact")
            _conv_integer(b, cv, x, w, acc)
            _clamp_int32(b, acc, y, bounds, act.name)
            return None
        bias = _bias(b, cv.input[2] if len(cv.input) > 2 else None, x, w)
        if alpha is not None and alpha not in (0.0, 1.0):
            y = b.define_int(out, enc_out)
            scaled = Encoding("uint8", float(np.float32(enc_out.scale) / np.float32(alpha)), enc_out.zero_point)
            v, av = b.define_int(cv.output[0], enc_out, "_preact"), b.define_int(out, scaled, "_scaled")
            _qlinear_conv(b, cv, x, w, bias, v, cv.name)
            _qlinear_conv(b, cv, x, w, bias, av, b.fresh(f"{cv.name}_times_alpha"))
            b.emit("Max" if alpha < 1 else "Min", [v.name, av.name], [y.name], act.name)
        else:
            lo, hi = bounds if bounds is not None else ((0.0, None) if alpha == 0.0 else (None, None))
            y = b.define_int(out, enc_out)
            pre = b.define_int(cv.output[0], enc_out, "_preact")
            _qlinear_conv(b, cv, x, w, bias, pre, cv.name)
            emit_clamp(b, pre, y, lo, hi, name=act.name)
    return None


def conv_add(b: Builder, nodes: Sequence[onnx.NodeProto], name: str) -> str | None:
    """Conv + residual Add on QLinearConv's fast kernel: the conv requantized twice, one picked.

        fine = QLinearConv at s_y / 4      (±⅛ step of y; clips where |conv| > T_y / 4)
        wide = QLinearConv at s_y + s_r    (never clips a value that matters: |conv| > T_y + T_r
                                            makes |conv + r| > T_y, saturated anyway)
        y    = QLinearAdd(fine, r) where fine did not clip (codes 1…254), else QLinearAdd(wide, r)
               (the choice as uint8 arithmetic, `_select`)

    The conv is rounded once more before the Add than in the fake-quant model. Measured on
    residual blocks against the calibrated model: every output within one step; one step off on
    7 % of the elements with the fine path at s_y / 4 (25 % at s_y, 12 % at s_y / 2, 12–30 % at
    s_y / 8 … / 16, where the wide path takes over). The exact alternative — the residual added
    to ConvInteger's int32 accumulator, float epilogue — equals the fake quant to float rounding,
    but onnxruntime's ConvInteger is slow and single-threaded: on a 10-conv 224×224 net with 6
    residual adds (1 thread) float 15.8 ms, exact 12.9 ms, this form 9.5 ms; at 2 threads the
    exact form was slower than float. See docs/formats.md.
    """
    cv, add = nodes[0], nodes[-1]
    refusal = _conv_refusal(b, cv) or (None if len(nodes) == 2 and add.op_type == "Add" else "not Conv+Add")
    if refusal:
        return refusal
    if _si32(b, nodes):
        return "an si32 Conv+Add output"
    residual = next(i for i in add.input if i != cv.output[0])
    out = add.output[0]
    enc_out, enc_r = b.required(out, f"output of '{name}'"), b.encoding_of(residual)
    if enc_r is None:
        b.int_of(residual)  # names the planner bug
    if not (_uint8(enc_out) and _uint8(enc_r)):
        return "int16 / per-channel residual or output"
    x, w, r = b.int_of(cv.input[0]), b.weight(cv.input[1]), b.int_of(residual)
    bias = _bias(b, cv.input[2] if len(cv.input) > 2 else None, x, w)
    fine_enc = Encoding("uint8", float(np.float32(enc_out.scale) / np.float32(FINE)), enc_out.zero_point)
    wide_enc = Encoding("uint8", float(np.float32(enc_out.scale) + np.float32(enc_r.scale)), enc_out.zero_point)
    with b.lowering(*(n.name for n in nodes)):
        fine, wide = b.define_int(cv.output[0], fine_enc, "_fine"), b.define_int(cv.output[0], wide_enc, "_wide")
        _qlinear_conv(b, cv, x, w, bias, fine, cv.name)
        _qlinear_conv(b, cv, x, w, bias, wide, b.fresh(f"{cv.name}_wide"))
        y_fine, y_wide = b.define_int(out, enc_out, "_fine"), b.define_int(out, enc_out, "_wide")
        for c, y, node_name in ((fine, y_fine, add.name), (wide, y_wide, b.fresh(f"{add.name}_wide"))):
            b.emit("QLinearAdd", [c.name, c.scale, c.zero_point, r.name, r.scale, r.zero_point, y.scale,
                                  y.zero_point], [y.name], node_name, domain=MS)
        inside, kept = b.fresh(f"{fine.name}_inside"), b.fresh(f"{fine.name}_unclipped")
        b.emit("Clip", [fine.name, b.const(f"{fine.name}_lowest", np.array(fine_enc.qmin + 1, np.uint8)),
                        b.const(f"{fine.name}_highest", np.array(fine_enc.qmax - 1, np.uint8))], [inside])
        b.emit("Equal", [inside, fine.name], [kept])
        _select(b, kept, y_fine.name, y_wide.name, b.define_int(out, enc_out).name, b.fresh(f"{add.name}_select"))
    return None


def _select(b: Builder, condition: str, if_true: str, if_false: str, out: str, name: str) -> None:
    """out = condition ? if_true : if_false on uint8 codes.

    From opset 14 as wrapping uint8 arithmetic, if_false + m · (if_true − if_false) with m = 0 / 1:
    exact modulo 256, and onnxruntime's Where on uint8 is slow (250 µs on 1×64×56×56 where the
    Cast, Sub, Mul, Add take 54 µs; 7 µs vs 3.4 µs on digits' 1×16×16×16).
    """
    if b.opset < 14:  # no uint8 Sub / Mul / Add
        b.emit("Where", [condition, if_true, if_false], [out], name)
        return
    mask, diff, picked = (b.fresh(f"{out}_{s}") for s in ("mask", "difference", "picked"))
    b.emit("Cast", [condition], [mask], to=onnx.TensorProto.UINT8)
    b.emit("Sub", [if_true, if_false], [diff])
    b.emit("Mul", [diff, mask], [picked])
    b.emit("Add", [if_false, picked], [out], name)


def _clamp_int32(b: Builder, acc: str, y: QTensor, bounds: tuple[float | None, float | None], name: str) -> None:
    """Relu / Clip on an int32 accumulator: Max / Min with per-channel codes Q_c(lo), Q_c(hi)."""
    lo, hi = bounds
    rank = b.rank_of_int(y)
    current = acc
    for value, op in ((lo, "Max"), (hi, "Min")):
        if value is None:
            continue
        codes = y.enc.quantize(np.full(len(y.enc.scale), value, np.float32).reshape([1, -1] + [1] * (rank - 2)))
        nxt = b.fresh(f"{y.name}_{op.lower()}")
        b.emit(op, [current, b.const(f"{y.name}_{op.lower()}_bound", codes.astype(np.int32))], [nxt])
        current = nxt
    b.emit("Identity", [current], [y.name], name)


def gemm(b: Builder, node: onnx.NodeProto) -> str | None:
    a, w = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or (c and attr(node, "beta", 1.0) != 1.0):
        return "Gemm with transA or alpha/beta ≠ 1"
    if not _uint8(b.encoding_of(a)) or w not in b.plan.weights or not b.is_constant(w):
        return "not an 8-bit activation times a planned constant weight"
    if c and (not b.is_constant(c) or b.constant_value(c).squeeze().ndim > 1):
        return "a non-constant or 2-D Gemm bias"
    if c and c not in b.plan.biases:  # e.g. a one-element C broadcast over the N outputs: the ptq model
        return "a Gemm bias the plan keeps float"  # adds it in float, so the node is emulated
    out, si32 = node.output[0], _si32(b, [node])
    enc_out = None if si32 else b.required(out, f"output of Gemm '{node.name}'")
    if not si32 and not _uint8(enc_out):
        return "int16 / per-channel output"
    trans_b = int(attr(node, "transB", 0))
    x = b.int_of(a)
    with b.lowering(node.name):
        if si32:
            qw = b.weight(w, transpose=bool(trans_b))
            _matmul_integer(b, node, x, qw, c, out)
        else:
            qw = b.weight(w)
            bias = _bias(b, c, x, qw)
            y = b.define_int(out, enc_out)
            b.emit("QGemm", [x.name, x.scale, x.zero_point, qw.name, qw.scale, qw.zero_point, bias, y.scale,
                             y.zero_point], [y.name], node.name, domain=MS, transB=trans_b)
    return None


def matmul(b: Builder, node: onnx.NodeProto) -> str | None:
    a, w = node.input[0], node.input[1]
    if not _uint8(b.encoding_of(a)):
        return "the input is not an 8-bit per-tensor activation"
    out, si32 = node.output[0], _si32(b, [node])
    enc_out = None if si32 else b.required(out, f"output of MatMul '{node.name}'")
    if not si32 and not _uint8(enc_out):
        return "int16 / per-channel output"
    constant_w = b.is_constant(w)
    if constant_w and (w not in b.plan.weights or b.constant_value(w).ndim != 2):
        return "the constant operand is not a planned 2-D weight"
    if not constant_w and (si32 or not _uint8(b.encoding_of(w))):
        return "the second operand is not an 8-bit per-tensor activation"
    x = b.int_of(a)
    with b.lowering(node.name):
        if si32:
            _matmul_integer(b, node, x, b.weight(w), "", out)
            return None
        qw = b.weight(w) if constant_w else b.int_of(w)
        y = b.define_int(out, enc_out)
        b.emit("QLinearMatMul", [x.name, x.scale, x.zero_point, qw.name, qw.scale, qw.zero_point, y.scale,
                                 y.zero_point], [y.name], node.name)
    return None


def _matmul_integer(b: Builder, node: onnx.NodeProto, x: QTensor, w: QWeight, c: str, out: str) -> None:
    """si32 Gemm / MatMul: MatMulInteger (B as K×N int8) + int32 bias per column."""
    y = b.define_int(out, accumulator(b, x, w, axis=-1))
    acc = y.name if not c else b.fresh(f"{out}_accumulator")
    b.emit("MatMulInteger", [x.name, w.name, x.zero_point], [acc], node.name)
    if c:
        b.emit("Add", [acc, _bias(b, c, x, w)], [y.name])
