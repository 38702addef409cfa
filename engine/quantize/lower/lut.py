"""Lookup-table ops (hb_compile's HzLut): one elementwise function of one quantized tensor.

    table       = Q_y(f(DQ_x(code))) for every code          (engine.quantize.luts)
    y_quantized = GatherElements(table, Cast<int32>(x_quantized) [+ 32768 for int16])
                  or, where onnxruntime's float kernels are faster (FAST_FLOAT, short chains),
                  QuantizeLinear(f(DequantizeLinear(x_quantized))) — the same value at every code

Covers Sigmoid, Tanh, HardSigmoid, HardSwish, Exp, Gelu, Mish, Softplus, Elu, LeakyRelu, … alone,
activation fusion groups (SiLU `x·Sigmoid(x)`, GELU's erf / tanh formulas, Mish), arithmetic with a
scalar constant (`x·0.5`, `x+3`), and Relu / Clip whose output has another scale. The table is
exact: the `.bc` gives the fake-quant model's value at every code. int16 inputs use a 65 536-entry
table. Not a table: a per-channel constant operand, or a per-channel encoding (those are emulated).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from engine.quantize import luts
from engine.quantize.lower.builder import MS, Builder, QTensor, attr, planner_bug
from engine.quantize.lower.emulate import float_kernels
from engine.quantize.lower.encoding import Encoding

# Executed as DequantizeLinear → float op(s) → QuantizeLinear when that is cheaper than the table:
# measured on 1×64×112×112 (onnxruntime, 1 thread) float kernels vs GatherElements table —
# Sigmoid 0.56 / 1.10 ms (fused into QLinearSigmoid), HardSwish 0.82 / 1.09, Tanh 0.82 / 1.15,
# SiLU 1.06 / 1.07; but GELU (erf form) 1.79 / 1.09, GELU (tanh form) 1.87 / 1.06, Mish
# 14.1 / 1.07 (Softplus is slow). Both give the table's values: Q_y(f(DQ_x(x))) code by code.
# A table of a 4-D tensor looks its codes up in NHWC order (`Builder.lookup`), so onnxruntime's
# NHWC integer convolutions around it need no Transpose; measured on PP-OCRv4 det (24 groups
# HardSwish · w + b, 3 nodes each), whole .hbm: tables 40.9 ms (1 thread) / 102 ms (2 threads,
# loaded machine), the same groups as float kernels 42.1 / 113 ms.
FAST_FLOAT = frozenset({"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Relu", "Clip", "LeakyRelu", "Mul", "Add",
                        "Sub", "Div", "Neg", "Abs", "Identity"})
FLOAT_CHAIN = 2  # longest chain of FAST_FLOAT ops still run as float kernels


def lut_node(b: Builder, node: onnx.NodeProto) -> str | None:
    return tabulate(b, [node], node.name)


def lut_group(b: Builder, nodes: Sequence[onnx.NodeProto], name: str) -> str | None:
    return tabulate(b, nodes, name)


def tabulate(b: Builder, nodes: Sequence[onnx.NodeProto], name: str) -> str | None:
    """Replace `nodes` (elementwise, one activation input) by one table lookup named `name`."""
    inside = {o for n in nodes for o in n.output if o}
    sources, constants = [], []
    for n in nodes:
        if n.op_type not in luts.ELEMENTWISE or n.domain not in ("", "ai.onnx"):
            return f"{n.op_type} is not an elementwise function of one tensor"
        for i in n.input:
            if not i or i in inside:
                continue
            value = b.constant_value(i)
            if value is None:
                sources.append(i)
            elif value.size == 1:
                enc = b.planned(i)  # a constant the plan quantizes reads as its codes do
                value = value if enc is None else enc.dequantize(enc.quantize(value.astype(np.float32)))
                constants.append(numpy_helper.from_array(np.asarray(value), i))
            else:
                return f"constant '{i}' of shape {list(value.shape)} is not a scalar"
    sources = list(dict.fromkeys(sources))
    if len(sources) != 1:
        return f"{len(sources)} activation inputs (a table needs exactly one)"
    source, output = sources[0], nodes[-1].output[0]
    enc_in = b.int_of(source).enc  # raises (planner bug) when the plan does not quantize it
    enc_out = b.planned(output) or (enc_in if nodes[-1].op_type in ("Relu", "Clip") else None)
    if enc_out is None:
        raise planner_bug(f"output '{output}' of '{name}' (on BPU) has no quantization in the plan")
    if enc_in.per_channel or enc_out.per_channel or enc_in.dtype not in ("uint8", "int16") \
            or enc_out.dtype not in ("uint8", "int16"):
        return "a table needs per-tensor uint8/int16 encodings"
    if [n.op_type for n in nodes] == ["HardSwish"] and enc_in.dtype == enc_out.dtype == "uint8" \
            and not _loaded(b, source, output) and _gate_offsets(enc_in)[2] <= GATE_EPSILON:
        with b.lowering(nodes[0].name):
            hardswish_product(b, b.int_of(source), b.define_int(output, enc_out), name)
        return None

    def table() -> np.ndarray:
        fn = luts.elementwise_function(nodes, source, output, list({c.name: c for c in constants}.values()),
                                       b.opsets)
        return luts.build_table(fn, enc_in, enc_out)

    if [n.op_type for n in nodes] == ["HardSigmoid"] and enc_in.dtype == enc_out.dtype == "uint8":
        alpha, beta = float(attr(nodes[0], "alpha", 0.2)), float(attr(nodes[0], "beta", 0.5))
        if affine_lookup(b, b.int_of(source), output, enc_out, alpha, beta, table(), name, nodes[0].name):
            return None
    if len(nodes) <= FLOAT_CHAIN and all(n.op_type in FAST_FLOAT for n in nodes):
        float_kernels(b, nodes, {output: enc_out}, name=name)
        return None
    x = b.int_of(source)
    with b.lowering(*(n.name for n in nodes)):
        b.lookup(x, table(), b.define_int(output, enc_out), name=name)
    return None


GATE_SCALE = float(np.float32(6.0 / 255.0))  # the gate's codes: HardSigmoid(x) · 255 = x · 42.5 + 127.5
GATE_VALUES = Encoding("uint8", float(np.float32(1.0 / 255.0)), 0)  # … read back as h / 255
GATE_EPSILON = 0.05  # the gate's largest half-code miss |ε| (in gate codes) taken; more keeps the exact table


def hardswish_product(b: Builder, x: QTensor, y: QTensor, name: str) -> None:
    """HardSwish on uint8 codes as two of onnxruntime's integer kernels: a gate, then a product.

        h = QLinearLeakyRelu(x, alpha 1, input zero point z′, output 6/255 and z_h)   = sat(rne(x·42.5 + 127.5 + ε))
        y = QLinearMul(x, h read at scale 1/255, zero point 0)                        = Q_y(x · h/255)

    h/255 is HardSigmoid(x) = clip(x/6 + ½, 0, 1) rounded to 1/255: 0 from x = −3 down, 1 from x = 3
    up. The ½ in 127.5 is no zero point; z′ (the input's zero point shifted by d codes) and z_h = rne(127.5
    + 42.5·s_x·d) are the pair that leaves the smallest ε = z_h − 42.5·s_x·d − 127.5 (`_gate_offsets`), so
    the gate is unbiased: a fixed 128 made every gate ½⁄255 too high and flipped a held-out digit (top-1
    agreement 1.000 → 0.998). y is then Q_y(HardSwish(x) + e), |e| ≤ |x|·(½ + |ε|)/255 (only where
    |x| < 3): with |ε| ≤ GATE_EPSILON (0.05; a tiny input scale, where no shift gets that close, keeps
    the table) within one output step of the table (the fake-quant value), equal to it on all but 1–5 of
    the 256 codes of PP-OCR cls's and digits' HardSwish. Two kernels where DequantizeLinear → HardSigmoid → Mul
    → QuantizeLinear were five (onnxruntime copies the DequantizeLinear for its two readers), and
    onnxruntime's 256-entry table and vectorised multiply instead of float passes. Measured (1 thread,
    interleaved, per-inference CPU time, the whole `.hbm`): PP-OCR cls (18 HardSwish) 1032 → 916 µs
    and 1065 → 945 µs in two runs, digits 55.0 → 53.8 µs. Accuracy (bench_accuracy, held-out): cls cosine 0.9982 → 0.9984, digits
    top-1 still equal to float; det and rec have no plain uint8 HardSwish (theirs are affine groups).
    """
    input_zero_point, gate_zero_point, _ = _gate_offsets(x.enc)
    gate = b.define_int(f"{y.name}_gate", Encoding("uint8", GATE_SCALE, gate_zero_point), suffix="")
    shifted = b.const(f"{gate.name}_input_zero_point", np.array(input_zero_point, np.uint8))
    b.emit("QLinearLeakyRelu", [x.name, x.scale, shifted, gate.scale, gate.zero_point], [gate.name],
           domain=MS, alpha=1.0)
    h = b.params(gate.name, GATE_VALUES)
    b.emit("QLinearMul", [x.name, x.scale, x.zero_point, h.name, h.scale, h.zero_point, y.scale, y.zero_point],
           [y.name], name, domain=MS)


def _loaded(b: Builder, *tensors: str) -> bool:
    """Whether a threshold of `tensors` came from a QDQ model (calibration_type load). There the user asked
    for that model's arithmetic, and onnxruntime runs a QDQ HardSwish as DequantizeLinear → HardSigmoid →
    Mul → QuantizeLinear, which the table (float kernels) reproduces at every code and the gate and product
    only within a step: loaded from onnxruntime's QDQ PP-OCR cls, the `.bc`'s output cosine against that
    model on 8 held-out lines fell from > 0.999 to 0.9986 (one line 0.9887)."""
    return any(str(getattr(b.plan.acts.get(t), "method", "")).startswith("load") for t in tensors)


def _gate_offsets(enc: Encoding) -> tuple[int, int, float]:
    """(z′, z_h, |ε|) with z_h − 42.5·s_x·(z′ − z_x) closest to 127.5 (`_shifts`): the gate's half-code offset, and
    how far from 127.5 the best pair still is."""
    per_code = float(np.float32(enc.scale) / np.float32(GATE_SCALE))
    miss, input_zero_point, gate_zero_point = (_shifts(enc.zero_point, per_code, 127.5) or [(1.0, enc.zero_point, 128)])[0]
    return input_zero_point, gate_zero_point, miss


def affine_lookup(b: Builder, x: QTensor, output: str, enc_out: Encoding, slope: float, offset: float,
                  table: np.ndarray, name: str, owner: str) -> bool:
    """A table of clip(slope·x + offset, …) as one QLinearLeakyRelu (alpha 1), where that kernel's own
    table is this one at every code; False (nothing emitted) where none is.

    QLinearLeakyRelu with alpha 1 is a requantization through onnxruntime's 256-entry table:
    sat(rne(s_in·(code − z_in) / s_out) + z_out). With s_in = s_x, s_out = s_y / slope it has the
    function's slope; its offset z_out − slope·s_x·(z_in − z_x)/s_y is the function's offset / s_y + z_y
    only up to the fractional part, which the shift of the input zero point z_in moves (`_shifts`, the
    closest first). Its saturation at codes 0 and 255 is the function's clip where the output encoding
    puts 0 at code 0 (HardSigmoid's [0, 1] range gets such an offset encoding) or the input never
    reaches the clip. Kept only when onnxruntime's table equals `table` on all 256 codes, so the `.bc`'s
    values do not change: one kernel where DequantizeLinear → HardSigmoid → QuantizeLinear were three
    (PP-OCR cls: the nine squeeze-excitation gates, 8 of 9 exact).
    """
    if enc_out.per_channel or x.enc.per_channel or slope <= 0:
        return False
    per_code = float(np.float32(x.enc.scale) * np.float32(slope) / np.float32(enc_out.scale))
    target = offset / float(np.float32(enc_out.scale)) + enc_out.zero_point
    out_scale = float(np.float32(enc_out.scale) / np.float32(slope))
    for _, input_zero_point, out_zero_point in _shifts(x.enc.zero_point, per_code, target)[:LOOKUP_TRIES]:
        theirs = luts.onnxruntime_table("QLinearLeakyRelu", Encoding("uint8", x.enc.scale, input_zero_point),
                                        Encoding("uint8", out_scale, out_zero_point), alpha=1.0)
        if theirs is not None and np.array_equal(theirs, table):
            with b.lowering(owner):
                y = b.define_int(output, enc_out)
                b.emit("QLinearLeakyRelu", [x.name, x.scale, b.const(f"{y.name}_input_zero_point",
                                                                     np.array(input_zero_point, np.uint8)),
                                            b.const(f"{y.name}_table_scale", np.array(out_scale, np.float32)),
                                            b.const(f"{y.name}_table_zero_point", np.array(out_zero_point, np.uint8))],
                       [y.name], name, domain=MS, alpha=1.0)
            return True
    return False


LOOKUP_TRIES = 8  # input zero point shifts tried per table, closest offset first


def _shifts(zero_point: int, per_code: float, target: float) -> list[tuple[float, int, int]]:
    """(miss, z_in, z_out) with z_out − per_code·(z_in − zero_point) near `target` (miss: how far), closest first."""
    found = []
    for d in range(-zero_point, 256 - zero_point):
        out_zero_point = int(np.rint(target + per_code * d))
        if 0 <= out_zero_point <= 255:
            found.append((abs(out_zero_point - per_code * d - target), zero_point + d, out_zero_point))
    return sorted(found)
