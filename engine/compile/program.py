"""The integer program (`.bc`, and the program inside a `.hbm`) as a model: its metadata and its tensors.

The quantize stage writes the `.bc` as an ONNX model whose `metadata_props` describe it
(docs/formats.md): ``hbcompile.tensor_map`` (float tensor → integer tensor, scale, zero point,
dtype), ``hbcompile.inputs`` (the input specs: name, shape, input_type_rt / _train, layouts …),
``hbcompile.march``, and, when the lowering records them, ``hbcompile.node_map`` (float node →
the program nodes that implement it) and ``hbcompile.emulated`` (BPU nodes run by float kernels,
with the reason). Node removal adds ``hbcompile.removed_nodes``; packaging with the plan adds
``hbcompile.placement`` ({float node: on, reason, op_type, group, kind}) so the `.hbm` can be
partitioned (hb_model_info, perf) exactly as the plan placed it.

`tensor_types` asks onnxruntime for the element type and shape of every value: onnx's own shape
inference does not know the com.microsoft QLinear* operators the program uses, onnxruntime does,
and it answers from the model alone (no inference run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import helper

from engine.pipeline.recent import Recent
from engine.problems import ModelError, error

TENSOR_MAP = "hbcompile.tensor_map"
INPUTS = "hbcompile.inputs"
MARCH = "hbcompile.march"
NODE_MAP = "hbcompile.node_map"
EMULATED = "hbcompile.emulated"
REMOVED_NODES = "hbcompile.removed_nodes"
PLACEMENT = "hbcompile.placement"
VERSION = "hbcompile.version"
STAGE = "hbcompile.stage"
CONFIG_SHA256 = "hbcompile.config_sha256"

INTEGER_DTYPES = frozenset({"uint8", "int8", "int16", "uint16", "int32", "uint32"})
_ORT_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16",
               "bool": "bool", "string": "str"}


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def json_metadata(model: onnx.ModelProto, key: str, default: Any = None) -> Any:
    """A JSON-valued metadata entry; a malformed one is a ModelError naming the key."""
    text = metadata(model).get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(error("model-metadata", f"The model's metadata '{key}' is not valid JSON ({e.msg} at "
                                                 f"character {e.pos})")) from None


def set_metadata(model: onnx.ModelProto, key: str, value: Any) -> None:
    """Set (or replace) one metadata entry; non-strings are stored as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    for p in model.metadata_props:
        if p.key == key:
            p.value = text
            return
    model.metadata_props.add(key=key, value=text)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every value a node of `graph` reads (with what its subgraphs read from outside: If / Loop bodies read
    outer values, `passes.graph.used_names`), and the graph's outputs."""
    from engine.passes.graph import used_names

    return {o.name for o in graph.output} | {name for node in graph.node for name in used_names(node)}


def drop_unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Remove the initializers nothing reads (onnxruntime warns "Removing initializer … It is not used by
    any node" for each when it opens the file); returns their names. An initializer that is also a graph
    input stays: it is an input with a default value."""
    g = model.graph
    keep = read_names(g) | {i.name for i in g.input}
    dropped = [t.name for t in g.initializer if t.name not in keep]
    if dropped:
        kept = [t for t in g.initializer if t.name in keep]
        del g.initializer[:]
        g.initializer.extend(kept)
    return dropped


def is_integer_program(model: onnx.ModelProto) -> bool:
    """A `.bc`-style program: it says so in its metadata, or it computes with integer operators."""
    meta = metadata(model)
    if TENSOR_MAP in meta:
        return True
    return any(n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger")
               for n in model.graph.node)


@dataclass(frozen=True)
class TensorType:
    """Element type (numpy name) and shape (ints; str/None for symbolic or unknown dims)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    @cached_property  # the estimate asks for a tensor's size from every layer that touches it
    def static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    @cached_property
    def elements(self) -> int | None:
        return math.prod(self.shape) if self.static else None  # type: ignore[arg-type]

    @property
    def itemsize(self) -> int:
        try:
            return np.dtype(self.dtype).itemsize
        except TypeError:
            return 4

    @property
    def nbytes(self) -> int | None:
        n = self.elements
        return None if n is None else n * self.itemsize

    @property
    def is_integer(self) -> bool:
        return self.dtype in INTEGER_DTYPES


def _ort_dtype(type_str: str) -> str:
    inner = type_str[len("tensor("):-1] if type_str.startswith("tensor(") else type_str
    return _ORT_DTYPES.get(inner, inner)


def _dims(shape: Any) -> tuple[int | str | None, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else (d or None) for d in shape)


TYPES_MEMO_SIZE = 8  # programs whose tensor types are kept (a warm engine compiles the same few again)
_types_memo: Recent[str, dict[str, TensorType]] = Recent(TYPES_MEMO_SIZE)


def tensor_types(model: onnx.ModelProto, digest: str | None = None,
                 derive: Callable[[], dict[str, TensorType] | None] | None = None) -> dict[str, TensorType]:
    """Every graph input, initializer and node output (top-level graph) with its type and shape.

    Kept per program content: onnxruntime has to load the program to say them (digits: ~5 ms of a
    ~15 ms compile stage), and a compiler_parameters edit compiles the same program again.
    `digest`: a sha256 of the program's bytes the caller already has (the `.hbm` manifest's), so
    the program is not serialized again just to look it up. `derive`: a cheaper way to the same
    answer (`kept_types` from the program it was derived from), tried before onnxruntime; None
    when it does not apply."""
    import hashlib

    key = digest or hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    kept = _types_memo.get(key)
    if kept is None:
        kept = _types_memo.put(key, (derive() if derive is not None else None) or _tensor_types(model))
    return dict(kept)


def kept_types(model: onnx.ModelProto, source: Mapping[str, TensorType]) -> dict[str, TensorType] | None:
    """`model`'s tensor types read from `source`: the types of programs derived, like `model`, from one
    `.bc` by rewrites that keep every surviving value's name and type (O0 / O1: nodes and constants
    dropped or rewired, none created or changed). Its graph inputs and node outputs from `source`,
    its initializers from `source` or from themselves. None when a graph input or node output is
    not in `source`."""
    g = model.graph
    types: dict[str, TensorType] = {}
    for t in g.initializer:
        types[t.name] = source.get(t.name) or TensorType(t.name, helper.tensor_dtype_to_np_dtype(t.data_type).name,
                                                         tuple(int(d) for d in t.dims))
    try:
        for name in [i.name for i in g.input if i.name not in types] + [o for n in g.node for o in n.output if o]:
            types[name] = source[name]
    except KeyError:
        return None
    return types


def _tensor_types(model: onnx.ModelProto) -> dict[str, TensorType]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                known.add(out)
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
        raise ModelError(error("model-invalid", f"onnxruntime cannot load the model: {_first_line(e)}")) from None
    types: dict[str, TensorType] = {}
    for t in model.graph.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type).name
        types[t.name] = TensorType(t.name, dtype, tuple(int(d) for d in t.dims))
    for arg in [*session.get_inputs(), *session.get_outputs()]:
        types[arg.name] = TensorType(arg.name, _ort_dtype(arg.type), _dims(arg.shape))
    for node in model.graph.node:  # Constant nodes: their value's type
        if node.op_type == "Constant" and node.output and node.output[0] not in types:
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = TensorType(node.output[0], helper.tensor_dtype_to_np_dtype(
                        a.t.data_type).name, tuple(int(d) for d in a.t.dims))
    return types


# ------------------------------------------------------------------------------------ I/O specs

def _value_dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def io_specs(model: onnx.ModelProto, view: str = "runtime", digest: str | None = None) -> tuple[list[dict], list[dict]]:
    """JSON-ready input and output specs: name, shape, dtype, plus what the model stores about them.

    Inputs carry the config's input spec (``hbcompile.inputs``: input_type_rt / _train, layouts,
    space and range, mean / scale) and, in the runtime view, the runtime tensor's layout
    (``input_layout_rt``, implied by the rt type when not given). An input or output whose boundary
    node was removed (``hbcompile.removed_nodes``) lists those nodes, and carries ``quantization``
    (scale, zero point, dtype) when the tensor now holds integer codes; a removed Transpose at an input
    permutes its ``input_layout_rt`` (`_permute`). `digest`: the sha256 of the
    model's bytes, for `tensor_types` when an output's type is not declared.
    """
    stored = {s.get("name"): s for s in json_metadata(model, INPUTS, []) or [] if isinstance(s, dict)}
    removed = json_metadata(model, REMOVED_NODES, []) or []
    needs_types = any(_value_dims(o) is None or not o.type.tensor_type.elem_type for o in model.graph.output)
    types = tensor_types(model, digest) if needs_types else {}
    inputs = []
    for vi in graph_inputs(model):
        spec = {k: v for k, v in stored.get(vi.name, {}).items() if k != "shape"}
        spec.update(name=vi.name, shape=_value_dims(vi),
                    dtype=helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)
        if vi.name in stored and stored[vi.name].get("shape") is not None:
            spec["train_shape"] = list(stored[vi.name]["shape"])
        if view == "runtime" and spec.get("input_type_rt"):
            spec["input_layout_rt"] = _runtime_layout(spec)
        _apply_removed(spec, removed, "input")
        inputs.append(spec)
    outputs = []
    for vi in model.graph.output:
        dims, elem = _value_dims(vi), vi.type.tensor_type.elem_type
        if (dims is None or not elem) and vi.name in types:
            t = types[vi.name]
            spec = {"name": vi.name, "shape": list(t.shape) if t.shape is not None else None, "dtype": t.dtype}
        else:
            spec = {"name": vi.name, "shape": dims,
                    "dtype": helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown"}
        _apply_removed(spec, removed, "output")
        outputs.append(spec)
    return inputs, outputs


def _runtime_layout(spec: dict) -> str | None:
    from engine.preprocess.conversion import INPUT_TYPES

    t = INPUT_TYPES.get(spec.get("input_type_rt") or "")
    if t is None or t.nv12:
        return None
    if t.space == "featuremap":
        return spec.get("input_layout_train")
    return spec.get("input_layout_rt") or t.implied_layout


def _apply_removed(spec: dict, removed: list, position: str) -> None:
    mine = [r for r in removed if isinstance(r, dict) and r.get("position") == position
            and r.get("tensor") == spec["name"]]
    if not mine:
        return
    spec["removed_nodes"] = mine
    for r in mine:  # in removal order: the innermost removal that re-reads the codes says how they are read
        q = r.get("params", {})
        if r.get("op_type") == "Transpose" and q.get("perm"):
            _permute(spec, [int(p) for p in q["perm"]], position)
        elif r.get("op_type") in ("QuantizeLinear", "DequantizeLinear") and "scale" in q:
            spec["quantization"] = {k: q[k] for k in ("scale", "zero_point", "dtype", "axis") if k in q}
        elif r.get("op_type") == "QLinearSoftmax" and position == "output" and "input_scale" in q:
            # the output is the softmax's input codes now, at the softmax's input scale
            spec["quantization"] = {"scale": q["input_scale"], "zero_point": q["input_zero_point"],
                                    "dtype": q.get("input_dtype") or "uint8"}


def _permute(spec: dict, perm: list[int], position: str) -> None:
    """A removed Transpose: the tensor is now the other side of it. At an input the application feeds
    ``transpose(old input, perm)``: the runtime layout reads through `perm` (NHWC by [0, 3, 1, 2] is
    NCHW), so `from_train_view` and hb_model_info say what the model takes. At an output it reads
    ``transpose⁻¹(old output)``. The shape is the graph's already; a per-axis quantization recorded by a
    Quantize / Dequantize removed outside the Transpose moves its axis to the new tensor's."""
    q = spec.get("quantization")
    if position == "input":
        layout = spec.get("input_layout_rt")
        if isinstance(layout, str) and len(layout) == len(perm):
            spec["input_layout_rt"] = "".join(layout[p] for p in perm)
        if q and "axis" in q:
            q["axis"] = perm.index(int(q["axis"]) % len(perm))
    elif q and "axis" in q:
        q["axis"] = perm[int(q["axis"]) % len(perm)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
