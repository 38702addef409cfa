"""Caffe layer -> ONNX nodes: one function per layer type, registered in `CONVERTERS`.

Each function gets a `Ctx` (the layer, its input tensors, the names its tops must get, the graph
being built) and returns the tensor of each top. Caffe's own semantics (from BVLC's layer sources)
are stated where ONNX differs: pooling's output rounding and averaging window, BatchNorm's
moving-average factor, Scale's broadcast axes, Reshape's 0 / -1 dims.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.frontend.caffe import proto
from engine.frontend.caffe.graph import Graph
from engine.frontend.caffe.reader import Layer, model_error


@dataclass
class Ctx:
    layer: Layer
    g: Graph
    bottoms: list[str]  # tensors read, one per bottom blob
    tops: list[str]  # tensor names to write, one per top blob (of `fused_scale` when set)
    caffemodel: str
    prototxt: str
    fused_scale: Layer | None = None  # BatchNorm only: the Scale layer folded into it

    @property
    def param(self):
        return self.layer.param

    def shape(self, i: int = 0) -> list[int]:
        return self.g.shape(self.bottoms[i])

    def node(self, op: str, inputs: Sequence[str], out: str | None = None, suffix: str | None = None,
             **attrs) -> str:
        """A one-output node named after the layer (`<layer>_<suffix>` for helper nodes)."""
        name = self.layer.name if suffix is None else f"{self.layer.name}_{suffix}"
        out = out or self.g.tensors.unique(name)
        self.g.node(op, inputs, [out], name, **attrs)
        return out

    def const(self, suffix: str, value) -> str:
        return self.g.const(f"{self.layer.name}_{suffix}", np.asarray(value))

    def fail(self, what: str) -> Exception:
        return model_error("caffe-layer-invalid", f"Caffe layer '{self.layer.name}' (type {self.layer.type}) in "
                           f"{self.prototxt}: {what}", "prototxt")

    def expect_blobs(self, count: int, layer: Layer | None = None) -> None:
        layer = layer or self.layer
        if len(layer.blobs) != count:
            found = "no blobs" if not layer.blobs else f"{len(layer.blobs)} blobs"
            raise model_error("caffe-blob-count", f"Caffe model file {self.caffemodel}: layer '{layer.name}' "
                              f"(type {layer.type}) has {found}, expected {count}")

    def blob(self, index: int, expected: Sequence[int], what: str, layer: Layer | None = None) -> np.ndarray:
        """Blob `index`, checked against the shape the layer's parameters and input imply."""
        layer = layer or self.layer
        data = layer.blobs[index].data
        if not _same_shape(data.shape, expected):
            raise model_error("caffe-blob-shape", f"Caffe model file {self.caffemodel}: layer '{layer.name}' blob "
                              f"{index} ({what}) has shape {list(data.shape)}, expected {list(expected)}")
        return data.reshape(expected)


def _same_shape(found: Sequence[int], expected: Sequence[int]) -> bool:
    """Equal up to leading 1s: legacy blobs are 4-D (1 x 1 x N x K for an InnerProduct weight)."""
    def strip(s):
        s = list(s)
        while s and s[0] == 1:
            s.pop(0)
        return s
    return strip(found) == strip(expected)


def _axis(ctx: Ctx, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"{what} {axis} is out of range for a {rank}-D input")
    return axis % rank


def _spatial(ctx: Ctx, what: str, values: Sequence[int], hw: tuple[int, int] | None, n: int,
             default: int | None) -> list[int]:
    """Caffe's per-axis parameter forms: `what` once or per spatial axis, or `what_h` + `what_w`."""
    if hw is not None:
        if n != 2:
            raise ctx.fail(f"{what}_h / {what}_w need a 2-D spatial input, this one has {n} spatial axes")
        if values:
            raise ctx.fail(f"give either {what} or {what}_h and {what}_w, not both")
        return list(hw)
    if not values:
        if default is None:
            raise ctx.fail(f"{what} is required")
        return [default] * n
    if len(values) == 1:
        return [int(values[0])] * n
    if len(values) != n:
        raise ctx.fail(f"{what} has {len(values)} values for {n} spatial axes")
    return [int(v) for v in values]


def _hw(p, what: str) -> tuple[int, int] | None:
    h, w = f"{what}_h", f"{what}_w"
    return (getattr(p, h), getattr(p, w)) if p.HasField(h) or p.HasField(w) else None


# ---- learned layers ---------------------------------------------------------------------------

def convolution(ctx: Ctx, transpose: bool = False) -> list[str]:
    """Conv / ConvTranspose. Caffe's weight layouts equal ONNX's: (out, in/g, k...) for
    convolution, (in, out/g, k...) for deconvolution; output sizes use the same formulas."""
    p = ctx.param.convolution_param
    x = ctx.shape()
    if _axis(ctx, p.axis, len(x)) != 1:
        raise ctx.fail(f"axis {p.axis} is not supported (only the channel axis 1)")
    n = len(x) - 2
    kernel = _spatial(ctx, "kernel", p.kernel_size, _hw(p, "kernel"), n, None)
    pads = _spatial(ctx, "pad", p.pad, _hw(p, "pad"), n, 0)
    strides = _spatial(ctx, "stride", p.stride, _hw(p, "stride"), n, 1)
    dilations = _spatial(ctx, "dilation", p.dilation, None, n, 1)
    cin, cout, group = x[1], p.num_output, p.group
    if not cout:
        raise ctx.fail("num_output is required")
    if cin % group or cout % group:
        raise ctx.fail(f"group {group} does not divide input channels {cin} and num_output {cout}")
    ctx.expect_blobs(2 if p.bias_term else 1)
    wshape = [cin, cout // group, *kernel] if transpose else [cout, cin // group, *kernel]
    inputs = [ctx.bottoms[0], ctx.const("weight", ctx.blob(0, wshape, "weights"))]
    if p.bias_term:
        inputs.append(ctx.const("bias", ctx.blob(1, [cout], "bias")))
    ctx.node("ConvTranspose" if transpose else "Conv", inputs, ctx.tops[0], kernel_shape=kernel,
             pads=pads + pads, strides=strides, dilations=dilations, group=group)
    return ctx.tops


def deconvolution(ctx: Ctx) -> list[str]:
    return convolution(ctx, transpose=True)


def inner_product(ctx: Ctx) -> list[str]:
    """y = x' W^T + b with x' = x flattened from `axis`: output shape x[:axis] + [num_output].
    Gemm when `axis` is 1 (the common case); Reshape + MatMul + Add otherwise."""
    p = ctx.param.inner_product_param
    x = ctx.shape()
    axis = _axis(ctx, p.axis, len(x))
    k, n = int(np.prod(x[axis:])), p.num_output
    if not n:
        raise ctx.fail("num_output is required")
    ctx.expect_blobs(2 if p.bias_term else 1)
    w = ctx.blob(0, [k, n] if p.transpose else [n, k], "weights")
    bias = ctx.blob(1, [n], "bias") if p.bias_term else None
    src = ctx.bottoms[0]
    if axis == 1:
        if len(x) > 2:
            src = ctx.node("Flatten", [src], suffix="flatten", axis=1)
        inputs = [src, ctx.const("weight", w)] + ([ctx.const("bias", bias)] if bias is not None else [])
        ctx.node("Gemm", inputs, ctx.tops[0], transB=0 if p.transpose else 1)
        return ctx.tops
    if len(x) != axis + 1:
        src = ctx.node("Reshape", [src, ctx.const("shape", x[:axis] + [k])], suffix="reshape")
    wk = w if p.transpose else w.T
    if bias is None:
        ctx.node("MatMul", [src, ctx.const("weight", wk)], ctx.tops[0])
    else:
        mm = ctx.node("MatMul", [src, ctx.const("weight", wk)], suffix="matmul")
        ctx.node("Add", [mm, ctx.const("bias", bias)], ctx.tops[0])
    return ctx.tops


def batch_norm(ctx: Ctx) -> list[str]:
    """Caffe BatchNorm: blobs mean, variance and a moving-average factor s; the statistics are
    blob / s (0 when s == 0). use_global_stats (the default in the TEST phase) uses them; false
    normalizes with the batch's own statistics. A following Scale may be folded in as gamma / beta."""
    p = ctx.param.batch_norm_param
    x = ctx.shape()
    c = x[1] if len(x) > 1 else 1
    ctx.expect_blobs(3)
    mean, var = ctx.blob(0, [c], "mean"), ctx.blob(1, [c], "variance")
    factor = float(ctx.blob(2, [1], "moving average factor")[0])
    f = 0.0 if factor == 0 else 1.0 / factor
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    if ctx.fused_scale is not None:
        gamma, beta = _scale_blobs(ctx, ctx.fused_scale, [c])
    global_stats = p.use_global_stats if p.HasField("use_global_stats") else True
    if global_stats:
        ctx.node("BatchNormalization", [ctx.bottoms[0], ctx.const("gamma", gamma), ctx.const("beta", beta),
                                        ctx.const("mean", mean * f), ctx.const("var", var * f)],
                 ctx.tops[0], epsilon=float(p.eps))
        return ctx.tops
    axes = [0] + list(range(2, len(x)))
    bshape = [c] + [1] * (len(x) - 2)
    mu = ctx.node("ReduceMean", [ctx.bottoms[0]], suffix="mean", axes=axes, keepdims=1)
    d = ctx.node("Sub", [ctx.bottoms[0], mu], suffix="center")
    v = ctx.node("ReduceMean", [ctx.node("Mul", [d, d], suffix="square")], suffix="var", axes=axes, keepdims=1)
    std = ctx.node("Sqrt", [ctx.node("Add", [v, ctx.const("eps", np.float32(p.eps))], suffix="var_eps")],
                   suffix="std")
    if ctx.fused_scale is None:
        ctx.node("Div", [d, std], ctx.tops[0])
        return ctx.tops
    y = ctx.node("Div", [d, std])
    y = ctx.node("Mul", [y, ctx.const("gamma", gamma.reshape(bshape))], suffix="gamma")
    ctx.node("Add", [y, ctx.const("beta", beta.reshape(bshape))], ctx.tops[0], suffix="beta")
    return ctx.tops


def _scale_blobs(ctx: Ctx, layer: Layer, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    p = layer.param.scale_param
    ctx.expect_blobs(2 if p.bias_term else 1, layer)
    scale = ctx.blob(0, shape, "scale", layer)
    bias = ctx.blob(1, shape, "bias", layer) if p.bias_term else np.zeros(shape, np.float32)
    return scale, bias


def scale(ctx: Ctx) -> list[str]:
    """Caffe Scale: y = x * s (+ b), s spanning input axes [axis, axis + num_axes) and broadcast
    over the rest; s is a learned blob, or the second bottom (then b, if any, is the only blob)."""
    p = ctx.param.scale_param
    x = ctx.shape()
    axis = _axis(ctx, p.axis, len(x)) if x else 0
    if len(ctx.bottoms) == 2:
        s_shape = ctx.shape(1)
        if x[axis:axis + len(s_shape)] != s_shape:
            raise ctx.fail(f"second bottom of shape {s_shape} does not match input axes {axis}.. of shape {x}")
        trailing = [1] * (len(x) - axis - len(s_shape))
        s = ctx.bottoms[1]
        if trailing:
            s = ctx.node("Reshape", [s, ctx.const("scale_shape", s_shape + trailing)], suffix="scale_reshape")
        ctx.expect_blobs(1 if p.bias_term else 0)
        bias = ctx.blob(0, s_shape, "bias") if p.bias_term else None
    else:
        if p.num_axes < -1:
            raise ctx.fail(f"num_axes {p.num_axes} must be -1 or more")
        end = len(x) if p.num_axes == -1 else axis + p.num_axes
        if end > len(x):
            raise ctx.fail(f"axis {p.axis} + num_axes {p.num_axes} exceed the {len(x)}-D input")
        s_shape = x[axis:end]
        trailing = [1] * (len(x) - end)
        s_blob, bias = _scale_blobs(ctx, ctx.layer, s_shape)
        bias = bias if p.bias_term else None
        s = ctx.const("scale", s_blob.reshape(s_shape + trailing))
    if bias is None:
        ctx.node("Mul", [ctx.bottoms[0], s], ctx.tops[0])
        return ctx.tops
    y = ctx.node("Mul", [ctx.bottoms[0], s])
    ctx.node("Add", [y, ctx.const("bias", bias.reshape(s_shape + trailing))], ctx.tops[0], suffix="bias")
    return ctx.tops


def prelu(ctx: Ctx) -> list[str]:
    """One slope per channel (axis 1), or one in all (channel_shared)."""
    x = ctx.shape()
    c = x[1] if len(x) > 1 else 1
    ctx.expect_blobs(1)
    if ctx.param.prelu_param.channel_shared:
        slope = ctx.blob(0, [], "slope").reshape([1])
    else:
        slope = ctx.blob(0, [c], "slope").reshape([c] + [1] * max(len(x) - 2, 0))
    ctx.node("PRelu", [ctx.bottoms[0], ctx.const("slope", slope)], ctx.tops[0])
    return ctx.tops


# ---- activations and elementwise --------------------------------------------------------------

def relu(ctx: Ctx) -> list[str]:
    slope = ctx.param.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", ctx.bottoms[:1], ctx.tops[0], alpha=float(slope))
    else:
        ctx.node("Relu", ctx.bottoms[:1], ctx.tops[0])
    return ctx.tops


def _unary(op: str) -> Callable[[Ctx], list[str]]:
    def convert(ctx: Ctx) -> list[str]:
        ctx.node(op, ctx.bottoms[:1], ctx.tops[0])
        return ctx.tops
    convert.__doc__ = f"ONNX {op}."
    return convert


def elu(ctx: Ctx) -> list[str]:
    ctx.node("Elu", ctx.bottoms[:1], ctx.tops[0], alpha=float(ctx.param.elu_param.alpha))
    return ctx.tops


def power(ctx: Ctx) -> list[str]:
    """y = (shift + scale * x) ^ power; identity steps are left out."""
    p = ctx.param.power_param
    steps: list[tuple[str, str, float]] = []
    if p.scale != 1:
        steps.append(("Mul", "scale", p.scale))
    if p.shift != 0:
        steps.append(("Add", "shift", p.shift))
    if p.power != 1:
        steps.append(("Pow", "power", p.power))
    if not steps:
        return ctx.bottoms[:1]
    y = ctx.bottoms[0]
    for i, (op, what, value) in enumerate(steps):
        last = i == len(steps) - 1
        y = ctx.node(op, [y, ctx.const(what, np.float32(value))], ctx.tops[0] if last else None,
                     None if last else what)
    return ctx.tops


def eltwise(ctx: Ctx) -> list[str]:
    """SUM (with optional per-bottom coeff), PROD, MAX over same-shaped bottoms."""
    p = ctx.param.eltwise_param
    op = p.operation
    xs = list(ctx.bottoms)
    shapes = [ctx.shape(i) for i in range(len(xs))]
    if any(s != shapes[0] for s in shapes):
        raise ctx.fail(f"bottoms must have one shape (Caffe does not broadcast), got {shapes}")
    if op == proto.EltwiseOp["MAX"].number:
        ctx.node("Max", xs, ctx.tops[0])
        return ctx.tops
    if op == proto.EltwiseOp["SUM"].number:
        coeff = list(p.coeff) or [1.0] * len(xs)
        if len(coeff) != len(xs):
            raise ctx.fail(f"{len(coeff)} coeff values for {len(xs)} bottoms")
        if len(xs) == 2 and coeff == [1.0, -1.0]:
            ctx.node("Sub", xs, ctx.tops[0])
            return ctx.tops
        xs = [x if c == 1 else ctx.node("Mul", [x, ctx.const(f"coeff{i}", np.float32(c))], suffix=f"coeff{i}")
              for i, (x, c) in enumerate(zip(xs, coeff, strict=True))]
        binary = "Add"
    elif op == proto.EltwiseOp["PROD"].number:
        binary = "Mul"
    else:
        raise ctx.fail(f"operation {op} is not supported")
    if len(xs) == 1:
        ctx.node("Identity", xs, ctx.tops[0])
        return ctx.tops
    y = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        last = i == len(xs) - 1
        y = ctx.node(binary, [y, x], ctx.tops[0] if last else None, None if last else f"{binary.lower()}{i}")
    return ctx.tops


# ---- pooling ----------------------------------------------------------------------------------

def pooling(ctx: Ctx) -> list[str]:
    """Caffe pooling on (N, C, H, W).

    Output size: ceil((H + 2p - k) / s) + 1 (floor with round_mode FLOOR), then, when any pad is
    set, one less if the last window would start at or beyond H + p. MAX ignores padding. AVE sums
    the window (padding counts as 0) and divides by the window clipped to the padded input
    [-p, H + p): windows that hang over H + p (ceil rounding) divide by less than k.

    ONNX: explicit begin pads p and end pads e = (out - 1) * s + k - H - p, floor rounding. AVE:
    if no window passes H + p, AveragePool counting pads; if p == 0, AveragePool not counting
    pads; otherwise a zero Pad of the Caffe padding first, then AveragePool not counting its own
    end pad.
    """
    p = ctx.param.pooling_param
    x = ctx.shape()
    if len(x) != 4:
        raise ctx.fail(f"pooling needs a 4-D (N, C, H, W) input, got shape {x}")
    if p.pool == proto.PoolMethod["STOCHASTIC"].number:
        raise ctx.fail("pool: STOCHASTIC is not supported")
    is_max = p.pool == proto.PoolMethod["MAX"].number
    size = x[2:]
    if p.global_pooling:
        if p.pad or p.pad_h or p.pad_w or p.stride != 1 or p.stride_h > 1 or p.stride_w > 1:
            raise ctx.fail("global_pooling allows only pad 0 and stride 1")
        ctx.node("GlobalMaxPool" if is_max else "GlobalAveragePool", ctx.bottoms[:1], ctx.tops[0])
        return ctx.tops
    if p.HasField("kernel_size"):
        kernel = [p.kernel_size] * 2
    elif p.HasField("kernel_h") and p.HasField("kernel_w"):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        raise ctx.fail("kernel_size (or kernel_h and kernel_w) is required")
    pad = [p.pad_h, p.pad_w] if p.HasField("pad_h") or p.HasField("pad_w") else [p.pad] * 2
    stride = [p.stride_h, p.stride_w] if p.HasField("stride_h") or p.HasField("stride_w") else [p.stride] * 2
    if min(kernel) < 1 or min(stride) < 1:
        raise ctx.fail(f"kernel {kernel} and stride {stride} must be positive")
    if any(pd >= k for pd, k in zip(pad, kernel, strict=True)):
        raise ctx.fail(f"pad {pad} must be smaller than kernel {kernel}")
    ceil = p.round_mode == proto.RoundMode["CEIL"].number
    out = []
    for n, k, s, pd in zip(size, kernel, stride, pad, strict=True):
        span = n + 2 * pd - k
        o = (-(-span // s) if ceil else span // s) + 1
        if any(pad) and (o - 1) * s >= n + pd:
            o -= 1
        if o < 1:
            raise ctx.fail(f"kernel {kernel} does not fit the input {x} with pad {pad}")
        out.append(o)
    end = [max((o - 1) * s + k - n - pd, 0) for o, s, k, n, pd in zip(out, stride, kernel, size, pad, strict=True)]
    if any(e >= k for e, k in zip(end, kernel, strict=True)):
        raise ctx.fail(f"with stride {stride} larger than kernel {kernel}, the last window starts past the input")
    attrs = dict(kernel_shape=kernel, strides=stride)
    if is_max:
        ctx.node("MaxPool", ctx.bottoms[:1], ctx.tops[0], pads=pad + end, **attrs)
        return ctx.tops
    overhang = any(e > pd for e, pd in zip(end, pad, strict=True))
    if not overhang:
        ctx.node("AveragePool", ctx.bottoms[:1], ctx.tops[0], pads=pad + end, count_include_pad=1, **attrs)
    elif not any(pad):
        ctx.node("AveragePool", ctx.bottoms[:1], ctx.tops[0], pads=pad + end, count_include_pad=0, **attrs)
    else:
        kept_end = [min(e, pd) for e, pd in zip(end, pad, strict=True)]
        padded = ctx.node("Pad", [ctx.bottoms[0], ctx.const("pads", [0, 0, *pad, 0, 0, *kept_end])], suffix="pad",
                          mode="constant")
        extra = [e - ke for e, ke in zip(end, kept_end, strict=True)]
        ctx.node("AveragePool", [padded], ctx.tops[0], pads=[0, 0, *extra], count_include_pad=0, **attrs)
    return ctx.tops


# ---- shape and data movement ------------------------------------------------------------------

def concat(ctx: Ctx) -> list[str]:
    p = ctx.param.concat_param
    axis = _axis(ctx, p.concat_dim if p.HasField("concat_dim") else p.axis, len(ctx.shape()))
    shapes = [ctx.shape(i) for i in range(len(ctx.bottoms))]
    if any(len(s) == len(shapes[0]) and s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
           for s in shapes):
        raise ctx.fail(f"bottoms may differ only in axis {axis}, got {shapes}")
    ctx.node("Concat", ctx.bottoms, ctx.tops[0], axis=axis)
    return ctx.tops


def slice_(ctx: Ctx) -> list[str]:
    """Split at slice_point (or into equal parts, one per top) along axis / slice_dim."""
    p = ctx.param.slice_param
    x = ctx.shape()
    axis = _axis(ctx, p.slice_dim if p.HasField("slice_dim") else p.axis, len(x))
    dim, points = x[axis], list(p.slice_point)
    if points:
        if len(points) != len(ctx.tops) - 1:
            raise ctx.fail(f"{len(points)} slice_point values for {len(ctx.tops)} tops")
        bounds = [0, *points, dim]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if min(sizes) <= 0:
            raise ctx.fail(f"slice_point {points} must increase within (0, {dim})")
    else:
        if dim % len(ctx.tops):
            raise ctx.fail(f"axis {axis} of size {dim} does not split evenly into {len(ctx.tops)} tops")
        sizes = [dim // len(ctx.tops)] * len(ctx.tops)
    ctx.g.node("Split", [ctx.bottoms[0], ctx.const("split", sizes)], ctx.tops, ctx.layer.name, axis=axis)
    return ctx.tops


def alias(ctx: Ctx) -> list[str]:
    """Split copies its bottom to every top; Dropout is the identity at inference."""
    return [ctx.bottoms[0]] * len(ctx.layer.tops)


def flatten(ctx: Ctx) -> list[str]:
    """Axes [axis, end_axis] become one."""
    p = ctx.param.flatten_param
    x = ctx.shape()
    axis, end = _axis(ctx, p.axis, len(x)), _axis(ctx, p.end_axis, len(x), "end_axis")
    if end < axis:
        raise ctx.fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    if axis == 1 and end == len(x) - 1:
        ctx.node("Flatten", ctx.bottoms[:1], ctx.tops[0], axis=1)
    else:
        shape = x[:axis] + [int(np.prod(x[axis:end + 1]))] + x[end + 1:]
        ctx.node("Reshape", [ctx.bottoms[0], ctx.const("shape", shape)], ctx.tops[0])
    return ctx.tops


def reshape(ctx: Ctx) -> list[str]:
    """Input axes [axis, axis + num_axes) are replaced by `shape`; 0 copies the input dim at the
    same place, one -1 takes what is left. The full static shape is written out."""
    p = ctx.param.reshape_param
    x = ctx.shape()
    start = p.axis if p.axis >= 0 else len(x) + p.axis + 1
    if not 0 <= start <= len(x):
        raise ctx.fail(f"axis {p.axis} is out of range for a {len(x)}-D input")
    end = len(x) if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > len(x):
        raise ctx.fail(f"num_axes {p.num_axes} is out of range for a {len(x)}-D input from axis {p.axis}")
    spec = [int(d) for d in p.shape.dim]
    middle = []
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= len(x):
                raise ctx.fail(f"shape dim {i} is 0 (copy) but the input has no axis {start + i}")
            middle.append(x[start + i])
        else:
            middle.append(d)
    if middle.count(-1) > 1 or any(d < -1 for d in middle):
        raise ctx.fail(f"shape {spec} may hold one -1 and otherwise dims >= 0")
    shape = x[:start] + middle + x[end:]
    total = int(np.prod(x))
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        if known == 0 or total % known:
            raise ctx.fail(f"cannot reshape {x} to {spec}")
        shape[shape.index(-1)] = total // known
    if int(np.prod(shape)) != total:
        raise ctx.fail(f"cannot reshape {x} ({total} values) to {shape}")
    ctx.node("Reshape", [ctx.bottoms[0], ctx.const("shape", shape)], ctx.tops[0])
    return ctx.tops


def softmax(ctx: Ctx) -> list[str]:
    ctx.node("Softmax", ctx.bottoms[:1], ctx.tops[0], axis=_axis(ctx, ctx.param.softmax_param.axis,
                                                                 len(ctx.shape())))
    return ctx.tops


def permute(ctx: Ctx) -> list[str]:
    """SSD's Permute: `order` first, the axes it leaves out after it in their order."""
    rank = len(ctx.shape())
    order = [int(o) for o in ctx.param.permute_param.order]
    if len(set(order)) != len(order) or any(o >= rank for o in order):
        raise ctx.fail(f"order {order} must name distinct axes of the {rank}-D input")
    order += [a for a in range(rank) if a not in order]
    ctx.node("Transpose", ctx.bottoms[:1], ctx.tops[0], perm=order)
    return ctx.tops


def crop(ctx: Ctx) -> list[str]:
    """Crop bottom 0 to bottom 1's shape from `axis` on, at `offset` (one for all or one per axis)."""
    p = ctx.param.crop_param
    if len(ctx.bottoms) != 2:
        raise ctx.fail(f"needs 2 bottoms (data, reference), has {len(ctx.bottoms)}")
    x, ref = ctx.shape(0), ctx.shape(1)
    if len(x) != len(ref):
        raise ctx.fail(f"bottoms have different ranks: {x} and {ref}")
    axis = _axis(ctx, p.axis, len(x))
    axes = list(range(axis, len(x)))
    offsets = list(p.offset)
    if len(offsets) > 1 and len(offsets) != len(axes):
        raise ctx.fail(f"{len(offsets)} offsets for {len(axes)} cropped axes")
    starts = [int(offsets[0] if len(offsets) == 1 else offsets[i] if offsets else 0) for i in range(len(axes))]
    ends = [s + ref[a] for s, a in zip(starts, axes, strict=True)]
    for a, e in zip(axes, ends, strict=True):
        if e > x[a]:
            raise ctx.fail(f"crop of axis {a} ends at {e}, beyond the input size {x[a]}")
    ctx.node("Slice", [ctx.bottoms[0], ctx.const("starts", starts), ctx.const("ends", ends),
                       ctx.const("axes", axes)], ctx.tops[0])
    return ctx.tops


def upsample(ctx: Ctx) -> list[str]:
    """Nearest-neighbour upsampling by integer factors: out[i] = in[floor(i / scale)]."""
    p = ctx.param.upsample_param
    x = ctx.shape()
    if len(x) != 4 or len(ctx.bottoms) != 1:
        raise ctx.fail("only the one-bottom, 4-D (nearest neighbour) form is supported")
    sh = p.scale_h if p.HasField("scale_h") else p.scale
    sw = p.scale_w if p.HasField("scale_w") else p.scale
    if sh < 1 or sw < 1:
        raise ctx.fail(f"scale {sh}x{sw} must be positive")
    scales = ctx.const("scales", np.array([1, 1, sh, sw], np.float32))
    ctx.node("Resize", [ctx.bottoms[0], "", scales], ctx.tops[0], mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return ctx.tops


def interp(ctx: Ctx) -> list[str]:
    """PSPNet / DeepLab Interp: bilinear, corners aligned, on the input cropped by the
    non-positive pad_beg / pad_end; output size from zoom_factor, shrink_factor or height+width."""
    p = ctx.param.interp_param
    x = ctx.shape()
    if len(x) != 4:
        raise ctx.fail(f"needs a 4-D input, got shape {x}")
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ctx.fail("only non-positive pad_beg / pad_end (cropping) are supported, as in Caffe")
    eff = [d + p.pad_beg + p.pad_end for d in x[2:]]
    zoom, shrink = p.HasField("zoom_factor"), p.HasField("shrink_factor")
    if shrink and p.shrink_factor < 1 or zoom and p.zoom_factor < 1:
        raise ctx.fail("zoom_factor and shrink_factor must be positive")
    if shrink:
        out = [(d - 1) // p.shrink_factor + 1 for d in eff]
        if zoom:
            out = [d + (d - 1) * (p.zoom_factor - 1) for d in out]
    elif zoom:
        out = [d + (d - 1) * (p.zoom_factor - 1) for d in eff]
    elif p.HasField("height") and p.HasField("width"):
        out = [p.height, p.width]
    else:
        raise ctx.fail("set zoom_factor, shrink_factor, or height and width")
    if min(out) < 1 or min(eff) < 1:
        raise ctx.fail(f"output size {out} from input {x} is empty")
    src = ctx.bottoms[0]
    if p.pad_beg or p.pad_end:
        src = ctx.node("Slice", [src, ctx.const("starts", [-p.pad_beg] * 2),
                                 ctx.const("ends", [d + p.pad_end for d in x[2:]]), ctx.const("axes", [2, 3])],
                       suffix="crop")
    ctx.node("Resize", [src, "", "", ctx.const("sizes", x[:2] + out)], ctx.tops[0], mode="linear",
             coordinate_transformation_mode="align_corners")
    return ctx.tops


CONVERTERS: dict[str, Callable[[Ctx], list[str]]] = {
    "Convolution": convolution,
    "Deconvolution": deconvolution,
    "InnerProduct": inner_product,
    "BatchNorm": batch_norm,
    "Scale": scale,
    "ReLU": relu,
    "PReLU": prelu,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "ELU": elu,
    "Pooling": pooling,
    "Eltwise": eltwise,
    "Concat": concat,
    "Slice": slice_,
    "Split": alias,
    "Dropout": alias,
    "Flatten": flatten,
    "Reshape": reshape,
    "Softmax": softmax,
    "Permute": permute,
    "Power": power,
    "Crop": crop,
    "Upsample": upsample,
    "Interp": interp,
}
