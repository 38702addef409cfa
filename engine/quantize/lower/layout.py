"""Ops that move or select codes: they run on the integer tensor itself, no arithmetic.

    Reshape Flatten Squeeze Unsqueeze Transpose Slice Split DepthToSpace SpaceToDepth Identity
    Expand Tile Gather   → the same op on uint8 (or int16) codes
    MaxPool ReduceMax ReduceMin GlobalMaxPool   → on codes: a monotone encoding commutes with max
    Resize (nearest)    → on codes (linear/cubic interpolate: emulated, onnxruntime's uint8
                          linear Resize truncates instead of rounding half to even); an upsampling
                          that repeats every pixel f_h × f_w times runs as Expand on NHWC codes
                          (`_replication`: 2 ms → 0.05 ms on 1×96×80×80 ×2, see `replicate`)
    Pad (constant)      → on codes, the pad value quantized (0.0 is code 128)
    Relu / Clip         → Clip on codes at Q(lo), Q(hi): Q is monotone, so Q(clip(x)) = clip(Q(x));
                          with another output scale, onnxruntime's QLinearLeakyRelu (alpha 0 or 1)
                          when its lookup table is the clamp-and-requantize table at every code

The output keeps the input's encoding; if the plan gives it another, a requantization table follows.
"""

from __future__ import annotations

import numpy as np
import onnx

from engine.quantize import luts
from engine.quantize.lower.builder import Builder, QTensor, attr
from engine.quantize.lower.encoding import Encoding

ON_CODES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split",
                      "DepthToSpace", "SpaceToDepth", "Identity", "Expand", "Tile", "Gather", "MaxPool",
                      "ReduceMax", "ReduceMin", "GlobalMaxPool", "Resize", "Pad"})
# onnxruntime's CPU kernels for these take int16 as well; the others are uint8/int8 only
INT16_OK = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split",
                      "Identity", "Expand", "Tile", "Gather"})


def on_codes(b: Builder, node: onnx.NodeProto) -> str | None:
    """Run a data-movement / max op on the integer form of its data input."""
    data = node.input[0]
    enc = b.encoding_of(data)
    refusal = _refusal(node, enc)
    if refusal:
        return refusal
    x = b.int_of(data)
    inputs = [x.name] + [b.float_of(i) if i else "" for i in node.input[1:]]
    if node.op_type == "Pad":
        inputs = _pad_inputs(b, node, x)
    outputs = [o for o in node.output if o]
    moved = {o: (b.define_int(o, x.enc) if _keeps(b, o, x.enc) else b.define_int(o, x.enc, "_moved"))
             for o in outputs}
    with b.lowering(node.name):
        factors = _replication(b, node) if node.op_type == "Resize" else None
        if node.op_type == "GlobalMaxPool":
            _reduce_max(b, node, x, moved[outputs[0]])
        elif factors is not None:
            replicate(b, x.name, moved[outputs[0]].name, b.shapes[data], factors, node.name)
        else:
            b.copy_node(node, inputs, [moved[o].name if o else "" for o in node.output])
        for o in outputs:
            if not _keeps(b, o, x.enc):
                b.requantize(moved[o], o, b.planned(o), name=b.fresh(f"{o}_requantize"))
    return None


def clamp(b: Builder, node: onnx.NodeProto) -> str | None:
    """Relu / Clip as a Clip on codes; a different output scale adds a requantization after it
    (Q_out(DQ_in(clip(q))) = Q_out(clip(x)): the clamp commutes with the monotone encoding)."""
    from engine.quantize.lower.lut import lut_node

    enc = b.encoding_of(node.input[0])
    out_enc = b.planned(node.output[0]) or enc
    if enc is None or enc.dtype != "uint8" or enc.per_channel or out_enc.per_channel:
        return lut_node(b, node)
    bounds = clamp_bounds(b, node)
    if bounds is None:
        return "Clip bounds are not constant"
    lo, hi = bounds
    x = b.int_of(node.input[0])
    same = out_enc.same_as(enc)
    if not same and out_enc.dtype == "uint8":  # clamp and requantize in one lookup kernel when one is exact
        kernel = b.lookup_kernel(enc, out_enc, luts.build_table(lambda v: np.clip(v, lo, hi), enc, out_enc),
                                 ("QLinearLeakyRelu", {"alpha": 0.0}), ("QLinearLeakyRelu", {"alpha": 1.0}))
        if kernel is not None:
            with b.lowering(node.name):
                b.emit_lookup_kernel(kernel, x, b.define_int(node.output[0], out_enc), node.name)
            return None
    out = b.define_int(node.output[0], enc) if same else b.define_int(node.output[0], enc, "_clamped")
    with b.lowering(node.name):
        emit_clamp(b, x, out, lo, hi, name=node.name)
        if not same:
            b.requantize(out, node.output[0], out_enc, name=b.fresh(f"{node.output[0]}_requantize"))
    return None


def emit_clamp(b: Builder, x: QTensor, out: QTensor, lo: float | None, hi: float | None,
               name: str | None = None) -> None:
    """out = clip(x, Q(lo), Q(hi)) on uint8 codes; a plain Identity when nothing is clipped."""
    qlo = int(x.enc.quantize(np.float32(lo))) if lo is not None else x.enc.qmin
    qhi = int(x.enc.quantize(np.float32(hi))) if hi is not None else x.enc.qmax
    if qlo <= x.enc.qmin and qhi >= x.enc.qmax:
        b.emit("Identity", [x.name], [out.name], name)
        return
    dtype = x.enc.np_dtype
    lo_name = b.const(f"{out.name}_min", np.array(qlo, dtype)) if qlo > x.enc.qmin else ""
    hi_name = b.const(f"{out.name}_max", np.array(qhi, dtype)) if qhi < x.enc.qmax else ""
    b.emit("Clip", [x.name, lo_name, hi_name] if hi_name else [x.name, lo_name], [out.name], name)


def clamp_bounds(b: Builder, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
    """(lo, hi) of a Relu / Clip (None = unbounded side), or None when a bound is not constant."""
    if node.op_type == "Relu":
        return 0.0, None
    bounds = [attr(node, "min"), attr(node, "max")]
    for k, name in enumerate(node.input[1:3]):
        if name:
            v = b.constant_value(name)
            if v is None:
                return None
            bounds[k] = float(v)
    return bounds[0], bounds[1]


def _keeps(b: Builder, out: str, enc: Encoding) -> bool:
    planned = b.planned(out)
    return planned is None or planned.same_as(enc)


def _refusal(node: onnx.NodeProto, enc: Encoding | None) -> str | None:
    if enc is None:
        return None  # int_of will name the planner bug
    if enc.per_channel and node.op_type not in ("Identity", "MaxPool", "Resize", "Pad", "Slice"):
        return "a per-channel activation cannot move channels on codes"
    if enc.dtype == "int16" and node.op_type not in INT16_OK:
        return f"onnxruntime's {node.op_type} kernel has no int16 form"
    if enc.dtype not in ("uint8", "int16"):
        return f"{enc.dtype} input"
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return "MaxPool with an Indices output"
    if node.op_type == "Resize" and _text(attr(node, "mode", "nearest")) != "nearest":
        return "Resize in linear/cubic mode interpolates (onnxruntime's uint8 kernel truncates)"
    return None


def _pad_inputs(b: Builder, node: onnx.NodeProto, x: QTensor) -> list[str]:
    """Pad's inputs with the pad value as a code (the default 0.0 is the zero point, not code 0)."""
    inputs = [x.name] + [b.float_of(i) if i else "" for i in node.input[1:2]]
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        v = b.constant_value(node.input[2])
        value = float(v) if v is not None else 0.0
    code = x.enc.quantize(np.float32(value)).reshape(())
    if x.enc.per_channel:
        code = np.asarray(x.enc.zero_point, x.enc.np_dtype)
    inputs.append(b.const(f"{node.output[0]}_pad_value", np.asarray(code, x.enc.np_dtype)))
    inputs += [b.float_of(i) if i else "" for i in node.input[3:]]
    return inputs


def _replication(b: Builder, node: onnx.NodeProto) -> tuple[int, int] | None:
    """(f_h, f_w) when this nearest Resize repeats every pixel of a static N×C×H×W input f_h × f_w
    times (N, C unchanged), else None.

    Which source pixel each output pixel takes depends on coordinate_transformation_mode,
    nearest_mode, scales or sizes; rather than re-deriving onnxruntime's index arithmetic, its
    own Resize is run on a ramp (pixel value = its index) with the node's attributes, and the
    answer must be exactly the repeated ramp.
    """
    shape = b.shapes.get(node.input[0])
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    if attr(node, "axes") is not None or _text(attr(node, "coordinate_transformation_mode", "half_pixel")) \
            == "tf_crop_and_resize":
        return None
    scales = b.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = b.constant_value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if (scales is None or scales.size == 0) == (sizes is None or sizes.size == 0):
        return None
    n, c, h, w = shape
    if sizes is not None and sizes.size:
        out = [int(v) for v in sizes.reshape(-1)]
    else:
        out = [int(np.floor(d * float(s))) for d, s in zip(shape, scales.reshape(-1))]
        if len(out) == 4 and not all(float(s).is_integer() for s in scales.reshape(-1)):
            return None
    if len(out) != 4 or out[:2] != [n, c] or out[2] % h or out[3] % w or (out[2] // h, out[3] // w) == (1, 1):
        return None
    factors = (out[2] // h, out[3] // w)
    ramp = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
    expected = np.repeat(np.repeat(ramp, factors[0], axis=2), factors[1], axis=3)
    return factors if np.array_equal(_ort_resize(node, ramp, scales, sizes), expected) else None


def _ort_resize(node: onnx.NodeProto, x: np.ndarray, scales: np.ndarray | None, sizes: np.ndarray | None) -> np.ndarray:
    """onnxruntime's Resize with `node`'s attributes on a 1×1×H×W float `x` (N, C scales 1)."""
    from onnx import TensorProto, helper, numpy_helper

    from engine.runtime.session import open_session

    inits, inputs = [], ["x", ""]
    if sizes is not None and sizes.size:
        inits.append(numpy_helper.from_array(np.array([1, 1, *sizes.reshape(-1)[2:]], np.int64), "sizes"))
        inputs += ["", "sizes"]
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, *scales.reshape(-1)[2:]], np.float32), "scales"))
        inputs += ["scales"]
    resize = helper.make_node("Resize", inputs, ["y"], **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([resize], "replication", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return open_session(model, what="onnxruntime's Resize").run(None, {"x": x})[0]


def replicate(b: Builder, x: str, out: str, shape: list[int], factors: tuple[int, int], name: str) -> None:
    """Nearest upsampling by whole factors as data movement on NHWC codes:

        Transpose(N,H,W,C) → Reshape(N,H,1,W,1,C) → Expand(N,H,f_h,W,f_w,C) → Reshape → Transpose(N,C,H',W')

    The Expand copies runs of C contiguous bytes (onnxruntime's Resize computes every output
    pixel's source index); the Transposes cancel against the NHWC layout onnxruntime gives the
    integer convolutions around it, so the program runs no Transpose here.
    """
    n, c, h, w = shape
    fh, fw = factors
    nhwc, grid, big, up = (b.fresh(f"{out}_{s}") for s in ("nhwc", "grid", "repeated", "nhwc_up"))
    b.emit("Transpose", [x], [nhwc], perm=[0, 2, 3, 1])
    b.emit("Reshape", [nhwc, b.const(f"{out}_grid_shape", np.array([n, h, 1, w, 1, c], np.int64))], [grid])
    b.emit("Expand", [grid, b.const(f"{out}_repeats", np.array([n, h, fh, w, fw, c], np.int64))], [big], name)
    b.emit("Reshape", [big, b.const(f"{out}_up_shape", np.array([n, h * fh, w * fw, c], np.int64))], [up])
    b.emit("Transpose", [up], [out], perm=[0, 3, 1, 2])


def _reduce_max(b: Builder, node: onnx.NodeProto, x: QTensor, out: QTensor) -> None:
    """GlobalMaxPool as ReduceMax over the spatial axes (onnxruntime's GlobalMaxPool is float only)."""
    rank = b.rank(node.input[0]) or 4
    axes = list(range(2, rank))
    if b.opset >= 18:
        b.emit("ReduceMax", [x.name, b.const(f"{out.name}_axes", np.array(axes, np.int64))], [out.name],
               node.name, keepdims=1)
    else:
        b.emit("ReduceMax", [x.name], [out.name], node.name, axes=axes, keepdims=1)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
