"""The runtime input conversion as integer work at the front of the integer program (`.bc`).

What a device feeds is exact integers (uint8 pixels, NV12 bytes), so the whole per-pixel map —
colour conversion (YUV→RGB/BGR, RGB↔BGR, video→full range), the `_128` offset and the
normalization `(x − mean)·scale` — is ONE quantized 1×1 convolution, the node
`HZ_PREPROCESS_FOR_<input>` (hb_compile's HzSQuantizedPreprocess), for ``train = M·rt + t``:

    input   the rt pixels, uint8, scale 1, zero point 0 — exact, nothing rounded on the way in
    weight  W = diag(m)·M, int8 per output channel, s_w[c] = max|W[c, :]| / 127, stored as
            uint8 codes + 128 (zero point 128): u8·u8 never meets the int16 saturation of
            onnxruntime's u8·s8 kernels on CPUs without VNNI, and 3 input channels cost nothing
    bias    m·(t − mean) as int32 at s_w[c] (the input scale is 1)
    output  requantized to the encoding the integer program already gives the tensor the model's
            first nodes read (the normalized tensor, or the input itself without mean/scale):
            uint8/128 per tensor → QLinearConv; int16 or per-channel → ConvInteger + int32 bias,
            DequantizeLinear at s_w, QuantizeLinear to that encoding

The data movement in front (NV12 plane split, chroma upsampled ×2 by nearest neighbour, runtime
layout → NCHW) runs on the stored bytes, and a Transpose of the codes gives an NHWC train layout;
yuv444_128 (int8, value − 128) is shifted back to uint8 first (Cast, Add 128, Cast: exact).

`attach_runtime_input` puts this in front of a lowered program in place of the program's own
first steps (the QuantizeLinear of the float train view, and the lowered mean/scale nodes), and
fixes the `.bc`'s maps so the Quantized Cosine of the `HZ_PREPROCESS_FOR_<input>` row is this
node's. When the program does not quantize that tensor (its readers run on the CPU), or a float
node still reads the train view, the float conversion (`build_input_conversion`, tagged `_rt`)
feeds them instead — always correct, only not integer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from engine.preprocess.conversion import (
    INPUT_TYPES,
    InputType,
    SubgraphBuilder,
    attach_input_conversion,
    build_input_conversion,
    check_conversion,
    conversion_affine,
    pixels_nchw,
    rt_input_type,
    runtime_input,
)
from engine.preprocess.normalization import (
    Normalization,
    find_normalization,
    graph_input,
    normalized_name,
    preprocess_prefix,
    used_names,
)
from engine.problems import ConfigError, errors
from engine.quantize.lower.encoding import Encoding
from engine.runtime.color import ColorAffine

MS = "com.microsoft"
TENSOR_MAP_KEY = "hbcompile.tensor_map"  # the keys engine.quantize.integer writes
NODE_MAP_KEY = "hbcompile.node_map"
EMULATED_KEY = "hbcompile.emulated"
RT_TAG = "_rt"  # names of the float conversion: HZ_PREPROCESS_FOR_<input>_rt…


@dataclass(frozen=True)
class IntegerWeights:
    """The folded affine as the integers the preprocess node computes with."""

    codes: np.ndarray  # int8 (C_out, C_in), symmetric
    scales: np.ndarray  # float32 (C_out,): s_w, value = code · s_w
    bias: np.ndarray  # int32 (C_out,) at s_w

    @classmethod
    def of(cls, affine: ColorAffine) -> IntegerWeights:
        w = np.asarray(affine.matrix, np.float64)
        top = np.abs(w).max(axis=1)
        scales = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(w / scales.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
        bias = np.clip(np.rint(np.asarray(affine.offset, np.float64) / scales.astype(np.float64)),
                       -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        return cls(codes, scales, bias)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """What the node computes before requantizing, on (…, C_in) integer pixels (float64)."""
        acc = np.asarray(pixels, np.int64) @ self.codes.astype(np.int64).T + self.bias
        return acc * self.scales.astype(np.float64)


@dataclass
class IntegerConversion:
    """Nodes from the runtime input `input_name` to the integer tensor `output` (encoding `encoding`)."""

    input_name: str
    rt_input: onnx.ValueInfoProto
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    output: str
    encoding: Encoding
    weights: IntegerWeights
    node_name: str  # the affine node, HZ_PREPROCESS_FOR_<input>


def _stored_as_uint8(rt: InputType) -> InputType:
    """yuv444_128 after its shift back to uint8: the same colours, offset 0."""
    return InputType(rt.space, rt.order, 0.0, rt.nv12, rt.implied_layout, np.uint8)


def build_integer_conversion(rt_type: str, train_type: str, train_layout: str | None,
                             train_shape: tuple[int, ...], space_and_range: str, norm: Normalization | None,
                             encoding: Encoding, output: str, *, input_name: str = "input",
                             rt_layout: str | None = None, taken: set[str] | None = None,
                             opset: int = 17) -> IntegerConversion:
    """rt pixels → `output` holding the normalized train tensor (or the train view without `norm`) as
    `encoding` codes. Raises `ConfigError` for what `build_input_conversion` refuses."""
    problems = errors(check_conversion(rt_type, train_type, train_layout, train_shape, space_and_range, norm,
                                       input_name))
    if problems:
        raise ConfigError(problems)
    train = INPUT_TYPES[train_type]
    if train.space == "featuremap" or encoding.dtype not in ("uint8", "int16"):
        raise ValueError(f"no integer input conversion for {train_type} into {encoding.dtype}")
    shape = tuple(int(d) for d in train_shape)
    runtime = runtime_input(rt_type, shape, train_layout, rt_layout)
    rt = rt_input_type(rt_type, space_and_range)
    prefix = preprocess_prefix(input_name)
    b = SubgraphBuilder(prefix, taken if taken is not None else set())
    b.taken.add(output)
    node_name = b.fresh(prefix)
    x = input_name
    if runtime.dtype != np.uint8:  # yuv444_128: value − 128 stored as int8 → the uint8 pixel
        x = b.node("Cast", [x], "widen", to=TensorProto.INT32)
        x = b.node("Add", [x, b.const("offset", np.array(128, np.int32), np.int32)], "unshift")
        x = b.node("Cast", [x], "to_uint8", to=TensorProto.UINT8)
        rt = _stored_as_uint8(rt)
    x = pixels_nchw(b, x, rt, runtime, shape, train_layout)
    weights = IntegerWeights.of(conversion_affine(rt, train, norm))
    c, cin = weights.codes.shape
    w = b.const("weight_quantized", (weights.codes.astype(np.int16) + 128).reshape(c, cin, 1, 1), np.uint8)
    w_zp = b.const("weight_zero_point", np.array(128, np.uint8), np.uint8)
    x_zp = b.const("input_zero_point", np.array(0, np.uint8), np.uint8)
    nhwc = train_layout == "NHWC"
    if encoding.dtype == "uint8" and not encoding.per_channel:
        inputs = [x, b.const("input_scale", np.array(1.0, np.float32), np.float32), x_zp, w,
                  b.const("weight_scale", weights.scales, np.float32),
                  b.const("weight_zero_points", np.full(c, 128, np.uint8), np.uint8),
                  b.const("output_scale", encoding.scale_array(), np.float32),
                  b.const("output_zero_point", encoding.zero_point_array(), np.uint8),
                  b.const("bias_quantized", weights.bias, np.int32)]
        codes = b.node("QLinearConv", inputs, None, output=None if nhwc else output, name=node_name,
                       kernel_shape=[1, 1])
        if nhwc:
            b.node("Transpose", [codes], "to_nhwc", output=output, perm=[0, 2, 3, 1])
    else:
        acc = b.node("ConvInteger", [x, w, x_zp, w_zp], None, name=node_name, kernel_shape=[1, 1])
        acc = b.node("Add", [acc, b.const("bias_quantized", weights.bias.reshape(1, c, 1, 1), np.int32)], "bias")
        value = b.node("DequantizeLinear", [acc, b.const("accumulator_scale", weights.scales, np.float32),
                                            b.const("accumulator_zero_point", np.zeros(c, np.int32), np.int32)],
                       "dequantize", axis=1)
        if nhwc:
            value = b.node("Transpose", [value], "to_nhwc", perm=[0, 2, 3, 1])
        domain = MS if encoding.dtype == "int16" and opset < 21 else None
        b.node("QuantizeLinear", [value, b.const("output_scale", encoding.scale_array(), np.float32),
                                  b.const("output_zero_point", encoding.zero_point_array(), encoding.np_dtype)],
               "requantize", output=output, domain=domain, axis=encoding.axis if encoding.per_channel else None)
    return IntegerConversion(input_name, runtime.value_info(input_name), b.nodes, b.inits, output, encoding,
                             weights, node_name)


# ------------------------------------------------------------------ into a lowered program

@dataclass(frozen=True)
class AttachedInput:
    """What `attach_runtime_input` did for one input."""

    name: str
    mode: str  # "integer" (HZ_PREPROCESS_FOR_<input> quantized) | "float" (float colour step) | "none"
    target: str = ""  # the float model's tensor the integer node produces (normalized tensor or input)
    folded: tuple[str, ...] = ()  # float-model nodes folded into the preprocess node
    float_readers: bool = False  # a float node still reads the train view (fed by the float conversion)


def _json_meta(model: onnx.ModelProto, key: str) -> Any:
    raw = next((p.value for p in model.metadata_props if p.key == key), None)
    return None if raw is None else json.loads(raw)


def _set_meta(model: onnx.ModelProto, key: str, value: Any) -> None:
    text = json.dumps(value, sort_keys=True)
    for p in model.metadata_props:
        if p.key == key:
            p.value = text
            return
    model.metadata_props.add(key=key, value=text)


def _encoding(entry: dict[str, Any]) -> Encoding:
    scale = entry["scale"]
    return Encoding(entry["dtype"], tuple(scale) if isinstance(scale, list) else float(scale),
                    int(entry["zero_point"]), entry.get("axis"))


def _remove_dead(model: onnx.ModelProto, start: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Remove `start` (its outputs are read by nothing) and every node that then feeds nothing.

    Only what the replacement orphaned goes: a node is removed when no remaining node and no graph
    output reads any of its outputs. Constants only those nodes read go with them.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    nodes = list(g.node)
    alive = {id(n) for n in nodes}
    producer = {o: n for n in nodes for o in n.output if o}
    readers: dict[str, int] = {}
    for n in nodes:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1
    removed: list[onnx.NodeProto] = []
    work = [start]
    while work:
        node = work.pop()
        if id(node) not in alive or any(readers.get(o, 0) or o in outputs for o in node.output if o):
            continue
        alive.discard(id(node))
        removed.append(node)
        for t in node.input:
            readers[t] -= 1
            if readers[t] == 0 and t in producer:
                work.append(producer[t])
    del g.node[:]
    g.node.extend(n for n in nodes if id(n) in alive)
    gone = {t for n in removed for t in n.input} - _read_tensors(model)
    kept = [t for t in g.initializer if t.name not in gone]
    del g.initializer[:]
    g.initializer.extend(kept)
    produced = {o for n in removed for o in n.output}
    kept_info = [v for v in g.value_info if v.name not in produced]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    return removed


def _read_tensors(model: onnx.ModelProto) -> set[str]:
    return {t for n in model.graph.node for t in n.input if t} | {o.name for o in model.graph.output}


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _float_conversion(bc: onnx.ModelProto, spec: dict[str, Any], shape: tuple[int, ...]) -> None:
    conversion = build_input_conversion(spec["input_type_rt"], spec["input_type_train"], spec["input_layout_train"],
                                        shape, spec.get("input_space_and_range") or "regular", None,
                                        input_name=spec["name"], rt_layout=spec.get("input_layout_rt"))
    attach_input_conversion(bc, spec["name"], conversion, tag=RT_TAG)


def attach_runtime_input(bc: onnx.ModelProto, spec: dict[str, Any], float_model: onnx.ModelProto,
                         batch: int = 1, cpu_nodes: frozenset[str] = frozenset()) -> AttachedInput:
    """Make the lowered program `bc` take input `spec["name"]` in its runtime format (in place).

    `float_model` is the model `bc` was lowered from (the optimized float model: it tells whether
    the input's normalization is still there to fold); `batch` is the program's batch (input_batch);
    `cpu_nodes` the float nodes the plan puts on the CPU — a normalization the user sent there
    (run_on_cpu / node_info) stays a float CPU node and is not folded.
    featuremap inputs keep their float input (quantized by the program itself).
    """
    name, rt = spec["name"], spec["input_type_rt"]
    if rt == "featuremap" or spec["input_type_train"] == "featuremap":
        return AttachedInput(name, "none")
    shape = (int(batch), *(int(d) for d in spec["shape"][1:]))
    tmap: dict[str, dict[str, Any]] = _json_meta(bc, TENSOR_MAP_KEY) or {}
    norm = find_normalization(float_model, name)
    prefix = preprocess_prefix(name)
    if norm is not None and {prefix, f"{prefix}_mean"} & cpu_nodes:
        norm = None
    target = normalized_name(name) if norm is not None else name
    entry = tmap.get(target)
    g = bc.graph
    old = next((n for n in g.node if entry is not None and entry["tensor"] in n.output), None)
    if old is None or entry["dtype"] not in ("uint8", "int16"):  # only float readers: keep a float colour step
        _float_conversion(bc, spec, shape)
        _forget_converted_input(bc, name)
        return AttachedInput(name, "float", float_readers=True)
    graph_input(bc, name)  # a clear ModelError if the program lacks the input
    codes = entry["tensor"]
    old.output[list(old.output).index(codes)] = f"{codes}__replaced"
    removed = _remove_dead(bc, old)
    float_readers = any(name in n.input for n in g.node)
    conversion = build_integer_conversion(
        rt, spec["input_type_train"], spec["input_layout_train"], shape,
        spec.get("input_space_and_range") or "regular", norm, _encoding(entry), codes, input_name=name,
        rt_layout=spec.get("input_layout_rt"), taken=used_names(bc) | {f"{codes}__replaced"},
        opset=_default_opset(bc))
    if float_readers:  # e.g. a CPU node reading the raw input: it gets the float colour conversion
        _float_conversion(bc, spec, shape)
    else:
        position, _ = graph_input(bc, name)
        g.input[position].CopyFrom(conversion.rt_input)
    rest = list(g.node)
    del g.node[:]
    g.node.extend([*conversion.nodes, *rest])
    g.initializer.extend(conversion.initializers)
    folded = tuple(n.name for n in float_model.graph.node if norm is not None and n.name in (f"{prefix}_mean", prefix))
    _update_maps(bc, conversion, removed, folded)
    _forget_converted_input(bc, name)
    return AttachedInput(name, "integer", target, folded, float_readers)


def _update_maps(bc: onnx.ModelProto, conversion: IntegerConversion, removed: list[onnx.NodeProto],
                 folded: tuple[str, ...]) -> None:
    """tensor_map without the tensors that are gone; node_map with the folded float nodes → the new
    nodes; emulated without the float nodes that are now integer (or have no program node left)."""
    g = bc.graph
    available = {o for n in g.node for o in n.output if o} | {t.name for t in g.initializer} | \
        {i.name for i in g.input}
    tmap = _json_meta(bc, TENSOR_MAP_KEY) or {}
    _set_meta(bc, TENSOR_MAP_KEY, {t: e for t, e in tmap.items() if e["tensor"] in available})
    gone = {n.name for n in removed}
    node_map = {k: [p for p in v if p not in gone] for k, v in (_json_meta(bc, NODE_MAP_KEY) or {}).items()}
    for f in folded:
        node_map[f] = [n.name for n in conversion.nodes]
    _set_meta(bc, NODE_MAP_KEY, node_map)
    emulated = _json_meta(bc, EMULATED_KEY)
    if emulated is not None:
        vanished = {k for k, v in node_map.items() if not v}
        _set_meta(bc, EMULATED_KEY, {k: v for k, v in emulated.items() if k not in folded and k not in vanished})


def _forget_converted_input(bc: onnx.ModelProto, name: str) -> None:
    """The graph input now holds the runtime view: no tensor_map entry may read it as the float one."""
    tmap = _json_meta(bc, TENSOR_MAP_KEY)
    if tmap is not None:
        _set_meta(bc, TENSOR_MAP_KEY, {t: e for t, e in tmap.items() if e["tensor"] != name})


__all__ = ["AttachedInput", "IntegerConversion", "IntegerWeights", "attach_runtime_input",
           "build_integer_conversion"]
