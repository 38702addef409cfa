"""ONNX frontend: load and check a float model, bring it to a supported opset, make it static.

The parse stage (`engine.stages.parse`) calls these; each failure is a `ModelError` whose one
line names the file and says what was expected and what was found.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper, version_converter

from engine.problems import ModelError, error

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (DESIGN §5)
TARGET_OPSET = 17  # what older models are converted to: widely supported by onnxruntime
MAX_OPSET = 21  # newest default-domain opset we test against onnxruntime


def load_onnx(path: Path, load_weights: bool = True, key: str = "onnx_model") -> onnx.ModelProto:
    shown = str(path)
    if not path.is_file():
        raise ModelError(error("file-missing", f"Can not find file specified: {shown},please check the configuration",
                               ("model_parameters", key), file=None))
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except DecodeError as exc:
        raise ModelError(_bad(shown, key, f"it is not an ONNX protobuf ({exc})")) from None
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:  # type: ignore[attr-defined]
        raise ModelError(_bad(shown, key, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(_bad(shown, key, "it holds no graph (empty or truncated file)"))
    return model


def external_data_files(path: Path) -> list[Path]:
    """The files an ONNX model keeps its weights in (`save_as_external_data`), beside the model.

    They are as much the model as the `.onnx` itself: the parse stage hashes them into its key and
    hblsp watches them, or a weights-only change would reuse stale artefacts. Memoised on the
    model file's size and mtime (reading a large model's graph costs a parse each time).
    """
    try:
        st = path.stat()
    except OSError:
        return []
    return [Path(p) for p in _external_locations(str(path), st.st_size, st.st_mtime_ns)]


@functools.lru_cache(maxsize=32)
def _external_locations(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable here: the parse stage reports it with its own wording
        return ()
    folder = Path(path).parent
    found: dict[str, None] = {}
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                found[str(folder / loc)] = None
    return tuple(found)


def _bad(shown: str, key: str, why: str):
    return error("model-invalid", f"Onnx file invalid: '{shown}': {why}", ("model_parameters", key))


def check(model: onnx.ModelProto, shown: str, key: str = "onnx_model") -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(_bad(shown, key, f"onnx.checker: {first}")) from None


# inputs that are learned parameters (the rest may hold -inf on purpose: attention masks, Clip bounds)
PARAMETER_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                    "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
                    "LayerNormalization": (1, 2), "PRelu": (1,)}


def check_finite_weights(model: onnx.ModelProto, key: str = "onnx_model") -> None:
    """A NaN or Inf in a weight makes every cosine NaN and the integer model garbage: refuse the model,
    naming the first such initializer and the node that reads it."""
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for i in PARAMETER_INPUTS.get(node.op_type, ()):
            name = node.input[i] if i < len(node.input) else ""
            if name not in inits or name in seen:
                continue
            seen.add(name)
            if inits[name].data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                continue
            values = numpy_helper.to_array(inits[name])
            bad = values.size - int(np.count_nonzero(np.isfinite(values)))
            if bad:
                nan = int(np.count_nonzero(np.isnan(values)))
                raise ModelError(error(
                    "model-non-finite-weight", f"The initializer '{name}' read by node '{node.name or node.op_type}' "
                    f"({node.op_type}) holds {nan} NaN and {bad - nan} Inf of its {values.size} values: a model with "
                    "non-finite weights cannot be calibrated or quantized", ("model_parameters", key)))


KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft")  # what onnxruntime executes on the CPU


def check_domains(model: onnx.ModelProto, key: str = "onnx_model") -> None:
    """Custom-domain operators cannot be parsed, calibrated or run: say which, in hb_mapper's words."""
    by_domain: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS:
            by_domain.setdefault(node.domain, []).append(node.op_type)
    if by_domain:
        domain, ops = next(iter(by_domain.items()))
        raise ModelError(error("model-custom-domain", f"nodes:{sorted(set(ops))} are specified as domain:{domain}, "
                               "which are not supported by official onnx (only the ai.onnx and com.microsoft "
                               "operator sets can be compiled)", ("model_parameters", key)))


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, shown: str, key: str = "onnx_model") -> onnx.ModelProto:
    """Opset < 13 → 17 with onnx's version converter (ORT's quantizer writes broken files otherwise)."""
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise ModelError(error("model-opset", f"The opset version of the onnx model is {opset}, only models with "
                               f"opset_version {MIN_OPSET}~{MAX_OPSET} (older ones are converted) are supported",
                               ("model_parameters", key)))
    if opset >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors with C++ text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(_bad(shown, key, f"cannot convert opset {opset} to {TARGET_OPSET}: {first}")) from None


def initializers_as_constants(model: onnx.ModelProto) -> int:
    """Initializers also listed as graph inputs (required before IR 4; torch's
    keep_initializers_as_inputs=True) are weights to hb_compile, not inputs: drop them from the
    inputs (else no pass may fold them, and the integer program fails onnx's IR 3 check) and raise
    the IR version to one where that is legal. Returns how many inputs were dropped."""
    weights = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    dropped = len(model.graph.input) - len(kept)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(list(model.opset_import)), 4)
    return dropped


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed or duplicate-named node a stable `OpType_index` name (hb style)."""
    used = Counter(n.name for n in model.graph.node if n.name)
    taken = set(used)
    renamed = 0
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.name and node.name not in seen and used[node.name] >= 1:
            seen.add(node.name)
            continue
        base = f"{node.op_type}_{index}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
        seen.add(name)
        renamed += 1
    return renamed


def set_input_shape(model: onnx.ModelProto, name: str, shape: tuple[int, ...]) -> None:
    for vi in model.graph.input:
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shape:
                dims.add().dim_value = int(d)
            return
    raise KeyError(name)


def clear_inferred_shapes(model: onnx.ModelProto) -> None:
    """Drop value_info and output dims so shape inference recomputes them from the new inputs."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")


def infer_shapes(model: onnx.ModelProto, shown: str, key: str = "onnx_model") -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(error("model-shape", f"model conversion faild: {first}", ("model_parameters", key))) from None


@dataclass(frozen=True)
class ChannelMismatch:
    """A Conv / ConvTranspose whose input carries another channel count than its weight takes."""

    node: str
    op_type: str
    expected: int
    found: int


def channel_mismatches(model: onnx.ModelProto) -> list[ChannelMismatch]:
    """onnx's shape inference does not compare a Conv's input channels with its weight (onnxruntime only
    finds out when it runs): checked here on the inferred shapes, so a wrong input_shape fails at parse."""
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x or not w or len(x) < 2 or len(w) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        expected = w[1] * group if node.op_type == "Conv" else w[0]
        if x[1] != expected:
            found.append(ChannelMismatch(node.name, node.op_type, expected, x[1]))
    return found


def add_outputs(model: onnx.ModelProto, node_names: list[str]) -> None:
    """`output_nodes`: make the outputs of these nodes graph outputs (keeping existing ones)."""
    by_name = {n.name: n for n in model.graph.node}
    present = {o.name for o in model.graph.output}
    vi = {v.name: v for v in model.graph.value_info}
    for name in node_names:
        node = by_name[name]
        for out in node.output:
            if out and out not in present:
                model.graph.output.append(vi[out] if out in vi else onnx.helper.make_empty_tensor_value_info(out))
                present.add(out)


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in values.items():
        if k in existing:
            existing[k].value = v
        else:
            model.metadata_props.add(key=k, value=v)
