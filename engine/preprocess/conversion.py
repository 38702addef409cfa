"""Runtime input conversion: the ONNX subgraph from what the device feeds to the normalized train tensor.

The float model takes the train view (`input_type_train`, `input_layout_train`); the deployed
model takes the runtime view (`input_type_rt`: NV12 frames, YUV444 / RGB / BGR / gray uint8,
float featuremaps) and converts inside the model (DESIGN §6, reference §9–§11):

1. data movement, exact on integers: NV12 → Y plane and UV plane, chroma upsampled ×2 by
   nearest neighbour (`Resize`), concatenated to YUV444; runtime layout → NCHW; then `Cast`;
2. ONE per-channel affine step, a 1×1 `Conv` whose 3×3 weight and bias fold the colour matrix
   (YUV→RGB/BGR, RGB↔BGR, video→full range, the `_128` offset) together with the
   normalization: ``W = diag(m)·M``, ``b = m·(t − mean)`` for ``train = M·rt + t`` and
   ``m`` = scale or 1/std. One op, so the quantizer can lower it to one integer convolution
   whose input is the raw uint8 pixel (scale 1, zero point 0);
3. a `Transpose` to NHWC when the train layout is NHWC.

featuremap inputs get only the normalization (or an Identity). Every node and constant is named
`HZ_PREPROCESS_FOR_<input>…`; the affine node is exactly `HZ_PREPROCESS_FOR_<input>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.config.rules import legal_pairs
from engine.config.values import format_shape
from engine.preprocess.normalization import (
    IP,
    Normalization,
    graph_input,
    normalization_nodes,
    normalized_name,
    prepend,
    preprocess_prefix,
    refuse_existing,
    rewire_consumers,
)
from engine.problems import ConfigError, ModelError, Problem, error, errors
from engine.runtime.color import ColorAffine, rgb_to_yuv_affine, video_to_full_range_affine, yuv_to_rgb_affine

OPSET = 17  # opset of a standalone conversion model; the nodes themselves are valid from opset 13 on
MIN_OPSET = 13  # Resize/Slice with optional inputs as used here


@dataclass(frozen=True)
class InputType:
    """How one `input_type_*` value stores pixels.

    `space`: rgb, yuv_full, yuv_video, gray or featuremap; `order[k]` is the canonical channel
    (R,G,B or Y,U,V) held in stored channel k; stored value = colour value + `offset`.
    """

    space: str
    order: tuple[int, ...] = (0, 1, 2)
    offset: float = 0.0
    nv12: bool = False
    implied_layout: str | None = "NHWC"  # reference §9: layout implied by the rt type
    dtype: type = np.uint8

    @property
    def channels(self) -> int:
        return len(self.order)


INPUT_TYPES: dict[str, InputType] = {
    "rgb": InputType("rgb"),
    "bgr": InputType("rgb", order=(2, 1, 0)),
    "yuv444": InputType("yuv_full"),
    "yuv_bt601_full": InputType("yuv_full"),
    "yuv_bt601_video": InputType("yuv_video"),
    "yuv444_128": InputType("yuv_full", offset=-128.0, dtype=np.int8),
    "nv12": InputType("yuv_full", nv12=True, implied_layout=None),
    "yuv420sp_bt601_video": InputType("yuv_video", nv12=True, implied_layout=None),
    "gray": InputType("gray", order=(0,), implied_layout="NCHW"),
    "featuremap": InputType("featuremap", order=(), implied_layout=None, dtype=np.float32),
}


def legal_conversions() -> dict[str, frozenset[str]]:
    """input_type_train → the input_type_rt values it may be converted from (the type itself included).

    Read from the schema's `x-hb-train-rt-pairs` through `engine.config.rules.legal_pairs`, the
    same table the config check uses, so the check and the builder cannot disagree.
    """
    return {train: frozenset({train, *rts}) for train, rts in legal_pairs().items()}


def rt_input_type(rt_type: str, space_and_range: str) -> InputType:
    """How `rt_type` stores pixels, with `input_space_and_range` applied (nv12 + bt601_video = video range)."""
    t = INPUT_TYPES[rt_type]
    if t.nv12 and space_and_range == "bt601_video":
        return InputType("yuv_video", nv12=True, implied_layout=None)
    return t


@dataclass(frozen=True)
class RuntimeInput:
    """Shape and dtype of the tensor a deployed model takes for one input."""

    rt_type: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str | None  # NHWC / NCHW of the runtime tensor; None for NV12

    @property
    def elem_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, self.elem_type, list(self.shape))


def train_hw(train_shape: tuple[int, ...], train_layout: str | None) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a 4-D train shape under its layout."""
    n, a, b, c = (int(d) for d in train_shape)
    return (n, c, a, b) if train_layout == "NHWC" else (n, a, b, c)


def runtime_input(rt_type: str, train_shape: tuple[int, ...], train_layout: str | None,
                  rt_layout: str | None = None) -> RuntimeInput:
    """The runtime tensor for `rt_type`: nv12 uint8 (N, H*3/2, W); yuv444/rgb/bgr uint8 NHWC
    (N, H, W, 3) unless `rt_layout` (hb_mapper's input_layout_rt) says NCHW; gray uint8
    (N, 1, H, W) unless NHWC; featuremap float32 in the train shape."""
    t = INPUT_TYPES[rt_type]
    if t.space == "featuremap":
        return RuntimeInput(rt_type, tuple(int(d) for d in train_shape), np.dtype(np.float32), train_layout)
    n, _, h, w = train_hw(train_shape, train_layout)
    if t.nv12:
        return RuntimeInput(rt_type, (n, h * 3 // 2, w), np.dtype(np.uint8), None)
    layout = rt_layout or t.implied_layout
    c = t.channels
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    return RuntimeInput(rt_type, shape, np.dtype(t.dtype), layout)


# ------------------------------------------------------------------ checks

def check_conversion(rt_type: str, train_type: str, train_layout: str | None, train_shape: tuple[int, ...],
                     space_and_range: str = "regular", norm: Normalization | None = None,
                     input_name: str = "input") -> list[Problem]:
    """Every reason the conversion cannot be built, in hb_compile's wording (the same codes as the config rules)."""
    problems: list[Problem] = []
    shape = tuple(int(d) for d in train_shape)
    legal = legal_conversions()
    if rt_type not in legal.get(train_type, ()) or rt_type not in INPUT_TYPES or train_type not in INPUT_TYPES:
        problems.append(error("input-illegal-conversion", f"The input_type_train '{train_type}' of the input "
                              f"{input_name} is not supported to be transformed to input_type_rt '{rt_type}' now",
                              (IP, "input_type_rt"), data={"allowed": sorted(legal.get(train_type, ()))}))
        return problems
    rt, train = INPUT_TYPES[rt_type], INPUT_TYPES[train_type]
    if space_and_range == "bt601_video" and not rt.nv12:
        problems.append(error("input-space-not-nv12", f"input_space_and_range 'bt601_video' is only valid with "
                              f"input_type_rt 'nv12', but input {input_name} has '{rt_type}'",
                              (IP, "input_space_and_range")))
    if train.space != "featuremap" and _space_affine(rt_input_type(rt_type, space_and_range).space, train.space) is None:
        problems.append(error("input-conversion-unsupported", f"Converting input_type_rt '{rt_type}' to "
                              f"input_type_train '{train_type}' is not implemented", (IP, "input_type_rt")))
    if train.space == "featuremap":
        channels = shape[1 if train_layout != "NHWC" else -1] if len(shape) >= 2 else 1
    elif len(shape) != 4:
        problems.append(error("input-not-4d", f"The specified input_type_rt is {rt_type}, but the input_shape is "
                              "not four-dimensional, please set the input_type_rt and input_type_train to featuremap",
                              (IP, "input_shape")))
        return problems
    elif train_layout not in ("NCHW", "NHWC"):
        problems.append(error("missing-key", "Key 'input_parameters' error: Missing keys: 'input_layout_train'",
                              (IP,), data={"on_key": True, "missing": ["input_layout_train"]}))
        return problems
    else:
        _, channels, h, w = train_hw(shape, train_layout)
        if channels != train.channels:
            problems.append(error("input-layout-shape", f"Input_type_train {train_type} input_layout_train "
                                  f"{train_layout} and input_shape {format_shape(shape)} does not seem right. "
                                  "Please double check.", (IP, "input_layout_train")))
        if rt.nv12 and (h % 2 or w % 2):
            problems.append(error("input-nv12-odd-size", f"The input shape: {format_shape(shape)} is invalid, nv12 "
                                  "type does not support odd number input size", (IP, "input_shape")))
    if norm is not None and norm.channels not in (1, channels):
        key = next(k for k, v in (("mean_value", norm.mean), ("scale_value", norm.scale), ("std_value", norm.std))
                   if v is not None and v.size not in (1, channels))
        problems.append(error("norm-channels", f"Wrong {key} format: the input {input_name} has {channels} "
                              f"channels, so give 1 or {channels} values, found {norm.channels}", (IP, key)))
    return problems


# ------------------------------------------------------------------ colour maths

def _identity(n: int) -> ColorAffine:
    return ColorAffine(np.eye(n), np.zeros(n))


def _space_affine(src: str, dst: str) -> ColorAffine | None:
    """Colour values in space `src` → space `dst` (canonical channel order), or None if impossible."""
    if src == dst:
        return _identity(1 if src == "gray" else 3) if src != "featuremap" else None
    full = {"yuv_full": True, "yuv_video": False}
    if src in full and dst == "rgb":
        return yuv_to_rgb_affine(full[src])
    if src == "rgb" and dst in full:
        return rgb_to_yuv_affine(full[dst])
    if src == "yuv_video" and dst == "yuv_full":
        return video_to_full_range_affine()
    if src == "yuv_full" and dst == "yuv_video":
        to_full = video_to_full_range_affine()
        inv = np.linalg.inv(to_full.matrix)
        return ColorAffine(inv, -inv @ to_full.offset)
    return None


def _storage_to_canonical(t: InputType) -> ColorAffine:
    n = t.channels
    perm = np.zeros((n, n))
    for k, c in enumerate(t.order):
        perm[c, k] = 1.0
    return ColorAffine(perm, -perm @ np.full(n, t.offset))


def _canonical_to_storage(t: InputType) -> ColorAffine:
    n = t.channels
    perm = np.zeros((n, n))
    for k, c in enumerate(t.order):
        perm[k, c] = 1.0
    return ColorAffine(perm, np.full(n, t.offset))


def conversion_affine(rt: InputType, train: InputType, norm: Normalization | None) -> ColorAffine:
    """The whole per-pixel map: stored rt value → normalized stored train value."""
    colour = _space_affine(rt.space, train.space)
    assert colour is not None, "check_conversion refuses this pair"
    step = _storage_to_canonical(rt).then(colour).then(_canonical_to_storage(train))
    if norm is None or norm.is_identity:
        return step
    m = norm.multiplier(train.channels)
    return ColorAffine(np.diag(m) @ step.matrix, m * (step.offset - norm.mean_or_zero(train.channels)))


def conversion_affine_for(rt_type: str, train_type: str, space_and_range: str = "regular",
                          norm: Normalization | None = None) -> ColorAffine:
    """`conversion_affine` by config values: stored `rt_type` pixel → normalized stored `train_type` value."""
    return conversion_affine(rt_input_type(rt_type, space_and_range), INPUT_TYPES[train_type], norm)


# ------------------------------------------------------------------ the subgraph

@dataclass
class ConversionGraph:
    """An ONNX subgraph from the runtime input `input_name` to the normalized train tensor `output_name`."""

    input_name: str
    runtime: RuntimeInput
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    rt_input: onnx.ValueInfoProto
    output_name: str
    output: onnx.ValueInfoProto
    affine: ColorAffine | None = field(default=None, repr=False)  # folded colour + normalization, if any

    def names(self) -> set[str]:
        """Node, tensor and constant names the subgraph adds (the runtime input's name excluded)."""
        out = {n.name for n in self.nodes} | {t.name for t in self.initializers}
        out |= {t for n in self.nodes for t in n.output}
        return out

    def as_model(self) -> onnx.ModelProto:
        """A standalone model: runtime tensor in, normalized train tensor out (for tests and runtime)."""
        graph = helper.make_graph(self.nodes, f"{preprocess_prefix(self.input_name)}_graph", [self.rt_input],
                                  [self.output], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="hbcompile")
        model.ir_version = 8
        return model

    def for_input(self, input_name: str) -> ConversionGraph:
        """The same subgraph for another input name (every name re-prefixed)."""
        if input_name == self.input_name:
            return self
        old, new = preprocess_prefix(self.input_name), preprocess_prefix(input_name)

        def rename(name: str) -> str:
            if name == self.input_name:
                return input_name
            return new + name[len(old):] if name.startswith(old) else name

        nodes = []
        for node in self.nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = rename(node.name)
            copy.input[:] = [rename(t) for t in node.input]
            copy.output[:] = [rename(t) for t in node.output]
            nodes.append(copy)
        inits = []
        for init in self.initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            inits.append(copy)
        output = onnx.ValueInfoProto()
        output.CopyFrom(self.output)
        output.name = rename(self.output.name)
        return ConversionGraph(input_name, self.runtime, nodes, inits, self.runtime.value_info(input_name),
                               rename(self.output_name), output, self.affine)


class SubgraphBuilder:
    """Collects nodes and constants under one name prefix (`prefix_suffix`).

    `taken`: names already used by the model the subgraph goes into; a clashing name gets a
    numbered suffix instead (the integer program keeps some of its own `HZ_PREPROCESS_FOR_…` names).
    """

    def __init__(self, prefix: str, taken: set[str] | None = None):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.taken = taken if taken is not None else set()

    def fresh(self, name: str) -> str:
        out, k = name, 1
        while out in self.taken:
            out, k = f"{name}_{k}", k + 1
        self.taken.add(out)
        return out

    def const(self, suffix: str, values, dtype=np.int64) -> str:
        name = self.fresh(f"{self.prefix}_{suffix}")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], suffix: str | None, output: str | None = None,
             domain: str | None = None, name: str | None = None, **attrs) -> str:
        """Add a node named `prefix_suffix` (`prefix` for suffix None), or `name` reserved by the caller."""
        name = name or self.fresh(self.prefix if suffix is None else f"{self.prefix}_{suffix}")
        out = output or self.fresh(f"{name}_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, domain=domain, **attrs))
        return out


def _nv12_to_yuv_nchw(b: SubgraphBuilder, x: str, n: int, h: int, w: int) -> str:
    """(N, H*3/2, W) uint8 NV12 → (N, 3, H, W) uint8 Y,U,V: slices, reshapes, one nearest Resize, Concat."""
    rows = b.const("rows", [1])
    y = b.node("Slice", [x, b.const("y_start", [0]), b.const("y_end", [h]), rows], "y_plane")
    y = b.node("Reshape", [y, b.const("y_shape", [n, 1, h, w])], "y_nchw")
    uv = b.node("Slice", [x, b.const("uv_start", [h]), b.const("uv_end", [h * 3 // 2]), rows],
                "uv_plane")
    uv = b.node("Reshape", [uv, b.const("uv_shape", [n, h // 2, w // 2, 2])], "uv_nhwc")
    uv = b.node("Transpose", [uv], "uv_nchw", perm=[0, 3, 1, 2])
    uv = b.node("Resize", [uv, "", b.const("uv_scales", [1, 1, 2, 2], np.float32)], "uv_upsample",
                mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return b.node("Concat", [y, uv], "yuv444", axis=1)


def pixels_nchw(b: SubgraphBuilder, x: str, rt: InputType, runtime: RuntimeInput, train_shape: tuple[int, ...],
                train_layout: str | None) -> str:
    """The data-movement part, exact on the stored integers: the runtime tensor `x` → (N, C, H, W)
    in the runtime type's dtype (NV12 planes split and chroma upsampled, NHWC transposed)."""
    n, _, h, w = train_hw(train_shape, train_layout)
    if rt.nv12:
        return _nv12_to_yuv_nchw(b, x, n, h, w)
    if runtime.layout == "NHWC":
        return b.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    return x


def build_input_conversion(rt_type: str, train_type: str, train_layout: str | None, train_shape: tuple[int, ...],
                           space_and_range: str = "regular", norm: Normalization | None = None, *,
                           input_name: str = "input", rt_layout: str | None = None) -> ConversionGraph:
    """The subgraph converting `rt_type` data to the normalized `train_type` tensor of `train_shape`.

    Raises `ConfigError` with hb_compile's messages for an illegal pair, an odd NV12 size, a
    non-4-D image input or a mean/scale/std count that does not fit the channels.
    """
    problems = errors(check_conversion(rt_type, train_type, train_layout, train_shape, space_and_range, norm,
                                       input_name))
    if problems:
        raise ConfigError(problems)
    shape = tuple(int(d) for d in train_shape)
    runtime = runtime_input(rt_type, shape, train_layout, rt_layout)
    rt, train = rt_input_type(rt_type, space_and_range), INPUT_TYPES[train_type]
    prefix, out = preprocess_prefix(input_name), normalized_name(input_name)
    b = SubgraphBuilder(prefix)
    affine = None
    if train.space == "featuremap":
        nodes, inits = normalization_nodes(prefix, input_name, out, norm or Normalization(), train_layout,
                                           len(shape), np.dtype(np.float32))
        b.nodes, b.inits = nodes, inits
    else:
        n, c, h, w = train_hw(shape, train_layout)
        x = pixels_nchw(b, input_name, rt, runtime, shape, train_layout)
        x = b.node("Cast", [x], "to_float", to=TensorProto.FLOAT)
        affine = conversion_affine(rt, train, norm)
        weight = b.const("weight", affine.matrix.reshape(c, rt.channels, 1, 1), np.float32)
        bias = b.const("bias", affine.offset, np.float32)
        if train_layout == "NHWC":
            x = b.node("Conv", [x, weight, bias], None, output=f"{prefix}_nchw", kernel_shape=[1, 1])
            b.node("Transpose", [x], "to_nhwc", output=out, perm=[0, 2, 3, 1])
        else:
            b.node("Conv", [x, weight, bias], None, output=out, kernel_shape=[1, 1])
    output = helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))
    return ConversionGraph(input_name, runtime, b.nodes, b.inits, runtime.value_info(input_name), out, output,
                           affine)


# ------------------------------------------------------------------ attaching to a model

def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def attach_input_conversion(model: onnx.ModelProto, input_name: str, conversion: ConversionGraph,
                            tag: str = "") -> onnx.ModelProto:
    """Make the model take the runtime view of `input_name`; the model is changed in place and returned.

    The graph input keeps its name but becomes the runtime tensor (e.g. uint8 NV12); the
    conversion subgraph computes the train-view tensor the model's first nodes used to read.
    Models below opset 13 are converted to opset 17 first. `tag` names the subgraph
    `HZ_PREPROCESS_FOR_<input><tag>…`, for a model that keeps its own normalization nodes
    (the integer program) and so already uses the untagged names.
    """
    conversion = conversion.for_input(input_name + tag)
    if tag:
        conversion = _rename_input(conversion, input_name + tag, input_name)
    position, vi = graph_input(model, input_name)
    tt = vi.type.tensor_type
    if tt.elem_type != TensorProto.FLOAT:
        raise ModelError(error("preprocess-dtype", f"Input '{input_name}' is of type "
                               f"{TensorProto.DataType.Name(tt.elem_type)}; the input conversion produces float32",
                               (IP, "input_type_train")))
    want = [int(d) for d in _dims(conversion.output)]
    have = _dims(vi)
    if tt.HasField("shape") and (len(have) != len(want) or any(
            isinstance(h, int) and h and h != w for h, w in zip(have, want, strict=False))):
        raise ModelError(error("preprocess-shape", f"Input '{input_name}' of the model has shape {have}, but the "
                               f"input conversion produces {want}", (IP, "input_shape")))
    if _default_opset(model) < MIN_OPSET:
        from onnx import version_converter

        model.CopyFrom(version_converter.convert_version(model, OPSET))
    refuse_existing(model, input_name, conversion.names())
    rewire_consumers(model, input_name, conversion.output_name)
    g = model.graph
    kept = [v for v in g.value_info if v.name != input_name]
    del g.value_info[:]
    g.value_info.extend([*kept, conversion.output])
    g.input[position].CopyFrom(conversion.rt_input)
    prepend(model, list(conversion.nodes), list(conversion.initializers))
    return model


def _rename_input(conversion: ConversionGraph, old: str, new: str) -> ConversionGraph:
    """The same subgraph reading its runtime tensor under another name (node names unchanged)."""
    nodes = []
    for node in conversion.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [new if t == old else t for t in node.input]
        nodes.append(copy)
    return ConversionGraph(new, conversion.runtime, nodes, conversion.initializers,
                           conversion.runtime.value_info(new), conversion.output_name, conversion.output,
                           conversion.affine)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


__all__ = ["INPUT_TYPES", "ConversionGraph", "InputType", "RuntimeInput", "SubgraphBuilder", "attach_input_conversion",
           "build_input_conversion", "check_conversion", "conversion_affine", "conversion_affine_for",
           "legal_conversions", "pixels_nchw", "rt_input_type", "runtime_input", "train_hw"]
