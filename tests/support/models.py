"""Generated test models and how to compare two of them in onnxruntime.

Every builder returns a checked, shape-inferred `onnx.ModelProto` (opset 17 unless asked, IR 8,
every node named `OpType_index` like the parse stage does, static input shapes, float32), with
seeded random weights, so tests in any package can say "a residual block" or "a GELU block"
instead of re-typing graphs. `CORPUS` lists one of each for whole-pipeline tests.

Two ways to write a model:
- `onnx_text(TEXT)`: ONNX's text syntax (`onnx.parser`); graph inputs whose name starts with a
  capital letter (W, B, Gamma, Var, ...) become random initializers ("Var"/"Scale" ones positive);
- `Builder`: a few lines of Python per block (`conv`, `bn`, `op`, ...), for larger models.

`assert_same_outputs(a, b)` runs both models on the same random inputs and asserts, per output
(names must match), cosine ≥ 0.999999 and max |a - b| ≤ 1e-4 × the range of a's output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.parser
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
COSINE_MIN = 0.999999
REL_DIFF_MAX = 1e-4


# --- making models ------------------------------------------------------------------------------
def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name unnamed nodes `OpType_index` (what the parse stage guarantees for real models)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Named, shape-inferred, checked: the state the optimize stage receives models in."""
    model.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION) if model.ir_version else IR_VERSION
    model = onnx.shape_inference.infer_shapes(name_nodes(model), strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_text(text: str, seed: int = 0, **fmt) -> onnx.ModelProto:
    """Parse ONNX text (after `str.format(**fmt)` when given); capitalised inputs become weights."""
    model = onnx.parser.parse_model(text.format(**fmt) if fmt else text)
    rng = np.random.default_rng(seed)
    graph = model.graph
    for vi in [i for i in graph.input if i.name[:1].isupper()]:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if dtype.kind == "f":
            value = rng.standard_normal(shape) * 0.5
            if any(k in vi.name.lower() for k in ("var", "scale")):
                value = np.abs(value) + 0.5
        else:
            value = rng.integers(0, 4, shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(dtype), vi.name))
        graph.input.remove(vi)
    return finish(model)


class Builder:
    """Appends named nodes and seeded weights; `build()` returns a finished model."""

    def __init__(self, name: str = "model", seed: int = 0):
        self.name, self.rng = name, np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []

    def input(self, name: str, shape: list[int], elem: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, shape: tuple[int, ...], scale: float | None = None, positive: bool = False,
               name: str | None = None) -> str:
        fan_in = math.prod(shape[1:]) or shape[0]
        value = self.rng.standard_normal(shape) * (scale if scale is not None else 1.0 / math.sqrt(fan_in))
        return self.const(np.abs(value) + 0.5 if positive else value, name)

    def op(self, op_type: str, inputs: list[str], out: str | None = None, outputs: int = 1, **attrs):
        """Add a node `OpType_k`; returns its output name (or names when outputs > 1)."""
        name = f"{op_type}_{len(self.nodes)}"
        outs = [out] if out else [f"{name}_y{i}" if outputs > 1 else f"{name}_y" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1,
             bias: bool = True, out: str | None = None) -> str:
        w = self.weight((cout, cin // group, k, k))
        inputs = [x, w, self.weight((cout,), 0.1)] if bias else [x, w]
        return self.op("Conv", inputs, out, kernel_shape=[k, k], strides=[stride, stride], group=group,
                       pads=[k // 2] * 4)

    def conv_transpose(self, x: str, cin: int, cout: int, k: int = 2, stride: int = 2, group: int = 1,
                       bias: bool = True, out: str | None = None) -> str:
        w = self.weight((cin, cout // group, k, k))
        inputs = [x, w, self.weight((cout,), 0.1)] if bias else [x, w]
        return self.op("ConvTranspose", inputs, out, kernel_shape=[k, k], strides=[stride, stride], group=group)

    def bn(self, x: str, c: int, out: str | None = None) -> str:
        params = [self.weight((c,), 0.2, positive=True), self.weight((c,), 0.2), self.weight((c,), 0.2),
                  self.weight((c,), 0.3, positive=True)]
        return self.op("BatchNormalization", [x, *params], out, epsilon=1e-5)

    def output(self, *names: str) -> None:
        self.outputs.extend(names)

    def build(self, opset: int = OPSET) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in self.outputs]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="tests.support.models")
        return finish(model)


# --- the corpus: one builder per situation the optimizer must handle ----------------------------
def conv_bn_relu_chain(depth: int = 3, channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Conv → BN → Relu, `depth` times (the every-CNN case: BN folds, Conv+Relu groups)."""
    b = Builder("conv_bn_relu", seed)
    x, c = b.input("image", [1, 3, 16, 16]), 3
    for i in range(depth):
        x = b.op("Relu", [b.bn(b.conv(x, c, channels, bias=i % 2 == 0), channels)])
        c = channels
    b.output(b.op("GlobalAveragePool", [x], out="pooled"))
    return b.build()


def residual_block(seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-BN + identity shortcut, then Relu (Conv+Add group after BN folding)."""
    b = Builder("residual", seed)
    x = b.input("x", [1, 8, 12, 12])
    y = b.op("Relu", [b.bn(b.conv(x, 8, 8), 8)])
    y = b.bn(b.conv(y, 8, 8, bias=False), 8)
    b.output(b.op("Relu", [b.op("Add", [y, x])], out="y"))
    return b.build()


def concat_resize(seed: int = 0) -> onnx.ModelProto:
    """Two branches (stride 1 / stride 2 + Resize up) concatenated: an FPN-style neck."""
    b = Builder("concat_resize", seed)
    x = b.input("x", [1, 4, 16, 16])
    fine = b.op("Relu", [b.conv(x, 4, 6)])
    coarse = b.op("Relu", [b.conv(x, 4, 6, stride=2)])
    scales = b.const([1.0, 1.0, 2.0, 2.0], "up_scales")
    up = b.op("Resize", [coarse, "", scales], mode="nearest")
    b.output(b.conv(b.op("Concat", [fine, up], axis=1), 12, 4, k=1, out="y"))
    return b.build()


def depthwise_separable(seed: int = 0) -> onnx.ModelProto:
    """Depthwise 3x3 (group = channels) + BN + Relu6 (Clip), pointwise 1x1 + BN + Relu."""
    b = Builder("depthwise", seed)
    x = b.input("x", [1, 8, 10, 10])
    y = b.op("Clip", [b.bn(b.conv(x, 8, 8, group=8), 8), b.const(0.0, "zero"), b.const(6.0, "six")])
    b.output(b.op("Relu", [b.bn(b.conv(y, 8, 16, k=1), 16)], out="y"))
    return b.build()


def conv_transpose_up(group: int = 2, seed: int = 0) -> onnx.ModelProto:
    """Grouped ConvTranspose upsampling + BN + Relu (the DB head of PP-OCR det has these)."""
    b = Builder("conv_transpose", seed)
    x = b.input("x", [1, 8, 6, 6])
    b.output(b.op("Relu", [b.bn(b.conv_transpose(x, 8, 12, group=group), 12)], out="y"))
    return b.build()


def gemm_head(seed: int = 0) -> onnx.ModelProto:
    """Conv → GlobalAveragePool → Flatten → Gemm(transB) → BN → MatMul + Add (two classifiers)."""
    b = Builder("gemm_head", seed)
    x = b.input("x", [2, 3, 8, 8])
    f = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 3, 16)])])], axis=1)
    h = b.op("Gemm", [f, b.weight((32, 16)), b.weight((32,), 0.1)], transB=1, alpha=0.5, beta=2.0)
    h = b.op("Relu", [b.bn(h, 32)])
    b.output(b.op("Add", [b.op("MatMul", [h, b.weight((32, 10))]), b.weight((10,), 0.1)], out="logits"))
    return b.build()


def multi_io(seed: int = 0) -> onnx.ModelProto:
    """Two inputs, three outputs, one of them an intermediate also read by later nodes."""
    b = Builder("multi_io", seed)
    img, feat = b.input("img", [1, 3, 8, 8]), b.input("feat", [1, 6, 8, 8])
    a = b.bn(b.conv(img, 3, 6), 6, out="stem")
    s = b.op("Add", [a, feat], out="fused")
    b.output("stem", "fused", b.op("Sigmoid", [b.conv(s, 6, 2, k=1)], out="score"))
    return b.build()


def hardswish_block(form: str = "clip_div", opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """Conv → HardSwish decomposed as exporters write it, → Conv.

    forms: "clip_div" x·Clip(x+3,0,6)/6 (Paddle), "clip_mul" x·(Clip(3+x,0,6)·⅙),
    "hardsigmoid" x·HardSigmoid(x) (PyTorch, opset < 14).
    """
    b = Builder(f"hardswish_{form}", seed)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8)
    if form == "hardsigmoid":
        y = b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])
    else:
        three, zero, six = b.const(3.0, "three"), b.const(0.0, "zero"), b.const(6.0, "six")
        if form == "clip_div":
            y = b.op("Div", [b.op("Mul", [x, b.op("Clip", [b.op("Add", [x, three]), zero, six])]), six])
        else:
            sixth = b.const(1 / 6, "sixth")
            y = b.op("Mul", [x, b.op("Mul", [b.op("Clip", [b.op("Add", [three, x]), zero, six]), sixth])])
    b.output(b.conv(y, 8, 4, k=1, out="y"))
    return b.build(opset)


def hard_sigmoid_block(seed: int = 0) -> onnx.ModelProto:
    """Squeeze-excite gate: GAP → Conv → Relu → Conv → Clip(x+3,0,6)/6 → Mul with the input."""
    b = Builder("hard_sigmoid", seed)
    x = b.input("x", [1, 8, 6, 6])
    s = b.conv(b.op("Relu", [b.conv(b.op("GlobalAveragePool", [x]), 8, 4, k=1)]), 4, 8, k=1)
    gate = b.op("Div", [b.op("Clip", [b.op("Add", [s, b.const(3.0, "three")]), b.const(0.0, "zero"),
                                      b.const(6.0, "six")]), "six"])
    b.output(b.op("Mul", [x, gate], out="y"))
    return b.build()


def silu_block(seed: int = 0) -> onnx.ModelProto:
    """Conv → SiLU (with the Mul(x, 1.0) Paddle puts before the Sigmoid) → Conv."""
    b = Builder("silu", seed)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8)
    y = b.op("Mul", [x, b.op("Sigmoid", [b.op("Mul", [x, b.const(1.0, "one")])])])
    b.output(b.conv(y, 8, 4, k=1, out="y"))
    return b.build()


def gelu_block(form: str = "erf", opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """MatMul → GELU → MatMul on a [1, 6, 16] sequence, as exporters write GELU.

    forms: "erf" 0.5·(x·(1+Erf(x/√2))) (PyTorch), "erf_prescaled" (x·0.5)·(1+Erf(x·(1/√2))),
    "tanh" 0.5·x·(1+Tanh(√(2/π)·(x+0.044715·x³))).
    """
    b = Builder(f"gelu_{form}", seed)
    x = b.op("MatMul", [b.input("x", [1, 6, 16]), b.weight((16, 16))])
    one, half = b.const(1.0, "one"), b.const(0.5, "half")
    if form == "erf":
        inner = b.op("Add", [b.op("Erf", [b.op("Div", [x, b.const(math.sqrt(2), "sqrt2")])]), one])
        y = b.op("Mul", [b.op("Mul", [x, inner]), half])
    elif form == "erf_prescaled":
        inner = b.op("Add", [one, b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2), "rsqrt2")])])])
        y = b.op("Mul", [b.op("Mul", [x, half]), inner])
    else:
        cube = b.op("Mul", [b.op("Pow", [x, b.const(3.0, "three")]), b.const(0.044715, "k")])
        t = b.op("Tanh", [b.op("Mul", [b.op("Add", [x, cube]), b.const(math.sqrt(2 / math.pi), "c")])])
        y = b.op("Mul", [b.op("Mul", [half, x]), b.op("Add", [t, one])])
    b.output(b.op("MatMul", [y, b.weight((16, 8))], out="y"))
    return b.build(opset)


def mish_block(seed: int = 0) -> onnx.ModelProto:
    """Conv → Mish as x·Tanh(Softplus(x)) → Conv (YOLOv4-style)."""
    b = Builder("mish", seed)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8)
    y = b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])
    b.output(b.conv(y, 8, 4, k=1, out="y"))
    return b.build()


def dropout_identity(seed: int = 0) -> onnx.ModelProto:
    """Identity and inference Dropout inside the graph and in front of a graph output."""
    b = Builder("dropout_identity", seed)
    x = b.op("Identity", [b.input("x", [1, 4, 8, 8])])
    y = b.op("Dropout", [b.op("Relu", [b.conv(x, 4, 4)]), b.const(0.3, "ratio")])
    y = b.op("Identity", [b.conv(y, 4, 4)])
    b.output(b.op("Dropout", [b.op("Relu", [y])], out="y"))
    return b.build()


def reshape_chain(seed: int = 0) -> onnx.ModelProto:
    """Conv → Reshape → Reshape → Flatten → MatMul (exporters' view/flatten chains)."""
    b = Builder("reshape_chain", seed)
    x = b.conv(b.input("x", [1, 3, 4, 4]), 3, 8)
    r = b.op("Reshape", [x, b.const([1, 8, 16], "s1", np.int64)])
    r = b.op("Reshape", [r, b.const([0, 4, 2, 16], "s2", np.int64)])
    f = b.op("Flatten", [r], axis=1)
    b.output(b.op("MatMul", [f, b.weight((128, 5))], out="y"))
    return b.build()


def shape_arithmetic(seed: int = 0) -> onnx.ModelProto:
    """Reshape whose target shape is computed from Shape / Gather / Concat / Constant nodes."""
    b = Builder("shape_arithmetic", seed)
    x = b.op("Relu", [b.conv(b.input("x", [1, 3, 6, 6]), 3, 4)])
    batch = b.op("Gather", [b.op("Shape", [x]), b.const([0], "idx0", np.int64)], axis=0)
    minus_one = b.op("Constant", [], value=numpy_helper.from_array(np.array([-1], np.int64)))
    shape = b.op("Concat", [batch, minus_one], axis=0)
    b.output(b.op("Softmax", [b.op("Reshape", [x, shape])], out="y", axis=-1))
    return b.build()


def learnable_affine(seed: int = 0) -> onnx.ModelProto:
    """PP-LCNet block: Conv → Mul(scalar) → Add(scalar) → HardSwish (x·Clip(x+3,0,6)/6) → Mul → Add → Conv."""
    b = Builder("learnable_affine", seed)
    x = b.conv(b.input("x", [1, 4, 8, 8]), 4, 8, group=4)
    x = b.op("Add", [b.op("Mul", [b.const([1.3], "a1"), x]), b.const([0.2], "b1")])
    three, zero, six = b.const(3.0, "three"), b.const(0.0, "zero"), b.const(6.0, "six")
    y = b.op("Div", [b.op("Mul", [x, b.op("Clip", [b.op("Add", [x, three]), zero, six])]), six])
    y = b.op("Add", [b.op("Mul", [b.const([0.7], "a2"), y]), b.const([-0.1], "b2")])
    b.output(b.conv(y, 8, 8, k=1, out="y"))
    return b.build()


CORPUS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_bn_relu": conv_bn_relu_chain,
    "residual": residual_block,
    "concat_resize": concat_resize,
    "depthwise": depthwise_separable,
    "conv_transpose_g1": lambda: conv_transpose_up(group=1),
    "conv_transpose_g2": lambda: conv_transpose_up(group=2),
    "gemm_head": gemm_head,
    "multi_io": multi_io,
    "hardswish_clip_div": lambda: hardswish_block("clip_div"),
    "hardswish_clip_mul": lambda: hardswish_block("clip_mul"),
    "hardswish_hardsigmoid": lambda: hardswish_block("hardsigmoid"),
    "hardswish_opset13": lambda: hardswish_block("clip_div", opset=13),
    "hard_sigmoid": hard_sigmoid_block,
    "silu": silu_block,
    "gelu_erf": lambda: gelu_block("erf"),
    "gelu_erf_prescaled": lambda: gelu_block("erf_prescaled"),
    "gelu_tanh": lambda: gelu_block("tanh"),
    "gelu_erf_opset20": lambda: gelu_block("erf", opset=20),
    "mish": mish_block,
    "dropout_identity": dropout_identity,
    "reshape_chain": reshape_chain,
    "shape_arithmetic": shape_arithmetic,
    "learnable_affine": learnable_affine,
}


# --- running and comparing ----------------------------------------------------------------------
def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count_ops(model: onnx.ModelProto) -> Counter:
    return Counter(op_types(model))


def run_pass(p, model: onnx.ModelProto):
    """Run one pass module on a copy of `model`; returns (rewritten copy, PassResult)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, p.run(out)


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: standard normal floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model_inputs(model):
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = (rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 4, shape)).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs by name, in onnxruntime with its own graph optimizations off (we test ours)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@dataclass(frozen=True)
class Similarity:
    cosine: float
    max_abs_diff: float
    range: float  # max - min of the reference output

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / self.range if self.range > 0 else self.max_abs_diff

    def ok(self, cosine: float = COSINE_MIN, rel: float = REL_DIFF_MAX) -> bool:
        return self.cosine >= cosine and self.rel_diff <= rel


def similarity(ref: np.ndarray, got: np.ndarray) -> Similarity:
    a, b = ref.astype(np.float64).reshape(-1), got.astype(np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = 1.0 if na == nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    rng = float(a.max() - a.min()) if a.size else 0.0
    return Similarity(cos, diff, rng if rng > 0 else max(float(np.max(np.abs(a), initial=0.0)), 1.0))


def compare(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0, feeds: dict | None = None,
            threads: int = 1) -> dict[str, Similarity]:
    """Per output name: how close b's output is to a's on the same (random) inputs."""
    feeds = feeds if feeds is not None else random_inputs(a, seed)
    ra, rb = run(a, feeds, threads), run(b, feeds, threads)
    assert list(ra) == list(rb), f"graph outputs differ: {list(ra)} vs {list(rb)}"
    for name in ra:
        assert ra[name].shape == rb[name].shape and ra[name].dtype == rb[name].dtype, \
            f"output {name}: {ra[name].shape} {ra[name].dtype} vs {rb[name].shape} {rb[name].dtype}"
    return {name: similarity(ra[name], rb[name]) for name in ra}


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0, feeds: dict | None = None,
                        cosine: float = COSINE_MIN, rel: float = REL_DIFF_MAX,
                        threads: int = 1) -> dict[str, Similarity]:
    """Assert b computes what a computes (see the module docstring); returns the numbers."""
    sims = compare(a, b, seed, feeds, threads)
    bad = {n: s for n, s in sims.items() if not s.ok(cosine, rel)}
    assert not bad, "outputs differ: " + "; ".join(
        f"{n}: cosine {s.cosine:.8f}, max abs diff {s.max_abs_diff:.3g} (range {s.range:.3g})" for n, s in bad.items())
    return sims
