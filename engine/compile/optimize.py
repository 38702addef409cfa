"""Ahead-of-time optimization of the integer program by `optimize_level`, keeping results bit-identical.

The `.hbm` must give the `.bc`'s outputs bit for bit (hb_verifier's consistency mode), so a level
may only apply rewrites that cannot change a single output bit:

- **O0** — the program exactly as the `.bc` holds it.
- **O1** — our own rewrites, exact by construction:
  ``remove_identity`` (an Identity's readers read its input), ``fold_dq_q`` (DequantizeLinear
  followed by a QuantizeLinear with the same scale, zero point, dtype and axis is the identity on
  codes: for a code q, v = (q − z)·s in float32, and v / s = (q − z)(1 + ε) with |ε| < 2⁻²²,
  so for |q − z| ≤ 65535 the error stays far below ½ and round-half-even returns q − z exactly;
  saturation cannot trigger since q was in range), ``dedupe_initializers`` (byte-identical
  constants shared), ``remove_dead`` (nodes and constants nothing reads).
- **O2** — O1, then ``per_channel_scaling``: a 1×1 QLinearConv whose weight is diagonal (each
  output channel reads only its own input channel — the input conversion of an RGB/BGR/gray
  image, `HZ_PREPROCESS_FOR_<input>`) is an affine map per channel, written as elementwise float
  ops that repeat onnxruntime's integer arithmetic exactly: with d_c = w_cc − zw_c, bias b_c and
  the kernel's multiplier M_c = (s_x · s_w[c]) / s_y in float32,

      y = QuantizeLinear(((x − z_x) · d_c + b_c) · M_c, scale 1, zero point z_y)

  where (x − z_x)·d_c + b_c is the int32 accumulator held exactly in float32 (|acc| < 2²⁴), the
  product by M_c is the kernel's one float32 rounding, and QuantizeLinear rounds half to even and
  saturates as the kernel does. Each rewritten node is checked on every input code of every
  channel before it is kept (onnxruntime's 1×1 kernel with 3 channels took 5.9 ms on a 640×640
  image where the four elementwise ops take ~0.5 ms). Then ``narrow_conv_in_float``: a
  QLinearConv (ungrouped) reading at most `NARROW_INPUT` channels (the first conv on a gray or
  RGB image) as a float Conv of the same integers,

      acc = Cast<int32>(Conv(DequantizeLinear(x, 1, z_x), w − z_w, b))
      y   = QuantizeLinear(DequantizeLinear(acc, M, axis 1), scale 1, zero point z_y)

  exact because every product and partial sum is an integer below 2²⁴ (checked per output
  channel: 255 · Σ|w − z_w| + |b|), whatever order the float kernel sums in, and
  DequantizeLinear of the int32 accumulator is the kernel's float(acc) · M_c. (A float Mul by
  M_c would be folded into the weights by onnxruntime's ConvMulFusion at run time, and a
  QuantizeLinear right after the Conv turned back into its own QLinearConv.) onnxruntime's float
  kernels handle 1–3 input channels far better than its integer ones (measured at 1 thread:
  digits' 1→8 3×3 conv on 32×32 31 → 15 µs; PP-OCRv4 det's 3→16 3×3/2 stem on 640×640
  3.0 → 2.0 ms). Where a float32 divisor S_c of the accumulator gives the same codes, the
  requantization is one QuantizeLinear(acc, S, z_y, axis 1) instead (`_divided_requantization`:
  checked on every accumulator near a rounding tie, where alone the two can differ). Each rewritten
  node is compared with the QLinearConv on random inputs before it is kept. Then onnxruntime's basic-level graph optimization applied offline (constant
  folding with onnxruntime's own CPU kernels — the same kernels that would compute those values
  at run time, so the same bits — and redundant-node elimination), with every basic rewrite that
  re-associates float arithmetic disabled (Conv/MatMul + Add/Mul/BatchNormalization fusions,
  Div/Mul, Gemm sum/transpose fusions, Q/DQ pair removal). The result is then run against the O0
  program on seeded random inputs of every input; if any output differs in any bit, the O1
  program is kept and the result says so (`OptimizeResult.fallback`).
  Then the kernel-count rewrites, each checked against the nodes it replaces before it is kept
  (exhaustively where the input is one 8/16-bit code, on seeded random inputs otherwise):
  ``per_channel_scaling`` in its compact form DequantizeLinear(x, d·M) [→ Add b·M] → QuantizeLinear
  (`_compact_scaling_nodes`), the narrow conv's Relu moved before its multiplier (`_relu_after`),
  ``round_instead_of_requantize`` (the two meeting: Q(v, 1, z) → DQ(·, 1, z) as Round(v) where v cannot saturate),
  ``merge_sibling_convs``, ``bias_as_zero_point``, ``index_tables_directly``, ``untranspose_float_side_tables``,
  ``dequantized_tables``, ``si32_head_as_qgemm``, and the kernel swaps for onnxruntime's slow kernels: ``depthwise_conv_in_float``
  (5×5 depthwise convs), ``nhwc_max_pool`` and ``silu_as_quick_gelu``; after onnxruntime's folding (it
  needs the weights as constants) ``conv_transpose_as_matmul`` — their docstrings say why each
  is exact. docs/formats.md lists them.
- **O3** (hb_mapper generation) is O2.

Measured (tests/unit/compile/test_hbm.py, generated integer conv nets incl. a CPU island and
lookup tables, NV12 input conversion): O0, O1 and O2 bit-identical to the `.bc`.

Each rewrite's check answer (and the float conv's divisor search) is kept in this process by the digest
of exactly what it reads (`_checked`: the two check programs' bytes and their inputs, or the conv's own
constants and names): a calibration change moves a few thresholds and leaves most rewrites' nodes and
constants as they were, so only the moved ones are checked in onnxruntime again (PP-OCRv4 det, 1–13 of
134 thresholds moved: O2 besides the whole-program check 0.45–0.48 → 0.15–0.18 CPU s on a loaded
machine). The whole-program check (0.25–0.45 CPU s there: two sessions, four runs of the 640×640
program) stays as it is: O0 and O2 on the same seeded inputs every time, the safety net of every
rewrite here and of onnxruntime's own.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from engine.compile.program import NODE_MAP, json_metadata, set_metadata
from engine.passes.graph import used_names
from engine.pipeline.recent import Recent

LEVELS = ("O0", "O1", "O2", "O3")
# onnxruntime basic-level rewrites that change float rounding (unknown names are ignored by onnxruntime)
VALUE_CHANGING_REWRITES = (
    "ConvAddFusion", "ConvMulFusion", "ConvBNFusion", "MatmulBNFusion", "DivMulFusion", "GemmSumFusion",
    "GemmTransposeFusion", "MatMulAddFusion", "DoubleQDQPairsRemover", "QDQFinalCleanupTransformer",
    "WeightBiasQuantization", "QDQS8ToU8Transformer", "FuseReluClip",
)
CHECK_SEEDS = (0, 1)


@dataclass(frozen=True)
class OptimizeResult:
    program: onnx.ModelProto
    level: str  # the level asked for
    rewrites: dict[str, int] = field(default_factory=dict)  # rewrite → how many times it applied
    fallback: str = ""  # why O2 fell back to O1 (empty: it did not)
    checked: bool = False  # outputs compared bit for bit against O0 on seeded inputs

    @property
    def nodes(self) -> int:
        return len(self.program.graph.node)


def optimize_program(program: onnx.ModelProto, level: str) -> OptimizeResult:
    """The program at `level` (O0–O3); the input model is not modified."""
    if level not in LEVELS:
        raise ValueError(f"optimize_level must be one of {LEVELS}, got {level!r}")
    model = onnx.ModelProto()
    model.CopyFrom(program)
    if level == "O0":
        return OptimizeResult(model, level)
    rewrites = {"remove_identity": remove_identity(model), "fold_dq_q": fold_dq_q(model),
                "dedupe_initializers": dedupe_initializers(model), "remove_dead": remove_dead(model)}
    if level == "O1":
        return OptimizeResult(model, level, rewrites)
    o2 = onnx.ModelProto()
    o2.CopyFrom(model)
    o2_rewrites = {"per_channel_scaling": per_channel_scaling(o2), "narrow_conv_in_float": narrow_conv_in_float(o2),
                   "depthwise_conv_in_float": depthwise_conv_in_float(o2),
                   "round_instead_of_requantize": round_instead_of_requantize(o2),
                   "merge_sibling_convs": merge_sibling_convs(o2), "bias_as_zero_point": bias_as_zero_point(o2),
                   "index_tables_directly": index_tables_directly(o2),
                   "untranspose_float_side_tables": untranspose_float_side_tables(o2),
                   "dequantized_tables": dequantized_tables(o2),
                   "si32_head_as_qgemm": si32_head_as_qgemm(o2), "nhwc_max_pool": nhwc_max_pool(o2),
                   "silu_as_quick_gelu": silu_as_quick_gelu(o2)}
    if any(o2_rewrites.values()):
        remove_dead(o2)
    before = len(o2.graph.node)
    optimized, why = _ort_basic(o2)
    if optimized is None:
        return OptimizeResult(model, level, rewrites, fallback=why)
    folded = before - len(optimized.graph.node)
    o2_rewrites["conv_transpose_as_matmul"] = conv_transpose_as_matmul(optimized)  # needs the folded weights
    if o2_rewrites["conv_transpose_as_matmul"]:
        remove_dead(optimized)
    same, why = bit_identical(program, optimized)
    if not same:
        return OptimizeResult(model, level, rewrites, fallback=why, checked=True)
    rewrites.update(o2_rewrites)
    rewrites["onnxruntime_basic"] = folded
    return OptimizeResult(optimized, level, rewrites, checked=True)


# ------------------------------------------------------------------------------- exact rewrites

def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def _rename_input(g: onnx.GraphProto, old: str, new: str) -> None:
    for n in g.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def remove_identity(model: onnx.ModelProto) -> int:
    """Identity nodes whose output is not a graph output: readers read the input instead."""
    g = model.graph
    outputs = {o.name for o in g.output}
    removed = 0
    for node in list(g.node):
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            _rename_input(g, node.output[0], node.input[0])
            g.node.remove(node)
            removed += 1
    return removed


def _constant(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def fold_dq_q(model: onnx.ModelProto) -> int:
    """DequantizeLinear → QuantizeLinear with identical parameters is the identity on codes."""
    g = model.graph
    outputs = {o.name for o in g.output}
    folded = 0
    consumers = None  # of the graph as it is now: taken again after a fold rewires it
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.output[0] in outputs:
            continue
        consumers = consumers if consumers is not None else _consumers(g)
        readers = consumers.get(dq.output[0], [])
        if not readers or any(r.op_type != "QuantizeLinear" or r.domain != dq.domain or len(r.input) < 3
                              for r in readers):
            continue
        s, z = _constant(g, dq.input[1]), _constant(g, dq.input[2])
        if s is None or z is None or z.dtype not in (np.uint8, np.int8, np.int16, np.uint16):
            continue
        ok = True
        for q in readers:
            qs, qz = _constant(g, q.input[1]), _constant(g, q.input[2])
            if qs is None or qz is None or qz.dtype != z.dtype or qs.shape != s.shape or qz.shape != z.shape \
                    or not np.array_equal(qs, s) or not np.array_equal(qz, z) \
                    or (s.ndim and _axis(q) != _axis(dq)) or q.output[0] in outputs:
                ok = False
        if not ok:
            continue
        for q in readers:
            _rename_input(g, q.output[0], dq.input[0])
            g.node.remove(q)
        g.node.remove(dq)
        consumers = None
        folded += 1
    return folded


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Byte-identical initializers (same dtype, dims, data) become one."""
    g = model.graph
    keep: dict[tuple, str] = {}
    inputs = {i.name for i in g.input}
    renamed: dict[str, str] = {}
    for t in g.initializer:
        if t.name in inputs:
            continue
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in keep:
            renamed[t.name] = keep[key]
        else:
            keep[key] = t.name
    if not renamed:
        return 0
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in renamed:
                n.input[k] = renamed[i]
    kept = [t for t in g.initializer if t.name not in renamed]
    del g.initializer[:]
    g.initializer.extend(kept)
    return len(renamed)


def remove_dead(model: onnx.ModelProto) -> int:
    """Nodes none of whose outputs is read (transitively) by a graph output; unused initializers."""
    g = model.graph
    needed = {o.name for o in g.output}
    alive: list[onnx.NodeProto] = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output if o):
            alive.append(node)
            needed.update(used_names(node))
    removed = len(g.node) - len(alive)
    if removed:
        del g.node[:]
        g.node.extend(reversed(alive))
    inits = [t for t in g.initializer if t.name in needed]
    removed_inits = len(g.initializer) - len(inits)
    if removed_inits:
        del g.initializer[:]
        g.initializer.extend(inits)
    return removed + removed_inits


# ------------------------------------------------------------------ verified kernel rewrites (O2)

@dataclass(frozen=True)
class _Scaling:
    """A diagonal 1×1 QLinearConv as per-channel integer constants (see `per_channel_scaling`)."""

    x_zero_point: np.ndarray  # scalar, the input's dtype
    d: np.ndarray  # float32 [C]: w_cc − zw_c
    bias: np.ndarray  # float32 [C]: int32 bias codes (0 without a bias)
    multiplier: np.ndarray  # float32 [C]: (s_x · s_w[c]) / s_y, as onnxruntime computes it
    y_zero_point: np.ndarray  # scalar, the output's dtype


def per_channel_scaling(model: onnx.ModelProto) -> int:
    """Diagonal 1×1 QLinearConvs → DequantizeLinear · d → + b → · M → QuantizeLinear (module docstring),
    each kept only if it gives the conv's output code for every input code of every channel."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rewritten = 0
    for node in list(g.node):
        scaling = _diagonal_scaling(node, inits)
        if scaling is None:
            continue
        compact = _compact_scaling_nodes(node, scaling)
        for replacement, constants in ([compact] if compact else []) + [_scaling_nodes(node, scaling)]:
            if _same_codes(node, replacement, constants, inits, len(scaling.d)):
                break
        else:
            continue
        _splice(model, node, replacement, constants)
        rewritten += 1
    return rewritten


def _splice(model: onnx.ModelProto, node: onnx.NodeProto, replacement: list[onnx.NodeProto],
            constants: list[onnx.TensorProto]) -> None:
    """`replacement` (its last node keeps `node`'s name) in `node`'s place; in ``hbcompile.node_map``
    the new nodes implement the float node(s) `node` implemented, so partitions and the per-layer
    estimate of the `.hbm` still attribute them."""
    g = model.graph
    index = list(g.node).index(node)
    g.node.remove(node)
    for k, new in enumerate(replacement):
        g.node.insert(index + k, new)
    g.initializer.extend(constants)
    node_map = json_metadata(model, NODE_MAP, None)
    if node_map:
        added = [n.name for n in replacement if n.name != node.name]
        for progs in node_map.values():
            if node.name in progs:
                progs[progs.index(node.name):progs.index(node.name)] = added
        set_metadata(model, NODE_MAP, node_map)


def _diagonal_scaling(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> _Scaling | None:
    if node.op_type != "QLinearConv" or node.domain not in ("", "ai.onnx") or len(node.input) < 8:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or any(v != 1 for v in attrs.get("strides", [])) \
            or any(v != 0 for v in attrs.get("pads", [])) or any(v != 1 for v in attrs.get("dilations", [])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    names = list(node.input[1:8]) + ([node.input[8]] if len(node.input) > 8 and node.input[8] else [])
    if not all(n in inits for n in names):
        return None
    xs, xz, w, ws, wz, ys, yz = (numpy_helper.to_array(inits[n]) for n in node.input[1:8])
    if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[2:] != (1, 1) or xs.size != 1 or xz.size != 1 \
            or ys.size != 1 or yz.size != 1:
        return None
    c = w.shape[0]
    wz_c = np.broadcast_to(wz.reshape(-1), (c,)).astype(np.int64)
    d = w[:, :, 0, 0].astype(np.int64) - wz_c[:, None]
    if np.count_nonzero(d - np.diag(np.diag(d))):
        return None  # channels mix: a real convolution
    bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.int64) if len(node.input) > 8 and node.input[8] \
        else np.zeros(c, np.int64)
    span = _code_span(xz)
    if np.any(span * np.abs(np.diag(d)) + np.abs(bias) >= 2 ** 24):
        return None  # the accumulator would not be exact in float32
    ws_c = np.broadcast_to(ws.reshape(-1).astype(np.float32), (c,))
    multiplier = (np.float32(xs.reshape(())) * ws_c) / np.float32(ys.reshape(()))
    return _Scaling(xz.reshape(()), np.diag(d).astype(np.float32), bias.astype(np.float32),
                    multiplier.astype(np.float32), yz.reshape(()))


def _scaling_nodes(node: onnx.NodeProto, s: _Scaling) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The elementwise form; per-channel constants as [1, C, 1, 1], or scalars when all channels agree."""
    from onnx import helper

    base = node.name or node.output[0]

    def per_channel(v: np.ndarray) -> np.ndarray:
        return np.asarray(v[0], np.float32) if np.all(v == v[0]) else v.reshape(1, -1, 1, 1)

    constants = {f"{base}_x_zero_point": np.asarray(s.x_zero_point), f"{base}_one": np.array(1.0, np.float32),
                 f"{base}_d": per_channel(s.d), f"{base}_bias": per_channel(s.bias),
                 f"{base}_multiplier": per_channel(s.multiplier), f"{base}_y_zero_point": np.asarray(s.y_zero_point)}
    acc, biased, scaled = (f"{base}_{t}" for t in ("accumulator", "biased", "requantized"))
    centered = f"{base}_centered"
    nodes = [helper.make_node("DequantizeLinear", [node.input[0], f"{base}_one", f"{base}_x_zero_point"], [centered],
                              name=f"{base}_centered"),
             helper.make_node("Mul", [centered, f"{base}_d"], [acc], name=f"{base}_weight"),
             helper.make_node("Add", [acc, f"{base}_bias"], [biased], name=f"{base}_bias"),
             helper.make_node("Mul", [biased, f"{base}_multiplier"], [scaled], name=f"{base}_multiplier"),
             helper.make_node("QuantizeLinear", [scaled, f"{base}_one", f"{base}_y_zero_point"], [node.output[0]],
                              name=node.name)]
    return nodes, [numpy_helper.from_array(v, k) for k, v in constants.items()]


def _compact_scaling_nodes(node: onnx.NodeProto, s: _Scaling, search: int = 8):
    """The scaling as DequantizeLinear(x, s'_c, z_x) [→ Add b'_c] → QuantizeLinear(1, z_y): d·M folded
    into the dequantization scale and b·M into one addend, with s'_c and b'_c picked among the float32
    neighbours of d_c·M_c and b_c·M_c so that every input code gives the code the four-op form gives
    (numpy float32 arithmetic is IEEE, as onnxruntime's; `_same_codes` then checks the chosen form
    against the conv in onnxruntime). None when no neighbour fits every code. Two elementwise passes
    fewer over the image (the digits input: 5 → 2 kernels)."""
    from onnx import helper

    info = np.iinfo(s.x_zero_point.dtype)
    out_info = np.iinfo(s.y_zero_point.dtype)
    k = (np.arange(int(info.min), int(info.max) + 1) - int(s.x_zero_point)).astype(np.float32)
    steps = np.arange(-search, search + 1)

    def codes(v: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(v).astype(np.int64) + int(s.y_zero_point), out_info.min, out_info.max)

    with_bias = bool(np.any(s.bias != 0))
    scales, addends = [], []
    with np.errstate(all="ignore"):
        for d, b, m in zip(s.d, s.bias, s.multiplier):
            want = codes((((k * d) + b) * m).astype(np.float32))
            s0 = np.float32(d * m)
            b0 = np.float32(b * m)
            found = None
            for sc in (s0 + steps * np.spacing(s0)).astype(np.float32)[np.argsort(np.abs(steps))]:
                scaled = (k * sc).astype(np.float32)
                if not with_bias:
                    if np.array_equal(codes(scaled), want):
                        found = (sc, np.float32(0))
                        break
                    continue
                for bc in (b0 + steps * np.spacing(b0)).astype(np.float32)[np.argsort(np.abs(steps))]:
                    if np.array_equal(codes((scaled + bc).astype(np.float32)), want):
                        found = (sc, bc)
                        break
                if found:
                    break
            if found is None or not np.isfinite(found[0]) or found[0] == 0:
                return None
            scales.append(found[0])
            addends.append(found[1])
    base = node.name or node.output[0]
    c = len(scales)
    scale = np.asarray(scales, np.float32)
    per_channel = bool(np.any(scale != scale[0]))
    constants = {f"{base}_scale": scale if per_channel else scale[:1].reshape(()),
                 f"{base}_x_zero_point": np.full(c, s.x_zero_point, s.x_zero_point.dtype) if per_channel
                 else np.asarray(s.x_zero_point),
                 f"{base}_one": np.array(1.0, np.float32), f"{base}_y_zero_point": np.asarray(s.y_zero_point)}
    scaled = f"{base}_requantized"
    nodes = [helper.make_node("DequantizeLinear", [node.input[0], f"{base}_scale", f"{base}_x_zero_point"],
                              [scaled if not with_bias else f"{base}_scaled"], name=f"{base}_scaled",
                              **({"axis": 1} if per_channel else {}))]
    if with_bias:
        addend = np.asarray(addends, np.float32)
        constants[f"{base}_addend"] = addend.reshape(1, -1, 1, 1) if np.any(addend != addend[0]) else addend[:1].reshape(())
        nodes.append(helper.make_node("Add", [f"{base}_scaled", f"{base}_addend"], [scaled], name=f"{base}_addend"))
    nodes.append(helper.make_node("QuantizeLinear", [scaled, f"{base}_one", f"{base}_y_zero_point"], [node.output[0]],
                                  name=node.name))
    return nodes, [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]


def _same_codes(node: onnx.NodeProto, replacement: list[onnx.NodeProto], constants: list[onnx.TensorProto],
                inits: Mapping[str, onnx.TensorProto], channels: int) -> bool:
    """The conv and its replacement on every input code of every channel (1×C×1×codes): equal?"""
    codes = _every_code(numpy_helper.to_array(inits[node.input[2]]).dtype, channels)
    return _same_bits([node], replacement, [codes], [node.output[0]], inits, constants)


def _every_code(dtype: np.dtype, channels: int) -> np.ndarray:
    """Every code of an integer `dtype` in each of `channels` channels, as a 1×C×1×codes input."""
    info = np.iinfo(dtype)
    return np.tile(np.arange(int(info.min), int(info.max) + 1), (channels, 1)).astype(dtype)[None, :, None, :]


def _same_bits(original: list[onnx.NodeProto], replacement: list[onnx.NodeProto], inputs: list[np.ndarray],
               outputs: list[str], inits: Mapping[str, onnx.TensorProto], constants: list[onnx.TensorProto],
               domains: tuple[str, ...] = (), values: bool = False) -> bool:
    """`original` and `replacement` (nodes reading `original[0].input[0]`) on each of `inputs`: the
    `outputs` equal bit for bit (`values`: equal float values, ±0 alike)? Every O2 rewrite is kept only
    if this holds; a pair onnxruntime refuses is not equal (the original stays). The answer is kept by
    the two programs' bytes and the inputs (`_checked`)."""
    from onnx import helper

    x_name, x0 = original[0].input[0], inputs[0]
    opsets = [helper.make_opsetid("", 19), *(helper.make_opsetid(d, 1) for d in domains)]
    programs = []
    for nodes in (original, replacement):
        used = {i for n in nodes for i in n.input}
        x_type = _TENSOR_TYPE.get(x0.dtype) or helper.np_dtype_to_tensor_dtype(x0.dtype)
        graph = helper.make_graph(nodes, "check", [helper.make_tensor_value_info(x_name, x_type,
                                                                                 list(x0.shape))],
                                  [helper.make_empty_tensor_value_info(o) for o in outputs],
                                  [t for t in [*inits.values(), *constants] if t.name in used])
        programs.append(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return _checked(("same values" if values else "same bits", programs, x_name, inputs, outputs), _runs_equal,
                    programs, x_name, inputs, outputs, values)


def _runs_equal(programs: list[bytes], x_name: str, inputs: list[np.ndarray], outputs: list[str],
                values: bool = False) -> bool:
    """Both `programs` on each of `inputs` (fed as `x_name`): the `outputs` equal bit for bit (`values`:
    equal values, ±0 alike)? A program onnxruntime refuses is not equal."""
    from engine.runtime.session import open_session

    sessions = []
    for program in programs:
        try:
            sessions.append(open_session(program))
        except Exception:  # onnxruntime's own exception types
            return False
    for x in inputs:
        a, b = (sess.run(outputs, {x_name: x}) for sess in sessions)
        if any(p.dtype != q.dtype or not (np.array_equal(p, q) if values else p.tobytes() == q.tobytes())
               for p, q in zip(a, b, strict=True)):
            return False
    return True


# ------------------------------------------------------------------ the checks' memo

CHECK_MEMO_SIZE = 4096  # answers kept (a bool or a few per-channel constants each; PP-OCRv4 det asks ~30 per program)
TABLE_MEMO_SIZE = 64  # dequantized tables kept (up to 256 KB each: 65 536 float32 entries)
_check_memo: Recent[str, tuple] = Recent(CHECK_MEMO_SIZE)
_table_memo: Recent[str, tuple] = Recent(TABLE_MEMO_SIZE)


def _digest(parts: object) -> str:
    """sha256 of `parts`: bytes, str, numbers, None, numpy arrays (dtype, shape, bytes), protobuf messages
    (type, bytes) and lists / tuples of them, each part length-prefixed so no two values feed the same bytes."""
    h = hashlib.sha256()

    def feed(tag: bytes, data: bytes) -> None:
        h.update(tag + len(data).to_bytes(8, "little") + data)

    def walk(p: object) -> None:
        if isinstance(p, bytes):
            feed(b"b", p)
        elif isinstance(p, str):
            feed(b"s", p.encode())
        elif p is None or isinstance(p, (bool, int, float)):
            feed(b"n", repr(p).encode())
        elif isinstance(p, (np.ndarray, np.generic)):
            a = np.asarray(p)
            feed(b"a", f"{a.dtype.str}{a.shape}".encode())
            feed(b"d", a.tobytes())
        elif hasattr(p, "SerializeToString"):
            feed(b"m", type(p).__name__.encode())
            feed(b"p", p.SerializeToString(deterministic=True))
        elif isinstance(p, (list, tuple)):
            feed(b"l", str(len(p)).encode())
            for item in p:
                walk(item)
        else:
            raise TypeError(f"no digest of {type(p).__name__}")

    walk(parts)
    return h.hexdigest()


def _checked(parts: object, compute: Callable[..., object], *args: object,
             memo: Recent[str, tuple] = _check_memo) -> object:
    """`compute(*args)`, kept by the digest of `parts`, which must hold everything the answer is made of (the
    programs' bytes and the inputs, or a rewrite's own constants): a calibration change that moves a few
    thresholds leaves most rewrites' nodes and constants as they were, and their checks are not run again.
    onnxruntime's version and the session options are the process's own. `memo`: where (tables apart: they
    are large)."""
    key = _digest(parts)
    kept = memo.get(key)
    if kept is not None:
        return kept[0]
    value = compute(*args)
    memo.put(key, (value,))
    return value


def _random_codes(dtype: np.dtype, shape: tuple[int, ...], seeds: int) -> list[np.ndarray]:
    """`seeds` arrays of random codes over the whole range of `dtype` (one fixed generator: the
    checks, and so the program, are reproducible)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    return [rng.integers(int(info.min), int(info.max) + 1, shape).astype(dtype) for _ in range(seeds)]


_TENSOR_TYPE = {np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8,
                np.dtype(np.uint16): onnx.TensorProto.UINT16, np.dtype(np.int16): onnx.TensorProto.INT16}

NARROW_INPUT = 4  # input channels up to which an ungrouped QLinearConv runs as a float Conv
DEPTHWISE_FLOAT_KERNEL = 5  # depthwise QLinearConvs with kernels this large run as float Convs
EXACT_FLOAT = 2 ** 24  # integers up to this magnitude are exact in float32


def narrow_conv_in_float(model: onnx.ModelProto, depthwise: bool = False) -> int:
    """QLinearConvs with few input channels → DequantizeLinear → float Conv → Mul M → QuantizeLinear
    (module docstring), each kept only if it equals the QLinearConv on random inputs. A Relu on codes
    right after (Clip from the output zero point up) moves before the multiplier as a float Relu, which
    onnxruntime fuses into the Conv; see `_relu_after`. With `depthwise`, the same for depthwise convs
    with a kernel of at least `DEPTHWISE_FLOAT_KERNEL` instead (`depthwise_conv_in_float`)."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rewritten = 0
    for node in list(g.node):
        parts = _depthwise_conv(node, inits) if depthwise else _narrow_conv(node, inits)
        if parts is None:
            continue
        x_zero_point, weight, bias, multiplier, y_zero_point = parts
        base = node.name or node.output[0]
        constants = {f"{base}_one": np.array(1.0, np.float32), f"{base}_x_zero_point": x_zero_point,
                     f"{base}_weight": weight, f"{base}_y_zero_point": y_zero_point}
        if bias is not None:
            constants[f"{base}_bias"] = bias
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        centered, acc, acc32, scaled = (f"{base}_{t}" for t in ("centered", "accumulator_float", "accumulator",
                                                                 "requantized"))
        replacement = [
            helper.make_node("DequantizeLinear", [node.input[0], f"{base}_one", f"{base}_x_zero_point"], [centered],
                             name=f"{base}_centered"),
            helper.make_node("Conv", [centered, f"{base}_weight"] + ([f"{base}_bias"] if bias is not None else []),
                             [acc], name=f"{base}_accumulate", **attrs)]
        relu = _relu_after(g, node, inits)
        original = [node] if relu is None else [node, relu]
        if relu is not None:  # max(acc, 0) is exact, and M > 0: Q(max(acc, 0)·M) = max(Q(acc·M), z_y), the Clip
            rectified = f"{base}_rectified"
            replacement.append(helper.make_node("Relu", [acc], [rectified], name=relu.name))
            acc = rectified
        constants[f"{base}_multiplier"] = multiplier
        constants[f"{base}_accumulator_zero_point"] = np.zeros(multiplier.shape, np.int32)
        replacement += [
            helper.make_node("Cast", [acc], [acc32], name=f"{base}_accumulator", to=onnx.TensorProto.INT32),
            helper.make_node("DequantizeLinear", [acc32, f"{base}_multiplier", f"{base}_accumulator_zero_point"],
                             [scaled], name=f"{base}_multiplier", axis=1)]
        replacement.append(helper.make_node("QuantizeLinear", [scaled, f"{base}_one", f"{base}_y_zero_point"],
                                            [original[-1].output[0]], name=node.name))
        tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
        channels = int(weight.shape[1]) * attrs.get("group", 1)
        bound = np.abs(weight).reshape(len(multiplier), -1).sum(axis=1) * _code_span(x_zero_point) + \
            (np.abs(bias) if bias is not None else 0)
        short = _divided_requantization(replacement[-3:], tensors, multiplier, y_zero_point, bound, base)
        chosen = None
        for tail, extra in ([short] if short else []) + [(replacement[-3:], [])]:
            candidate = replacement[:-3] + tail
            kept = [t for t in tensors if any(t.name in n.input for n in candidate)] + extra
            if _same_on_random_inputs(original, candidate, kept, inits, channels):
                chosen = candidate, kept
                break
        if chosen is None:
            continue
        if relu is not None:
            g.node.remove(relu)
        _splice(model, node, *chosen)
        rewritten += 1
    return rewritten


TIE_SLACK = 3.2e-4  # |fl(a·M) − fl(a / S)| for |a·M| ≤ 257 and S within 8 float32 steps of 1/M
DIVISOR_STEPS = 8  # float32 neighbours of 1/M tried as the QuantizeLinear scale
TIE_RADIUS_MAX = 64  # accumulators checked on each side of a tie; smaller multipliers keep the long form


def _code_span(zero_point: np.ndarray) -> int:
    """The largest |code − zero point| the zero point's integer type allows."""
    info = np.iinfo(zero_point.dtype)
    return int(max(abs(int(info.min) - int(zero_point)), abs(int(info.max) - int(zero_point))))


def _divided_requantization(tail: list[onnx.NodeProto], constants: list[onnx.TensorProto], multiplier: np.ndarray,
                            y_zero_point: np.ndarray, bound: np.ndarray, base: str):
    """`_find_divisor`, kept by all it reads (`_checked`): the conv's own multipliers, output zero point,
    accumulator bound, names and constants — a calibration change that moves a few thresholds leaves the
    other convs' (PP-OCRv4 det: 7 convs, 1 360 channels searched, ~0.2 CPU s). Fresh nodes and tensors
    each call (the caller splices them into its graph)."""
    args = (tail, constants, multiplier, y_zero_point, bound, base)
    kept = _checked(("divided requantization", *args), lambda: _serialized(_find_divisor(*args)))
    if kept is None:
        return None
    nodes, tensors = kept
    return [_parsed(onnx.NodeProto, b) for b in nodes], [_parsed(onnx.TensorProto, b) for b in tensors]


def _serialized(found: tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None
                ) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    return None if found is None else tuple(tuple(m.SerializeToString() for m in part) for part in found)


def _parsed(kind: type, data: bytes):
    message = kind()
    message.ParseFromString(data)
    return message


def _find_divisor(tail: list[onnx.NodeProto], constants: list[onnx.TensorProto], multiplier: np.ndarray,
                  y_zero_point: np.ndarray, bound: np.ndarray, base: str):
    """The float conv's requantization Cast<int32> → DequantizeLinear(M, axis 1) → QuantizeLinear(1, z_y) as
    one QuantizeLinear(acc, S, z_y, axis 1): rne(fl(acc / S_c)) in place of rne(fl(acc · M_c)), with S_c a
    float32 neighbour of 1/M_c. Two kernels and two passes fewer (the digits model's first conv: 60 → 56 µs).

    acc is an integer (the conv is exact, |acc| ≤ `bound`). The two roundings to an integer can only differ
    where a half-integer k + ½ lies between fl(acc · M) and fl(acc / S), which are within `TIE_SLACK` of
    each other for every unsaturated value (|acc · M| ≤ 257): so only the integers within
    TIE_SLACK / M of a tie (k + ½) / M can differ, and saturation follows the rounded value. Those
    integers, for every tie from the lowest code to the highest, are what both forms are run on in
    onnxruntime; S_c is the first of 1/M_c's float32 neighbours that gives the same codes there
    (numpy's float32 division picks the candidates, onnxruntime's kernels decide). Returns
    (nodes, constants) or None (no divisor fits, or a multiplier so small that the ties would need
    more than `TIE_RADIUS_MAX` integers each side)."""
    from onnx import helper

    m = multiplier.astype(np.float64)
    if m.ndim != 1 or not np.all(np.isfinite(m) & (m > 0)):
        return None
    radius = np.ceil(TIE_SLACK / m).astype(np.int64) + 1
    if np.any(radius > TIE_RADIUS_MAX):
        return None
    info = np.iinfo(y_zero_point.dtype)
    ties = np.arange(int(info.min) - int(y_zero_point) - 1, int(info.max) - int(y_zero_point) + 1) + 0.5
    acc = _near_ties(ties, m, radius, np.asarray(bound)[np.arange(len(m))]).astype(np.float32)[None]
    want = np.clip(np.rint(acc * multiplier.reshape(1, -1, 1)) + int(y_zero_point), info.min, info.max)
    divisor = (np.float32(1) / multiplier).astype(np.float32)
    chosen = _first_divisors(acc[0], want[0], divisor, int(y_zero_point), info)
    if chosen is None:
        return None
    cast = tail[0]
    out = tail[-1].output[0]
    names = {"scale": f"{base}_divisor", "zero_point": f"{base}_divisor_zero_point"}
    tensors = [numpy_helper.from_array(chosen, names["scale"]),
               numpy_helper.from_array(np.full(len(m), y_zero_point, y_zero_point.dtype), names["zero_point"])]
    quantize = helper.make_node("QuantizeLinear", [cast.input[0], names["scale"], names["zero_point"]], [out],
                                name=tail[-1].name, axis=1)
    inits = {t.name: t for t in constants}
    if not _same_bits(tail, [quantize], [acc], [out], inits, tensors):
        return None
    return [quantize], tensors


SEARCH_BLOCK = 1 << 21  # values per block of channels in the divisor search (numpy temporaries stay a few MB)


def _near_ties(ties: np.ndarray, m: np.ndarray, radius: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per channel c, the integers within `radius[c]` of rint(tie / m[c]) for every tie, |a| ≤ `bound[c]`,
    sorted without repeats and padded with the row's last one ([0] for a row with none): [C, width] int64.
    Channels in blocks, each row's set by one sort (the per-channel np.unique of 1 360 channels cost
    PP-OCRv4 det ~0.1 CPU s)."""
    span = int(radius.max())
    offsets = np.arange(-span, span + 1)
    empty = np.iinfo(np.int64).max
    block = max(1, SEARCH_BLOCK // (len(ties) * len(offsets)))
    rows, counts = [], []
    for start in range(0, len(m), block):
        part = slice(start, start + block)
        centre = np.rint(ties[None, :] / m[part, None]).astype(np.int64)
        near = centre[:, :, None] + offsets[None, None, :]
        keep = (np.abs(offsets)[None, None, :] <= radius[part, None, None]) & \
            (np.abs(near) <= bound[part, None, None])
        values = np.sort(np.where(keep, near, empty).reshape(len(centre), -1), axis=1)
        repeat = np.zeros(values.shape, bool)
        repeat[:, 1:] = values[:, 1:] == values[:, :-1]
        values = np.sort(np.where(repeat, empty, values), axis=1)
        count = np.count_nonzero(values != empty, axis=1)
        rows.append(values)
        counts.append(count)
    width = max(1, max(int(c.max()) for c in counts))
    out = []
    for values, count in zip(rows, counts):
        index = np.minimum(np.arange(width)[None, :], np.maximum(count - 1, 0)[:, None])
        padded = np.take_along_axis(values, index, axis=1)
        padded[count == 0] = 0
        out.append(padded)
    return np.concatenate(out)


def _first_divisors(acc: np.ndarray, want: np.ndarray, divisor: np.ndarray, zero_point: int,
                    info: np.iinfo) -> np.ndarray | None:
    """Per channel, the first of 1/M's float32 neighbours (nearest first, the lower one first at equal
    distance) whose rne(acc / S) + z, saturated, is `want` on every accumulator of the row; None when a
    channel has none. All candidates of a block of channels at once, in float32 as the per-channel loop
    did."""
    steps = np.array(sorted(range(-DIVISOR_STEPS, DIVISOR_STEPS + 1), key=abs), np.float32)
    candidates = (divisor[:, None] + steps[None, :] * np.spacing(divisor)[:, None]).astype(np.float32)
    chosen = np.zeros_like(divisor)
    block = max(1, SEARCH_BLOCK // (len(steps) * acc.shape[1]))
    for start in range(0, len(divisor), block):
        part = slice(start, start + block)
        got = np.clip(np.rint(acc[part, None, :] / candidates[part, :, None]) + zero_point, info.min, info.max)
        fits = np.all(got == want[part, None, :], axis=2)
        if not np.all(fits.any(axis=1)):
            return None
        chosen[part] = candidates[part][np.arange(fits.shape[0]), np.argmax(fits, axis=1)]
    return chosen


def _relu_after(g: onnx.GraphProto, node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]
                ) -> onnx.NodeProto | None:
    """The Clip that is `node`'s only reader when it clips the codes at the output zero point from below
    and nowhere above (a Relu in the float model): the narrow conv then ends Relu → Mul M → Q. The
    float Relu sits between the Conv and the Mul, so onnxruntime fuses it into the Conv and cannot fold
    the Mul into the weights (ConvMulFusion needs the Mul right after the Conv), and the Cast to int32
    and the Clip go away (PP-OCR's and the digits model's first conv; 5 → 3 kernels). The readers of
    its one output are looked up in the graph as it is now (not a whole `_consumers` map per conv)."""
    if node.output[0] in {o.name for o in g.output}:
        return None
    found = [n for n in g.node if node.output[0] in n.input]
    if len(found) != 1:
        return None
    clip = found[0]
    if clip.op_type != "Clip" or clip.domain not in ("", "ai.onnx") or clip.input[0] != node.output[0] \
            or len(clip.input) < 2 or clip.input[1] not in inits:
        return None
    y_zero_point = numpy_helper.to_array(inits[node.input[7]])
    low = numpy_helper.to_array(inits[clip.input[1]])
    high = numpy_helper.to_array(inits[clip.input[2]]) if len(clip.input) > 2 and clip.input[2] else None
    if low.dtype != y_zero_point.dtype or low.size != 1 or int(low.reshape(())) != int(y_zero_point.reshape(())):
        return None
    if high is not None and (high.size != 1 or int(high.reshape(())) < int(np.iinfo(y_zero_point.dtype).max)):
        return None
    return clip


def depthwise_conv_in_float(model: onnx.ModelProto) -> int:
    """Depthwise QLinearConvs with a kernel of at least `DEPTHWISE_FLOAT_KERNEL` as float Convs of the
    same integers (`narrow_conv_in_float`'s form and check; each output channel reads one input
    channel, so the accumulator bound is the narrow conv's). onnxruntime's uint8 depthwise kernel is
    the slow one there (1 thread, 5×5 on 1×200×2×96: QLinearConv NHWC 74 µs, DequantizeLinear + float
    Conv 28 µs): PP-OCR cls 48×192 with its ten 5×5 depthwise convs 1.43 → 1.23 ms; PP-OCRv4 det
    (5×5 on 384 channels at 20×20) and rec unchanged (67.2 / 67.7 ms, 20.1 / 20.2 ms); 3×3 ones gain
    nothing on cls beyond the noise (1.23 / 1.28 ms) and lose on det (module docstring)."""
    return narrow_conv_in_float(model, depthwise=True)


def round_instead_of_requantize(model: onnx.ModelProto) -> int:
    """QuantizeLinear(v, 1, z) → DequantizeLinear(·, 1, z) that can never saturate → Round(v).

    With scale 1 the pair is v ↦ clip(rne(v), qmin − z, qmax − z) as float; where v cannot leave the
    code range it is rne(v), which is what Round computes (half to even, as QuantizeLinear). The pair
    appears where the input conversion (`per_channel_scaling`'s DequantizeLinear(x, s′) [→ Add b′])
    meets the first conv run as a float Conv (`narrow_conv_in_float`'s DequantizeLinear(·, 1, z)):
    the digits model's image, rne(0.498 · pixel) ∈ [0, 127], 3 → 2 kernels (57.7 → 57.2 µs, 1 thread,
    per-inference CPU time p25, three sessions each). v must come from one DequantizeLinear of codes x
    through Add / Mul by constants; the two forms are compared on every code of x in every channel
    (values equal, the sign of a zero aside: the reader is a float Conv, where ±0 adds alike), and a
    chain that can saturate (PP-OCR's BGR conversion reaches ±132) is left as it is."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    rewritten = 0
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or len(q.input) < 3 \
                or q.output[0] in outputs or not all(i in inits for i in q.input[1:3]):
            continue
        found = readers.get(q.output[0], [])
        if len(found) != 1 or found[0].op_type != "DequantizeLinear" or len(found[0].input) < 3 \
                or found[0].output[0] in outputs or list(found[0].input[1:3]) != list(q.input[1:3]) \
                and not _same_constants(inits, found[0].input[1:3], q.input[1:3]):
            continue
        dq_out = found[0]
        scale = numpy_helper.to_array(inits[q.input[1]])
        if scale.dtype != np.float32 or scale.size != 1 or float(scale.reshape(())) != 1.0:
            continue
        chain = _code_chain(producer, inits, q.input[0])
        if chain is None:
            continue
        base = q.name or q.output[0]
        rounded = helper.make_node("Round", [q.input[0]], [dq_out.output[0]], name=base)
        if not _same_values_on_every_code(chain, [q, dq_out], chain + [rounded], dq_out.output[0], inits):
            continue
        index = list(g.node).index(q)
        g.node.remove(q)
        g.node.remove(dq_out)
        g.node.insert(index, rounded)
        _rename_in_node_map(model, {dq_out.name: [rounded.name]})
        rewritten += 1
    return rewritten


def _same_constants(inits: Mapping[str, onnx.TensorProto], a: list[str], b: list[str]) -> bool:
    return all(x in inits and y in inits and numpy_helper.to_array(inits[x]).dtype == numpy_helper.to_array(inits[y]).dtype
               and np.array_equal(numpy_helper.to_array(inits[x]), numpy_helper.to_array(inits[y])) for x, y in zip(a, b))


def _code_chain(producer: Mapping[str, onnx.NodeProto], inits: Mapping[str, onnx.TensorProto],
                name: str) -> list[onnx.NodeProto] | None:
    """The nodes from one DequantizeLinear of codes to `name` through Add / Mul by constants (graph
    order), or None when `name` is computed otherwise."""
    chain: list[onnx.NodeProto] = []
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            return None
        chain.insert(0, node)
        if node.op_type == "DequantizeLinear" and len(node.input) >= 3 and all(i in inits for i in node.input[1:3]):
            return chain
        if node.op_type not in ("Add", "Mul") or node.domain not in ("", "ai.onnx"):
            return None
        variable = [i for i in node.input if i not in inits]
        if len(variable) != 1:
            return None
        name = variable[0]
    return None


def _same_values_on_every_code(chain: list[onnx.NodeProto], tail: list[onnx.NodeProto],
                               replacement: list[onnx.NodeProto], output: str,
                               inits: Mapping[str, onnx.TensorProto]) -> bool:
    """`chain` + `tail` and `replacement` on every code of the chain's input in every channel (the
    channel count read off per-channel constants): equal float values (±0 alike)?"""
    dtype = numpy_helper.to_array(inits[chain[0].input[2]]).dtype
    if dtype not in _TENSOR_TYPE:
        return False
    channels = max([numpy_helper.to_array(inits[i]).size for n in chain for i in n.input if i in inits] + [1])
    return _same_bits(chain + tail, replacement, [_every_code(dtype, channels)], [output], inits, [], values=True)


def _narrow_conv(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """(z_x, float weight w − z_w, float bias or None, M per output channel, z_y) of an ungrouped
    QLinearConv with ≤ NARROW_INPUT input channels whose accumulator is exact in float32, else None.
    (3×3 depthwise convs stay integer: PP-OCRv4 det with its 12 depthwise convs in float 50.4 ms,
    integer 43.5 ms, 1 thread.)"""
    return _float_conv_parts(node, inits, depthwise=False)


def _depthwise_conv(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """`_narrow_conv`'s parts of a depthwise QLinearConv with a kernel of at least
    `DEPTHWISE_FLOAT_KERNEL` whose accumulator is exact in float32, else None."""
    return _float_conv_parts(node, inits, depthwise=True)


def _float_conv_parts(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto], depthwise: bool):
    if node.op_type != "QLinearConv" or node.domain not in ("", "ai.onnx") or len(node.input) < 8:
        return None
    names = list(node.input[1:8]) + ([node.input[8]] if len(node.input) > 8 and node.input[8] else [])
    if not all(n in inits for n in names):
        return None
    xs, xz, w, ws, wz, ys, yz = (numpy_helper.to_array(inits[n]) for n in node.input[1:8])
    if w.ndim != 4 or xs.size != 1 or xz.size != 1 or ys.size != 1 or yz.size != 1:
        return None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if depthwise:
        if group == 1 or w.shape[1] != 1 or w.shape[0] != group or min(w.shape[2:]) < DEPTHWISE_FLOAT_KERNEL:
            return None
    elif group != 1 or w.shape[1] > NARROW_INPUT:
        return None
    c = w.shape[0]
    centered = w.astype(np.int64) - np.broadcast_to(wz.reshape(-1), (c,)).astype(np.int64).reshape(c, 1, 1, 1)
    bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.int64) if len(node.input) > 8 and node.input[8] \
        else None
    span = _code_span(xz)
    bound = span * np.abs(centered).reshape(c, -1).sum(axis=1) + (np.abs(bias) if bias is not None else 0)
    if np.any(bound >= EXACT_FLOAT):
        return None
    ws_c = np.broadcast_to(ws.reshape(-1).astype(np.float32), (c,))
    multiplier = ((np.float32(xs.reshape(())) * ws_c) / np.float32(ys.reshape(()))).astype(np.float32)
    return (xz.reshape(()), centered.astype(np.float32), None if bias is None else bias.astype(np.float32),
            multiplier, yz.reshape(()))


def _same_on_random_inputs(original: list[onnx.NodeProto], replacement: list[onnx.NodeProto],
                           constants: list[onnx.TensorProto], inits: Mapping[str, onnx.TensorProto],
                           channels: int, seeds: int = 4) -> bool:
    """`original` (a QLinearConv, maybe with the Clip after it) and its replacement on seeded random
    1×C×24×24 codes: equal bit for bit?"""
    x_dtype = numpy_helper.to_array(inits[original[0].input[2]]).dtype
    return _same_bits(original, replacement, _random_codes(x_dtype, (1, channels, 24, 24), seeds),
                      [original[-1].output[0]], inits, constants)


# ------------------------------------------------------------------ sibling QLinearConvs (O2)

def merge_sibling_convs(model: onnx.ModelProto) -> int:
    """QLinearConvs reading the same tensor with the same kernel geometry and input / output zero
    points → one QLinearConv over all their output channels, then Split (module docstring).

    onnxruntime requantizes output channel c by one float32 multiplier, fl(fl(s_x · s_w[c]) / s_y);
    s_x and s_y enter nowhere else (the int32 bias is added to the accumulator as it is). The merged
    conv therefore gets s_x = s_y = 1 and each channel's own multiplier as its weight scale —
    fl(fl(1 · M_c) / 1) = M_c exactly — with the same int8 weights and int32 biases: the same
    accumulators, the same multipliers, the same codes. Each merge is compared with the separate
    convs on random inputs before it is kept. The lowering computes a Conv+Add twice (fine and wide
    scale) from the same input and weights: one kernel call reads the input once and fills wider
    GEMM tiles (1×16×16×16, 16→16 3×3 twice, 1 thread: 19.9 → 17.9 µs; batch 16: 206 → 158 µs)."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    groups: dict[tuple, list[tuple[onnx.NodeProto, _ConvParts]]] = {}
    for node in g.node:
        parts = _conv_parts(node, inits)
        if parts is not None:
            groups.setdefault(parts.key, []).append((node, parts))
    merged = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0][0]
        nodes = [n for n, _ in members]
        w_scale = np.concatenate([_multipliers(p) for _, p in members])
        if not np.all(np.isfinite(w_scale) & (w_scale > 0)):
            continue
        weights = np.concatenate([p.weight for _, p in members])
        channels = [int(p.weight.shape[0]) for _, p in members]
        biases = [p.bias for _, p in members]
        base_name = first.name or first.output[0]
        merged_out = f"{base_name}_siblings"
        constants = {f"{base_name}_siblings_weight": weights, f"{base_name}_siblings_weight_scale": w_scale,
                     f"{base_name}_siblings_one": np.asarray(1.0, np.float32),
                     f"{base_name}_siblings_split": np.asarray(channels, np.int64)}
        w_zero_point = first.input[5]
        if numpy_helper.to_array(inits[w_zero_point]).size != 1:  # per channel (all 0): one per merged channel
            w_zero_point = f"{base_name}_siblings_weight_zero_point"
            constants[w_zero_point] = np.zeros(len(w_scale), weights.dtype)
        if any(b is not None for b in biases):
            constants[f"{base_name}_siblings_bias"] = np.concatenate(
                [b if b is not None else np.zeros(c, np.int32) for b, c in zip(biases, channels)]).astype(np.int32)
        inputs = [first.input[0], f"{base_name}_siblings_one", first.input[2], f"{base_name}_siblings_weight",
                  f"{base_name}_siblings_weight_scale", w_zero_point, f"{base_name}_siblings_one", first.input[7]]
        if f"{base_name}_siblings_bias" in constants:
            inputs.append(f"{base_name}_siblings_bias")
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        conv = helper.make_node("QLinearConv", inputs, [merged_out], name=f"{base_name}_siblings", **attrs)
        split = helper.make_node("Split", [merged_out, f"{base_name}_siblings_split"], [n.output[0] for n in nodes],
                                 name=f"{base_name}_siblings_split", axis=1)
        tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
        if not _siblings_equal(nodes, [conv, split], tensors, inits, int(weights.shape[1])):
            continue
        index = min(list(g.node).index(n) for n in nodes)
        for n in nodes:
            g.node.remove(n)
        g.node.insert(index, conv)
        g.node.insert(index + 1, split)
        g.initializer.extend(tensors)
        _rename_in_node_map(model, {n.name: [conv.name, split.name] for n in nodes})
        merged += len(nodes) - 1
    return merged


@dataclass(frozen=True)
class _ConvParts:
    """What must agree for QLinearConvs to share one kernel call (`key`), and their per-conv constants."""

    key: tuple
    x_scale: np.float32
    weight: np.ndarray  # int8 / uint8 [M, C/group, kH, kW]
    w_scale: np.ndarray  # float32 [M]
    y_scale: np.float32
    bias: np.ndarray | None  # int32 [M]


def _conv_parts(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> _ConvParts | None:
    if node.op_type != "QLinearConv" or node.domain not in ("", "ai.onnx") or len(node.input) < 8:
        return None
    names = [n for n in node.input[1:] if n]
    if not all(n in inits for n in names):
        return None
    xs, xz, w, ws, wz, ys, yz = (numpy_helper.to_array(inits[n]) for n in node.input[1:8])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or w.ndim < 3 or xs.size != 1 or ys.size != 1 or yz.size != 1 or np.any(wz != 0) \
            or ws.dtype != np.float32 or ws.size not in (1, w.shape[0]):
        return None
    geometry = tuple(sorted((k, str(v)) for k, v in attrs.items()))
    key = (node.input[0], xs.tobytes(), xz.dtype.str, xz.tobytes(), w.dtype.str, tuple(w.shape[1:]), geometry,
           yz.dtype.str, yz.tobytes())
    bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.int32) if len(node.input) > 8 and node.input[8] \
        else None
    return _ConvParts(key, np.float32(xs.reshape(())), w, np.broadcast_to(ws.reshape(-1), (w.shape[0],)).copy(),
                      np.float32(ys.reshape(())), bias)


def _multipliers(parts: _ConvParts) -> np.ndarray:
    """onnxruntime's requantization multiplier per output channel: fl(fl(s_x · s_w[c]) / s_y) (float32)."""
    with np.errstate(all="ignore"):
        return ((parts.x_scale * parts.w_scale.astype(np.float32)) / parts.y_scale).astype(np.float32)


def _siblings_equal(nodes: list[onnx.NodeProto], replacement: list[onnx.NodeProto], constants: list[onnx.TensorProto],
                    inits: Mapping[str, onnx.TensorProto], channels: int, seeds: int = 3) -> bool:
    """The separate convs and the merged conv + Split on seeded random 1×C×24×24 codes: equal bit for bit?"""
    x_dtype = numpy_helper.to_array(inits[nodes[0].input[2]]).dtype
    return _same_bits(nodes, replacement, _random_codes(x_dtype, (1, channels, 24, 24), seeds),
                      [n.output[0] for n in nodes], inits, constants)


def _rename_in_node_map(model: onnx.ModelProto, renamed: Mapping[str, list[str]]) -> None:
    """Program nodes replaced by others (`renamed`: old → new names) in ``hbcompile.node_map``."""
    node_map = json_metadata(model, NODE_MAP, None)
    if not node_map:
        return
    for float_node, progs in node_map.items():
        out: list[str] = []
        for p in progs:
            for q in renamed.get(p, [p]):
                if q not in out:
                    out.append(q)
        node_map[float_node] = out
    set_metadata(model, NODE_MAP, node_map)


# ------------------------------------------------------------ a conv's int32 bias as a zero point (O2)

def bias_as_zero_point(model: onnx.ModelProto) -> int:
    """ConvInteger → Add of the int32 bias b_c → DequantizeLinear(acc, M_c, axis 1) (the 1×1 int16-output
    convs) as ConvInteger → DequantizeLinear(acc, M_c, zero point −b_c, axis 1): onnxruntime's int32
    DequantizeLinear subtracts the zero point in int32 before its one float32 multiply, so
    float(acc − (−b_c)) · M_c is the Add's float(acc + b_c) · M_c, one pass over the int32 accumulator
    fewer (PP-OCRv4 det's 320×320 one: Add 0.9 ms of its 3.6 ms chain). Checked on seeded random
    accumulators over ±2³⁰ (wrapping int32 sums alike)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    rewritten = 0
    for conv in list(g.node):
        if conv.op_type != "ConvInteger" or conv.domain not in ("", "ai.onnx") or conv.output[0] in outputs \
                or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        adds = readers.get(conv.output[0], [])
        if len(adds) != 1 or adds[0].op_type != "Add" or adds[0].output[0] in outputs:
            continue
        add = adds[0]
        other = add.input[1]
        if add.input[0] != conv.output[0]:  # the lowering's order; the check feeds the accumulator as input 0
            continue
        dqs = readers.get(add.output[0], [])
        if other not in inits or len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" \
                or dqs[0].domain not in ("", "ai.onnx") or dqs[0].input[1] not in inits:
            continue
        dq = dqs[0]
        bias, scale = numpy_helper.to_array(inits[other]), numpy_helper.to_array(inits[dq.input[1]])
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else \
            None if len(dq.input) > 2 and dq.input[2] else np.zeros(scale.shape, np.int32)
        rank = numpy_helper.to_array(inits[conv.input[1]]).ndim
        axis = _axis(dq) % rank
        if zero is None or np.any(zero != 0) or bias.dtype != np.int32 or np.any(bias == np.iinfo(np.int32).min):
            continue
        if scale.size == 1 and bias.size == 1:
            shift = -bias.reshape(scale.shape)
        elif bias.ndim == rank and bias.shape[axis] == scale.size and bias.size == scale.size and scale.ndim == 1:
            shift = -bias.reshape(-1)
        else:
            continue
        base = dq.name or dq.output[0]
        constant = numpy_helper.from_array(shift.astype(np.int32), f"{base}_bias_zero_point")
        merged = onnx.helper.make_node("DequantizeLinear", [conv.output[0], dq.input[1], constant.name], list(dq.output),
                                       name=dq.name, **({"axis": _axis(dq)} if scale.size > 1 else {}))
        channels = scale.size if scale.size > 1 else 1
        shape = tuple(channels if d == axis else 2 + d for d in range(rank))
        rng = np.random.default_rng(0)
        accumulators = [rng.integers(-(2 ** 30), 2 ** 30, shape, dtype=np.int64).astype(np.int32) for _ in range(2)]
        if not _same_bits([add, dq], [merged], accumulators, [dq.output[0]], inits, [constant]):
            continue
        index = list(g.node).index(add)
        g.node.remove(add)
        g.node.remove(dq)
        g.node.insert(index, merged)
        g.initializer.append(constant)
        _rename_in_node_map(model, {add.name: [merged.name]})
        rewritten += 1
    return rewritten


# --------------------------------------------------------- ConvTranspose chains as MatMuls (O2)

_PER_TENSOR_ELEMENTWISE = frozenset({"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSigmoid", "QuantizeLinear",
                                     "DequantizeLinear", "QLinearSigmoid", "QLinearLeakyRelu"})


def conv_transpose_as_matmul(model: onnx.ModelProto) -> int:
    """A ConvTranspose whose kernel equals its stride (no overlap: PP-OCRv4 det's DB head, two of them
    2×2/2) writes each input pixel's column W^T·x into its own s×s output block. Kept in space-to-depth
    layout (`_space_to_depth_nodes`: a MatMul by W^T per ConvTranspose, broadcast over the blocks of the
    ones before it, plus the bias), the elementwise per-tensor ops after it (Relu, Quantize /
    DequantizeLinear, Sigmoid …) run in that layout as they are, and one DepthToSpace (DCR) on the last
    8-bit codes puts the pixels in place. onnxruntime's ConvTranspose is the same GEMM over the input
    channels followed by a col2im pass and a bias pass (PP-OCRv4 det 24→24 on 160×160: 2.9 ms, the MatMul
    1.5 ms). Checked on the whole region, seeded random input codes at its real shape, bit for bit."""

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    if not any(n.op_type == "ConvTranspose" for n in g.node):
        return 0
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 15:
        return 0  # Shape(start=2) reads H, W
    rewritten = 0
    outputs = {o.name for o in g.output}
    for start in list(g.node):
        if _block_transpose(start, inits) is None or start not in g.node:
            continue  # the cheap test first: the graph's maps are rebuilt only for a ConvTranspose still in it
        readers = _consumers(g)
        producer = {o: n for n in g.node for o in n.output}
        dq = producer.get(start.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or not _scalar_params(dq, inits) \
                or len(readers.get(dq.output[0], [])) != 1:
            continue
        shape = [1, int(numpy_helper.to_array(inits[start.input[1]]).shape[0]), 16, 24]  # the check's; any H, W
        chain, last_transpose = [start], 0
        while True:
            out = chain[-1].output[0]
            nxt = readers.get(out, [])
            if out in outputs or len(nxt) != 1:
                break
            node = nxt[0]
            if node.op_type == "ConvTranspose" and _block_transpose(node, inits) is not None:
                last_transpose = len(chain)
            elif node.op_type not in _PER_TENSOR_ELEMENTWISE or not _scalar_params(node, inits):
                break
            chain.append(node)
        cut = max((i for i in range(last_transpose, len(chain)) if _writes_8_bit_codes(chain[i], inits)), default=None)
        if cut is None or not _small_depth_to_space(chain[:cut + 1], inits):
            continue
        region = chain[:cut + 1]
        replacement, constants = _space_to_depth_nodes(region, inits, shape)
        if replacement is None:
            continue
        codes = _random_codes(numpy_helper.to_array(inits[dq.input[2]]).dtype if len(dq.input) > 2 and dq.input[2]
                              else np.dtype(np.uint8), tuple(shape), 2)
        if not _same_bits([dq, *region], [dq, *replacement], codes, [region[-1].output[0]], inits, constants,
                          domains=("com.microsoft",)):
            continue
        index = list(g.node).index(start)
        for n in region:
            g.node.remove(n)
        for k, n in enumerate(replacement):
            g.node.insert(index + k, n)
        g.initializer.extend(constants)
        _rename_in_node_map(model, {n.name: [m.name for m in replacement if m.name.startswith(n.name)] or [n.name]
                                    for n in region})
        rewritten += 1
    return rewritten


def _writes_8_bit_codes(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> bool:
    """A QuantizeLinear to (u)int8, or a QLinearSigmoid / QLinearLeakyRelu: where the DepthToSpace may go."""
    if node.op_type in ("QLinearSigmoid", "QLinearLeakyRelu"):
        return True
    zero = node.input[2] if node.op_type == "QuantizeLinear" and len(node.input) > 2 else ""
    return bool(zero) and zero in inits and numpy_helper.to_array(inits[zero]).dtype in (np.uint8, np.int8)


DEPTH_TO_SPACE_SHARE = 0.25  # the DepthToSpace's values at most this share of what the ConvTransposes write


def _small_depth_to_space(region: list[onnx.NodeProto], inits: Mapping[str, onnx.TensorProto]) -> bool:
    """Is the one DepthToSpace cheap against the ConvTransposes' col2im and bias passes it replaces? Each
    writes C_k·B_k² values per input pixel (B_k the stride so far), the DepthToSpace C·B² codes; onnxruntime's
    DepthToSpace costs ~0.75 ns per uint8 value here, twice what the MatMul saves per value a ConvTranspose
    writes (~0.37 ns: PP-OCRv4 det's 24→24 + Relu 3.2 → 2.3 ms for 2.46 M values), so a lone ConvTranspose
    (a DepthToSpace of all it writes) would be slower and two in a row (det: 96 + 16 values written per
    input pixel, 16 moved) faster."""
    written, block, channels = 0, 1, 0
    for node in region:
        if node.op_type == "ConvTranspose":
            w = numpy_helper.to_array(inits[node.input[1]])
            block *= int(w.shape[2])
            channels = int(w.shape[1])
            written += channels * block * block
    return channels * block * block <= DEPTH_TO_SPACE_SHARE * written


def _scalar_params(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> bool:
    """All inputs but the first are constants of one element (per-tensor parameters)."""
    return all(not i or (i in inits and numpy_helper.to_array(inits[i]).size == 1) for i in node.input[1:])


def _block_transpose(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> int | None:
    """The stride s of a 2-D ConvTranspose with constant float weights whose s×s kernel equals its stride
    (no padding, dilation, output padding or groups), else None."""
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2 \
            or node.input[1] not in inits or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits):
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = numpy_helper.to_array(inits[node.input[1]])
    strides = list(attrs.get("strides", [1, 1]))
    if w.ndim != 4 or w.dtype != np.float32 or list(w.shape[2:]) != strides or strides[0] != strides[1] \
            or attrs.get("group", 1) != 1 or any(attrs.get("pads", [0] * 4)) or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or any(attrs.get("output_padding", [0, 0])) or "output_shape" in attrs \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    return int(strides[0])


def _space_to_depth_nodes(region: list[onnx.NodeProto], inits: Mapping[str, onnx.TensorProto], shape: list[int]):
    """`region`'s nodes in space-to-depth layout (`conv_transpose_as_matmul`) and their new constants.
    The k-th ConvTranspose (stride s) is a MatMul by W^T, rows (i, j, c_out), broadcast over the blocks
    of the ones before it: the tensor is [s₁², …, s_k²·C, H·W], the digits (i₁, j₁, …, i_k, j_k, c); a
    Transpose of whole C·H·W blocks orders them (i₁ … i_k, j₁ … j_k, c) and one DepthToSpace (DCR, block
    s₁·…·s_k) makes the image (a 7-D Transpose doing both took 1.8 ms on PP-OCRv4 det's 640×640 codes,
    DepthToSpace 0.3 ms). H, W are read at run time; `shape[1]`: the input channels."""
    from onnx import helper

    first = region[0]
    base = first.name or first.output[0]
    channels = shape[1]
    constant: dict[str, np.ndarray] = {f"{base}_rows_shape": np.array([channels, -1], np.int64)}
    nodes = [helper.make_node("Reshape", [first.input[0], f"{base}_rows_shape"], [f"{base}_rows"], name=f"{base}_rows"),
             helper.make_node("Shape", [first.input[0]], [f"{base}_size"], name=f"{base}_size", start=2)]
    current, strides = f"{base}_rows", []
    for node in region:
        out = f"{node.output[0]}_space_to_depth"
        if node.op_type != "ConvTranspose":
            nodes.append(helper.make_node(node.op_type, [current, *node.input[1:]], [out], name=node.name,
                                          domain=node.domain, **{a.name: helper.get_attribute_value(a)
                                                                 for a in node.attribute}))
            current = out
            continue
        w = numpy_helper.to_array(inits[node.input[1]])  # [C_in, C_out, s, s]
        c_in, c_out, s, _ = w.shape
        if c_in != channels:
            return None, []
        if strides:  # [blocks·C_in, HW] → [blocks, C_in, HW]: the same W^T for every block
            constant[f"{node.name}_blocks_shape"] = np.array([int(np.prod(strides)) ** 2, c_in, -1], np.int64)
            nodes.append(helper.make_node("Reshape", [current, f"{node.name}_blocks_shape"], [f"{out}_blocks"],
                                          name=f"{node.name}_blocks"))
            current = f"{out}_blocks"
        constant[f"{node.name}_matrix"] = w.transpose(2, 3, 1, 0).reshape(s * s * c_out, c_in).copy()
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = f"{out}_product" if has_bias else out
        nodes.append(helper.make_node("MatMul", [f"{node.name}_matrix", current], [product], name=node.name))
        if has_bias:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            constant[f"{node.name}_bias_rows"] = np.tile(bias, s * s).reshape(-1, 1)
            nodes.append(helper.make_node("Add", [product, f"{node.name}_bias_rows"], [out], name=f"{node.name}_bias"))
        current, channels = out, c_out
        strides.append(int(s))
    k, block = len(strides), int(np.prod(strides))
    last = region[-1].name
    if k > 1:  # digits (i₁, j₁, …, i_k, j_k) → (i₁ … i_k, j₁ … j_k): whole blocks of C·H·W move
        constant[f"{base}_digits"] = np.array([d for s in strides for d in (s, s)] + [-1], np.int64)
        nodes += [helper.make_node("Reshape", [current, f"{base}_digits"], [f"{base}_digit_axes"], name=f"{base}_digits"),
                  helper.make_node("Transpose", [f"{base}_digit_axes"], [f"{base}_ordered"], name=f"{base}_ordered",
                                   perm=[*range(0, 2 * k, 2), *range(1, 2 * k, 2), 2 * k])]
        current = f"{base}_ordered"
    constant[f"{base}_channels"] = np.array([1, block * block * channels], np.int64)
    nodes += [helper.make_node("Concat", [f"{base}_channels", f"{base}_size"], [f"{base}_grid_shape"],
                               name=f"{base}_grid_shape", axis=0),
              helper.make_node("Reshape", [current, f"{base}_grid_shape"], [f"{base}_grid"], name=f"{base}_grid"),
              helper.make_node("DepthToSpace", [f"{base}_grid"], [region[-1].output[0]], name=f"{last}_depth_to_space",
                               blocksize=block, mode="DCR")]
    return nodes, [numpy_helper.from_array(v, k) for k, v in constant.items()]

# --------------------------------------------------------------------------- tables (O2)

@dataclass(frozen=True)
class _Table:
    """A lookup table as the lowering writes it: [Transpose] → Cast<int32> → [Add offset] → Reshape(-1)
    → GatherElements(table) → Reshape → [Transpose back]."""

    cast: onnx.NodeProto
    add: onnx.NodeProto | None
    flatten: onnx.NodeProto
    gather: onnx.NodeProto
    unflatten: onnx.NodeProto
    before: onnx.NodeProto | None  # the Transpose into the table's layout
    after: onnx.NodeProto | None  # the Transpose back (its only reader)


def _tables(g: onnx.GraphProto) -> list[_Table]:
    readers = _consumers(g)
    outputs = {o.name for o in g.output}

    def only_reader(name: str, op_type: str) -> onnx.NodeProto | None:
        rs = readers.get(name, [])
        ok = len(rs) == 1 and rs[0].op_type == op_type and rs[0].domain in ("", "ai.onnx") and name not in outputs
        return rs[0] if ok else None

    producer = {o: n for n in g.node for o in n.output}
    found = []
    for cast in g.node:
        if cast.op_type != "Cast" or any(a.name == "to" and a.i != onnx.TensorProto.INT32 for a in cast.attribute):
            continue
        add = only_reader(cast.output[0], "Add")
        flatten = only_reader((add or cast).output[0], "Reshape") if add else only_reader(cast.output[0], "Reshape")
        gather = flatten and only_reader(flatten.output[0], "GatherElements")
        if gather is None or gather.input[1] != flatten.output[0]:
            continue
        unflatten = only_reader(gather.output[0], "Reshape")
        if unflatten is None:
            continue
        before = producer.get(cast.input[0])
        before = before if before is not None and before.op_type == "Transpose" else None
        after = only_reader(unflatten.output[0], "Transpose")
        found.append(_Table(cast, add, flatten, gather, unflatten, before, after))
    return found


def index_tables_directly(model: onnx.ModelProto) -> int:
    """int16 tables index with the codes themselves: GatherElements takes negative indices (counted
    from the end), so the table rolled by its offset, R = roll(T, −32 768), gives T[q + 32 768] at
    index q for every code q ∈ [−32 768, 32 767] — the Add of the offset goes (an int32 pass over the
    tensor: PP-OCRv4 det's first int16 table runs on 1×32×320×320). Checked on every code."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rewritten = 0
    for table in _tables(g):
        add = table.add
        if add is None or add.input[0] != table.cast.output[0] or add.input[1] not in inits \
                or table.gather.input[0] not in inits:
            continue
        offset = numpy_helper.to_array(inits[add.input[1]])
        values = numpy_helper.to_array(inits[table.gather.input[0]])
        if offset.size != 1 or offset.dtype != np.int32 or values.ndim != 1:
            continue
        codes = _code_range(g, table.cast.input[0], inits)
        if codes is None:
            continue
        o, n = int(offset.reshape(())), len(values)
        if codes[0] + o < 0 or codes[1] + o >= n or codes[0] < -n:
            continue
        rolled = numpy_helper.from_array(np.roll(values, -o), f"{table.gather.input[0]}_rolled")
        if not _table_codes_equal(table, rolled, inits, codes):
            continue
        table.flatten.input[0] = table.cast.output[0]
        table.gather.input[0] = rolled.name
        g.node.remove(add)
        g.initializer.append(rolled)
        rewritten += 1
    return rewritten


def _code_range(g: onnx.GraphProto, name: str, inits: Mapping[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """The integer range of the tensor `name` from its producer's zero-point dtype (QuantizeLinear) or
    a Transpose of one; None when unknown."""
    producer = {o: n for n in g.node for o in n.output}
    node = producer.get(name)
    while node is not None and node.op_type == "Transpose":
        node = producer.get(node.input[0])
    if node is None or node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
        return None
    dtype = numpy_helper.to_array(inits[node.input[2]]).dtype
    if dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _table_codes_equal(table: _Table, rolled: onnx.TensorProto, inits: Mapping[str, onnx.TensorProto],
                       codes: tuple[int, int]) -> bool:
    """Cast → Add → GatherElements(T) and Cast → GatherElements(roll(T)) on every code: equal? Kept by the
    two programs' bytes (`_checked`)."""
    from onnx import helper

    dtype = np.int16 if codes[0] < 0 and codes[1] > 127 else np.int8 if codes[0] < 0 else \
        np.uint16 if codes[1] > 255 else np.uint8
    x = np.arange(codes[0], codes[1] + 1).astype(dtype)
    out_type = inits[table.gather.input[0]].data_type
    programs = []
    for with_add in (True, False):
        nodes = [helper.make_node("Cast", ["x"], ["i"], to=onnx.TensorProto.INT32)]
        constants = [rolled]
        if with_add:
            nodes.append(helper.make_node("Add", ["i", table.add.input[1]], ["j"]))
            constants = [inits[table.add.input[1]], inits[table.gather.input[0]]]
        nodes.append(helper.make_node("GatherElements", [constants[-1].name, "j" if with_add else "i"], ["y"], axis=0))
        graph = helper.make_graph(nodes, "check", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(
            x.dtype), [len(x)])], [helper.make_tensor_value_info("y", out_type, [len(x)])], constants)
        programs.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return _checked(("same bits", programs, "x", [x], ["y"]), _runs_equal, programs, "x", [x], ["y"])


# readers of a table's codes that onnxruntime runs in NCHW only (no NHWC kernel to cancel a Transpose against)
NCHW_READERS = frozenset({"DequantizeLinear", "ConvInteger"})
# integer kernels onnxruntime runs in NHWC, transposing an NCHW input itself
NHWC_INTEGER_READERS = frozenset({"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool"})


def _itemsize(name: str, inits: Mapping[str, onnx.TensorProto]) -> int:
    t = inits.get(name)
    return 0 if t is None else onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def untranspose_float_side_tables(model: onnx.ModelProto) -> int:
    """A table whose codes a QuantizeLinear makes runs in the tensor's own layout. The lowering looks
    4-D codes up in NHWC (Transpose in, Transpose back) so that onnxruntime cancels the Transposes
    against its NHWC integer convs; codes from a QuantizeLinear (after float kernels: int16 tensors,
    emulated convs) are NCHW, and the Transpose in is a full copy. Without the two, when the readers
    are NCHW-only kernels (DequantizeLinear, ConvInteger) nothing is copied; when they are NHWC
    integer kernels and the table narrows the codes (int16 → uint8), onnxruntime's own Transpose
    moves the uint8 output instead of the int16 input (PP-OCRv4 det default, 1 thread: 58.1 →
    56.2 ms with the NCHW-only readers, 54.2 ms with both). A lookup is elementwise: without them it
    gives the same code at every position; the final Reshape then takes the NCHW shape."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers = _consumers(g)
    rewritten = 0
    for table in _tables(g):
        before, after = table.before, table.after
        if before is None or after is None:
            continue
        perm = next((list(a.ints) for a in before.attribute if a.name == "perm"), None)
        back = next((list(a.ints) for a in after.attribute if a.name == "perm"), None)
        if perm is None or back is None or [perm[i] for i in back] != list(range(len(perm))):
            continue
        source = producer.get(before.input[0])
        if source is None or source.op_type != "QuantizeLinear":
            continue
        narrowing = _itemsize(source.input[2], inits) > _itemsize(table.gather.input[0], inits)
        if not all(r.op_type in NCHW_READERS or (narrowing and r.op_type in NHWC_INTEGER_READERS)
                   for r in readers.get(after.output[0], [])):
            continue
        shape_of = producer.get(table.unflatten.input[1])  # the NHWC shape: a Shape of the Transpose, or a constant
        shape_reader = shape_of is not None and shape_of.op_type == "Shape" and shape_of.input[0] == before.output[0] \
            and len(shape_of.attribute) == 0 and len(readers.get(shape_of.output[0], [])) == 1
        expected = {table.cast.output[0]} | ({shape_of.output[0]} if shape_reader else set())
        if sorted(r.output[0] for r in readers.get(before.output[0], [])) != sorted(expected):
            continue
        if shape_reader:
            shape_of.input[0] = before.input[0]  # now the tensor's own (NCHW) shape
        elif table.unflatten.input[1] in inits:
            shape = numpy_helper.to_array(inits[table.unflatten.input[1]])
            if shape.ndim != 1 or len(shape) != len(perm) or np.any(shape <= 0):
                continue
            nchw = numpy_helper.from_array(shape[back].astype(np.int64), f"{table.unflatten.input[1]}_{after.name}")
            g.initializer.append(nchw)
            table.unflatten.input[1] = nchw.name
        else:
            continue
        table.cast.input[0] = before.input[0]
        table.unflatten.output[0] = after.output[0]
        g.node.remove(before)
        g.node.remove(after)
        rewritten += 1
    return rewritten


def dequantized_tables(model: onnx.ModelProto) -> int:
    """A table read only by DequantizeLinear (one scale and zero point, per tensor) holds the dequantized
    values instead: GatherElements of DQ(T) gives DQ(T[i]) at every index — DequantizeLinear is
    elementwise, and DQ(T) is computed by onnxruntime's own kernel — so the DequantizeLinear pass over
    the tensor goes (an int16 table's output before an emulated float conv: PP-OCRv4 det's first
    one runs on 1×32×320×320). The table grows to float32 (256 KB for 65 536 entries). Checked on
    every entry against the DequantizeLinear it replaces (onnxruntime's values kept by the program's bytes
    and the table's codes: `_checked`)."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    rewritten = 0
    for table in _tables(g):
        last = table.after or table.unflatten
        found = readers.get(last.output[0], [])
        if last.output[0] in outputs or not found or table.gather.input[0] not in inits:
            continue
        dq = found[0]
        params = list(dq.input[1:])
        if any(r.op_type != "DequantizeLinear" or r.domain != dq.domain or list(r.input[1:]) != params
               or r.output[0] in outputs and r is not dq for r in found) \
                or not params or any(p and p not in inits for p in params) \
                or numpy_helper.to_array(inits[params[0]]).size != 1:
            continue
        values = inits[table.gather.input[0]]
        graph = helper.make_graph(
            [helper.make_node("DequantizeLinear", ["codes", *params], ["values"], domain=dq.domain or None)], "dq",
            [helper.make_tensor_value_info("codes", values.data_type, list(values.dims))],
            [helper.make_tensor_value_info("values", onnx.TensorProto.FLOAT, None)], [inits[p] for p in params if p])
        opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx", dq.domain or "")]
        program = helper.make_model(graph, opset_imports=opsets).SerializeToString()
        codes = numpy_helper.to_array(values)
        dequantized = _checked(("dequantized", program, codes), _dequantized, program, codes, memo=_table_memo)
        if dequantized is None:  # onnxruntime refused the graph: keep the table as it is
            continue
        if dequantized.dtype != np.float32 or dequantized.shape != tuple(values.dims):
            continue
        name = f"{table.gather.input[0]}_dequantized"
        g.initializer.append(numpy_helper.from_array(dequantized, name))
        table.gather.input[0] = name
        last.output[0] = dq.output[0]
        for r in found:
            if r is not dq:
                _rename_input(g, r.output[0], dq.output[0])
            g.node.remove(r)
        _rename_in_node_map(model, {r.name: [table.gather.name] for r in found})
        rewritten += 1
    return rewritten


def _dequantized(program: bytes, codes: np.ndarray) -> np.ndarray | None:
    """The DequantizeLinear `program` on the table's `codes` (read-only: a kept answer), None when
    onnxruntime refuses it."""
    from engine.runtime.session import open_session

    try:
        values = open_session(program).run(None, {"codes": codes})[0]
    except Exception:  # onnxruntime's own exception types
        return None
    values.flags.writeable = False
    return values


# ------------------------------------------------------------------------ si32 head as QGemm (O2)

def si32_head_as_qgemm(model: onnx.ModelProto) -> int:
    """MatMulInteger (2-D codes × constant int8 B) → Add int32 bias → DequantizeLinear(scale s_n per
    column) — an si32 output dequantized — as one com.microsoft QGemm with a float output: A's scale 1,
    B's scale s_n, the int32 bias as C. QGemm adds C to the int32 accumulator and multiplies by
    fl(a_scale · b_scale_n) = s_n once, as DequantizeLinear computes fl(float(acc) · s_n); checked on
    random inputs. Three kernels → one (the digits classifier)."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    rewritten = 0
    for mm in list(g.node):
        if mm.op_type != "MatMulInteger" or mm.domain not in ("", "ai.onnx") or len(mm.input) < 3 \
                or mm.input[1] not in inits or mm.input[2] not in inits or (len(mm.input) > 3 and mm.input[3]):
            continue
        flat = producer.get(mm.input[0])
        if flat is None or flat.op_type != "Flatten":  # QGemm is 2-D
            continue
        b, a_zero_point = (numpy_helper.to_array(inits[n]) for n in mm.input[1:3])
        if b.dtype != np.int8 or b.ndim != 2 or a_zero_point.size != 1:
            continue
        chain = [mm]
        nxt = readers.get(mm.output[0], [])
        bias = None
        if len(nxt) == 1 and nxt[0].op_type == "Add" and mm.output[0] not in outputs:
            add = nxt[0]
            other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
            value = numpy_helper.to_array(inits[other]) if other in inits else None
            if value is None or value.dtype != np.int32 or value.shape not in ((b.shape[1],), (1, b.shape[1])):
                continue
            bias, chain = value.reshape(-1), chain + [add]
            nxt = readers.get(add.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "DequantizeLinear" or chain[-1].output[0] in outputs:
            continue
        dq = nxt[0]
        if dq.input[1] not in inits or (len(dq.input) > 2 and dq.input[2] and dq.input[2] not in inits):
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int32)
        if scale.dtype != np.float32 or np.any(zero != 0) or scale.size not in (1, b.shape[1]) \
                or (scale.size > 1 and _axis(dq) not in (1, -1)):
            continue
        base = dq.name or dq.output[0]
        constants = {f"{base}_one": np.array(1.0, np.float32),
                     f"{base}_column_scale": np.broadcast_to(scale.reshape(-1), (b.shape[1],)).astype(np.float32),
                     f"{base}_column_zero_point": np.zeros(b.shape[1], np.int8)}
        inputs = [mm.input[0], f"{base}_one", mm.input[2], mm.input[1], f"{base}_column_scale",
                  f"{base}_column_zero_point"]
        if bias is not None:
            constants[f"{base}_bias"] = bias.astype(np.int32)
            inputs.append(f"{base}_bias")
        qgemm = helper.make_node("QGemm", inputs, [dq.output[0]], name=dq.name, domain="com.microsoft")
        tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
        if not _qgemm_equal([*chain, dq], qgemm, tensors, inits, b.shape[0],
                            numpy_helper.to_array(inits[mm.input[2]]).dtype):
            continue
        index = list(g.node).index(mm)
        for n in (*chain, dq):
            g.node.remove(n)
        g.node.insert(index, qgemm)
        g.initializer.extend(tensors)
        _use_domain(model, "com.microsoft")
        _rename_in_node_map(model, {n.name: [qgemm.name] for n in chain})
        rewritten += 1
    return rewritten


def _qgemm_equal(original: list[onnx.NodeProto], qgemm: onnx.NodeProto, constants: list[onnx.TensorProto],
                 inits: Mapping[str, onnx.TensorProto], k: int, dtype: np.dtype, rows: int = 64) -> bool:
    """The MatMulInteger chain and the QGemm on seeded random codes (`rows` × K): equal bit for bit?"""
    return _same_bits(original, [qgemm], _random_codes(np.dtype(dtype), (rows, k), 4), [original[-1].output[0]],
                      inits, constants, domains=("com.microsoft",))


# ------------------------------------------------------------------ pooling and SiLU kernels (O2)

_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Identity", "Split",
                         "Slice", "Clip", "Concat", "NhwcMaxPool"})
# where a QLinear op's output zero point is (its dtype is the output's)
_ZERO_POINT_OF_OUTPUT = {"QuantizeLinear": 2, "QLinearConv": 7, "QLinearAdd": 7, "QLinearMul": 7, "QLinearLeakyRelu": 4,
                         "QLinearSigmoid": 4, "QLinearGlobalAveragePool": 4, "QLinearAveragePool": 4,
                         "QLinearSoftmax": 4}


def _code_dtype(g: onnx.GraphProto, name: str, inits: Mapping[str, onnx.TensorProto]) -> np.dtype | None:
    """The element type of the tensor `name` when it holds codes of a known integer type: read off the
    zero point of the QuantizeLinear / QLinear op that wrote it (through layout ops), a Cast, or a
    graph input; None when unknown or not an integer type."""
    producer = {o: n for n in g.node for o in n.output}
    elem = {i.name: i.type.tensor_type.elem_type for i in g.input}
    for _ in range(len(g.node) + 1):
        node = producer.get(name)
        if node is None:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem[name]) if elem.get(name) else None
            return dtype if dtype is not None and dtype.kind in "iu" else None
        if node.op_type in _LAYOUT_OPS:
            name = node.input[0]
            continue
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(to) if to else None
            return dtype if dtype is not None and dtype.kind in "iu" else None
        index = _ZERO_POINT_OF_OUTPUT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in inits:
            return None
        return numpy_helper.to_array(inits[node.input[index]]).dtype
    return None


def nhwc_max_pool(model: onnx.ModelProto) -> int:
    """MaxPool on 8-bit codes → Transpose → com.microsoft NhwcMaxPool → Transpose back. The maximum of
    codes is the code of the maximum (the encoding is monotone) in either layout; onnxruntime's NCHW
    MaxPool for uint8 is a generic per-element loop, its NhwcMaxPool vectorized over channels, and its
    layout transformer cancels the two Transposes against those of the NHWC integer convs around
    (PP-OCR cls's 2×2 pool on 1×200×2×96: ~70 µs → a few; whole cls .hbm 1.49 → 1.38 ms, 1 thread).
    Checked on seeded random codes before it is kept."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rewritten = 0
    for node in list(g.node):
        if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or len([o for o in node.output if o]) != 1:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "storage_order"}
        dtype = _code_dtype(g, node.input[0], inits)
        if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) or len(attrs.get("kernel_shape", [])) != 2:
            continue
        base = node.name or node.output[0]
        nhwc_in, nhwc_out = f"{base}_nhwc_in", f"{base}_nhwc_out"
        replacement = [helper.make_node("Transpose", [node.input[0]], [nhwc_in], name=f"{base}_to_nhwc", perm=[0, 2, 3, 1]),
                       helper.make_node("NhwcMaxPool", [nhwc_in], [nhwc_out], name=f"{base}_nhwc",
                                        domain="com.microsoft", **attrs),
                       helper.make_node("Transpose", [nhwc_out], [node.output[0]], name=node.name, perm=[0, 3, 1, 2])]
        if not _same_bits([node], replacement, _random_codes(dtype, (2, 5, 17, 19), 3), [node.output[0]], inits, [],
                          domains=("com.microsoft",)):
            continue
        _splice(model, node, replacement, [])
        _use_domain(model, "com.microsoft")
        rewritten += 1
    return rewritten


def silu_as_quick_gelu(model: onnx.ModelProto) -> int:
    """SiLU on dequantized codes, DequantizeLinear → Sigmoid and Mul(x, Sigmoid(x)) (the lowering's
    float form of an 8-bit SiLU), → one com.microsoft QuickGelu (alpha 1): x · sigmoid(1·x) with
    onnxruntime's same logistic kernel, in one pass and with one DequantizeLinear (onnxruntime copies a
    DequantizeLinear read by two nodes at load time). Kept only if its float output equals the pair's
    bit for bit on every code of the input type, and on seeded random codes of an odd-sized tensor
    (the vector loops' tails). The digits model: 5 kernels → 3."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    rewritten = 0
    for mul in list(g.node):
        if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2:
            continue
        sig = next((producer.get(i) for i in mul.input if producer.get(i) is not None
                    and producer[i].op_type == "Sigmoid" and producer[i].domain in ("", "ai.onnx")), None)
        if sig is None or sig.output[0] in outputs or len(readers.get(sig.output[0], [])) != 1:
            continue
        other = mul.input[1] if mul.input[0] == sig.output[0] else mul.input[0]
        dq_x, dq_s = producer.get(other), producer.get(sig.input[0])
        if dq_x is None or dq_s is None or dq_x.op_type != "DequantizeLinear" or dq_s.op_type != "DequantizeLinear" \
                or (dq_x is not dq_s and (list(dq_x.input) != list(dq_s.input) or dq_x.domain != dq_s.domain
                                          or _axis(dq_x) != _axis(dq_s))):
            continue
        if len(dq_x.input) < 3 or dq_x.input[1] not in inits or dq_x.input[2] not in inits \
                or numpy_helper.to_array(inits[dq_x.input[1]]).size != 1:
            continue
        dtype = numpy_helper.to_array(inits[dq_x.input[2]]).dtype
        if dtype not in _TENSOR_TYPE:
            continue
        quick = helper.make_node("QuickGelu", [dq_x.output[0]], [mul.output[0]], name=mul.name or f"{sig.name}_silu",
                                 domain="com.microsoft", alpha=1.0)
        original = [dq_x] + ([dq_s] if dq_s is not dq_x else []) + [sig, mul]
        info = np.iinfo(dtype)
        every_code = np.arange(int(info.min), int(info.max) + 1).astype(dtype).reshape(1, 1, 1, -1)
        if not (_same_bits(original, [dq_x, quick], [every_code], [mul.output[0]], inits, [], domains=("com.microsoft",))
                and _same_bits(original, [dq_x, quick], _random_codes(dtype, (1, 7, 13, 17), 2), [mul.output[0]],
                               inits, [], domains=("com.microsoft",))):
            continue
        g.node.remove(sig)
        index = list(g.node).index(mul)
        g.node.remove(mul)
        g.node.insert(index, quick)
        _use_domain(model, "com.microsoft")
        _rename_in_node_map(model, {sig.name: [quick.name], mul.name: [quick.name]})
        rewritten += 1
    return rewritten


def _use_domain(model: onnx.ModelProto, domain: str) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))


# ------------------------------------------------------------------------ onnxruntime offline

def _ort_basic(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    import onnxruntime as ort

    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = path
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(VALUE_CHANGING_REWRITES))
        optimized = onnx.load(path)
    except Exception as e:  # onnxruntime's own exception types
        return None, f"onnxruntime could not optimize the program ({str(e).splitlines()[0] if str(e) else e})"
    finally:
        os.unlink(path)
    optimized.ClearField("metadata_props")
    optimized.metadata_props.extend(model.metadata_props)
    used = {n.domain or "" for n in optimized.graph.node} | {""}  # onnxruntime lists every domain it knows
    kept = [o for o in optimized.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized, ""


def bit_identical(a: onnx.ModelProto, b: onnx.ModelProto,
                  feeds: list[Mapping[str, np.ndarray]] | None = None) -> tuple[bool, str]:
    """Both programs on the same seeded inputs (or `feeds`): every output equal bit for bit?"""
    from engine.runtime.feeds import random_feeds
    from engine.runtime.session import open_session

    sa, sb = open_session(a.SerializeToString()), open_session(b.SerializeToString())
    names = [o.name for o in sa.get_outputs()]
    if names != [o.name for o in sb.get_outputs()]:
        return False, "the optimized program has other outputs"
    for feed in feeds or [random_feeds(sa.get_inputs(), seed) for seed in CHECK_SEEDS]:
        for name, x, y in zip(names, sa.run(names, dict(feed)), sb.run(names, dict(feed))):
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False, f"output '{name}' differs after onnxruntime's optimizations"
    return True, ""
