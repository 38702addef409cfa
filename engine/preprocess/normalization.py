"""Input normalization: `(x − mean) · scale` or `(x − mean) / std` (as `· 1/std`), built into the float model.

Calibration samples and the float model's train view are un-normalized (reference §10): the
tool, not the user, applies mean/scale. `insert_normalization` puts that arithmetic in front of
the original first consumers so the model's input takes the raw train view. The graph input
keeps its name (users and `input_name` refer to it); the normalized tensor gets a new one, and
every node is named `HZ_PREPROCESS_FOR_<input>…` so reports can show it as its own row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.config.schema_check import format_error
from engine.problems import ConfigError, ModelError, Problem, error

IP = "input_parameters"
STD_RECIPROCAL = "std_reciprocal"  # suffix of the constant 1/std_value that the preprocess Mul reads
NumberInput = float | int | str | Sequence[float] | np.ndarray | None


def preprocess_prefix(input_name: str) -> str:
    """Name prefix of every node and tensor the tool inserts for one input (hb_compile's style)."""
    return f"HZ_PREPROCESS_FOR_{input_name}"


def normalized_name(input_name: str) -> str:
    """Name of the normalized train-view tensor that the model's original consumers read."""
    return f"{preprocess_prefix(input_name)}_normalized"


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and multiplier of one input; each array holds 1 or C float values.

    `scale` multiplies (= 1/std) and `std` divides; at most one of them is set.
    """

    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and self.std is not None:
            raise ConfigError(_scale_and_std())

    @classmethod
    def from_values(cls, mean_value: NumberInput, scale_value: NumberInput, std_value: NumberInput,
                    channels: int) -> Normalization:
        """Config values (scalar, per-channel list, or '1 2 3' text) → arrays of `channels` values.

        A single value is broadcast to every channel; otherwise the count must equal `channels`.
        Raises `ConfigError` with every problem found.
        """
        problems: list[Problem] = []
        if scale_value is not None and std_value is not None:
            problems.append(_scale_and_std())
        arrays = {}
        for key, value in (("mean_value", mean_value), ("scale_value", scale_value), ("std_value", std_value)):
            arr, problem = _per_channel(key, value, channels)
            arrays[key] = arr
            if problem:
                problems.append(problem)
        std = arrays["std_value"]
        if std is not None and np.any(std == 0):
            problems.append(error("std-zero", "std_value must not contain 0", (IP, "std_value")))
        if problems:
            raise ConfigError(problems)
        return cls(arrays["mean_value"], arrays["scale_value"], std)

    @property
    def is_identity(self) -> bool:
        return self.mean is None and self.scale is None and self.std is None

    @property
    def channels(self) -> int:
        sizes = [a.size for a in (self.mean, self.scale, self.std) if a is not None]
        return max(sizes, default=1)

    def mean_or_zero(self, channels: int) -> np.ndarray:
        return np.broadcast_to(self.mean if self.mean is not None else 0.0, (channels,)).astype(np.float64)

    def multiplier(self, channels: int) -> np.ndarray:
        """What `x − mean` is multiplied by, per channel: scale, 1/std, or 1."""
        if self.scale is not None:
            m = self.scale
        elif self.std is not None:
            m = 1.0 / np.asarray(self.std, dtype=np.float64)
        else:
            m = 1.0
        return np.broadcast_to(m, (channels,)).astype(np.float64)


def _scale_and_std() -> Problem:
    return error("scale-and-std", "Only one of scale_value and std_value can be specified", (IP, "std_value"))


def _per_channel(key: str, value: NumberInput, channels: int) -> tuple[np.ndarray | None, Problem | None]:
    if value is None:
        return None, None
    try:
        if isinstance(value, str):
            parts = value.replace(",", " ").split()
            values = np.array([float(p) for p in parts], dtype=np.float64)
        else:
            values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        return None, error("bad-format", format_error((IP, key), value), (IP, key))
    shown = " ".join(f"{v:g}" for v in values)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None, error("bad-format", format_error((IP, key), shown or repr(value)), (IP, key))
    if values.size == 1:
        return np.full(channels, values[0]), None
    if values.size != channels:
        return None, error("norm-channels", f"Wrong {key} format {shown}: the input has {channels} channels, so "
                           f"give 1 or {channels} values, found {values.size}", (IP, key),
                           data={"channels": channels, "found": int(values.size)})
    return values, None


def broadcast_shape(layout: str | None, rank: int, channels: int) -> list[int]:
    """Shape a per-channel constant needs to broadcast: NCHW → [1,C,1,1], NHWC → [1,1,1,C]."""
    if channels == 1:
        return [1] * rank
    if rank < 2:
        return [channels]
    shape = [1] * rank
    shape[rank - 1 if layout == "NHWC" else 1] = channels
    return shape


def normalization_nodes(prefix: str, x: str, out: str, norm: Normalization, layout: str | None, rank: int,
                        dtype: np.dtype) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Sub (mean) then Mul (scale, or 1/std) from `x` to `out`; the last node is named `prefix`.

    Kept as two broadcast elementwise ops, the documented formula, so the float model computes what
    the user's training code did. std_value is a Mul by its reciprocal (constant `{prefix}_std_reciprocal`),
    not a Div: hb_compile runs the preprocess node on the BPU (reference §10), and Div has no integer
    form, so a Div would leave the input normalization on the CPU in float. An identity normalization
    is an Identity node.
    """
    channels = norm.channels
    shape = broadcast_shape(layout, rank, channels)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(suffix: str, values: np.ndarray) -> str:
        name = f"{prefix}_{suffix}"
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype).reshape(shape), name))
        return name

    steps: list[tuple[str, str]] = []  # (op, constant name)
    if norm.mean is not None:
        steps.append(("Sub", const("mean_value", norm.mean)))
    if norm.scale is not None:
        steps.append(("Mul", const("scale_value", norm.scale)))
    elif norm.std is not None:
        steps.append(("Mul", const(STD_RECIPROCAL, 1.0 / np.asarray(norm.std, dtype=np.float64))))
    if not steps:
        return [helper.make_node("Identity", [x], [out], name=prefix)], []
    current = x
    for i, (op, cname) in enumerate(steps):
        last = i == len(steps) - 1
        target = out if last else f"{prefix}_minus_mean"
        nodes.append(helper.make_node(op, [current, cname], [target], name=prefix if last else f"{prefix}_mean"))
        current = target
    return nodes, inits


# ------------------------------------------------------------------ model surgery shared with conversion

def graph_input(model: onnx.ModelProto, input_name: str) -> tuple[int, onnx.ValueInfoProto]:
    for i, vi in enumerate(model.graph.input):
        if vi.name == input_name:
            return i, vi
    names = [vi.name for vi in model.graph.input]
    raise ModelError(error("input-name-unknown", f"The input_name '{input_name}' is not an input of the model; "
                           f"the model's inputs are {names}", (IP, "input_name")))


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_graphs(g)


def rewire_consumers(model: onnx.ModelProto, old: str, new: str) -> int:
    """Point every node input reading `old` (also inside If/Loop bodies) at `new`."""
    count = 0
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new
                    count += 1
    return count


def used_names(model: onnx.ModelProto) -> set[str]:
    """Every node and tensor name in the main graph (to refuse inserting the same names twice)."""
    g = model.graph
    names = {n.name for n in g.node}
    names |= {t for n in g.node for t in (*n.input, *n.output)}
    names |= {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
    names.discard("")
    return names


def refuse_existing(model: onnx.ModelProto, input_name: str, names: set[str]) -> None:
    clash = sorted(names & used_names(model))
    if clash:
        raise ModelError(error("preprocess-exists", f"The model already holds preprocessing for input "
                               f"'{input_name}' ({', '.join(clash[:3])}); it can be inserted only once",
                               (IP, "input_name")))


def prepend(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    g = model.graph
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    g.initializer.extend(inits)


def insert_normalization(model: onnx.ModelProto, input_name: str, norm: Normalization,
                         layout: str | None) -> onnx.ModelProto:
    """Make `input_name` take the un-normalized train view; the model is changed in place and returned.

    The original first consumers now read `normalized_name(input_name)`, computed by
    `normalization_nodes`; the graph input keeps its name, type and shape.
    """
    _, vi = graph_input(model, input_name)
    elem = vi.type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        raise ModelError(error("preprocess-dtype", f"Input '{input_name}' is of type "
                               f"{onnx.TensorProto.DataType.Name(elem)}; mean/scale/std need a float input",
                               (IP, "mean_value")))
    rank = len(vi.type.tensor_type.shape.dim) if vi.type.tensor_type.HasField("shape") else 4
    prefix, out = preprocess_prefix(input_name), normalized_name(input_name)
    nodes, inits = normalization_nodes(prefix, input_name, out, norm, layout, rank,
                                       helper.tensor_dtype_to_np_dtype(elem))
    refuse_existing(model, input_name, {n.name for n in nodes} | {out} | {t.name for t in inits})
    rewire_consumers(model, input_name, out)
    prepend(model, nodes, inits)
    normalized = onnx.ValueInfoProto()
    normalized.CopyFrom(vi)
    normalized.name = out
    model.graph.value_info.append(normalized)
    return model


_NORM_OPS = {"Sub": ("mean_value",), "Mul": ("scale_value", STD_RECIPROCAL), "Div": ("std_value",)}


def _norm_value(key: str, values: np.ndarray) -> tuple[str, np.ndarray]:
    """A preprocess constant → (Normalization field key, its values): the reciprocal constant is std_value."""
    return ("std_value", 1.0 / values) if key == STD_RECIPROCAL else (key, values)


def find_normalization(model: onnx.ModelProto, input_name: str) -> Normalization | None:
    """The normalization `insert_normalization` put in front of `input_name`, if the model still holds it
    as inserted: `input → [Sub mean] → [Mul scale | Div std] → normalized_name(input)`, constants as
    initializers. None otherwise (no normalization, or a pass rewrote it), so a caller never folds
    arithmetic it did not recognise."""
    prefix, out = preprocess_prefix(input_name), normalized_name(input_name)
    g = model.graph
    by_name = {n.name: n for n in g.node}
    chain = [n for n in (by_name.get(f"{prefix}_mean"), by_name.get(prefix)) if n is not None]
    if not chain or chain[-1].name != prefix or list(chain[-1].output) != [out]:
        return None
    inits = {t.name: t for t in g.initializer}
    values: dict[str, np.ndarray] = {}
    current = input_name
    for node in chain:
        const = node.input[1] if len(node.input) == 2 else ""
        key = next((k for k in _NORM_OPS.get(node.op_type, ()) if const == f"{prefix}_{k}"), None)
        if key is None or node.input[0] != current or const not in inits:
            return None
        field, found = _norm_value(key, numpy_helper.to_array(inits[const]).astype(np.float64).ravel())
        if field in values:
            return None
        values[field] = found
        current = node.output[0]
    try:
        return Normalization(values.get("mean_value"), values.get("scale_value"), values.get("std_value"))
    except ConfigError:
        return None


def remove_normalization(model: onnx.ModelProto, input_name: str) -> Normalization | None:
    """Undo `insert_normalization` (in place): the model's nodes read `input_name` again.

    Returns the normalization it held (None if there was none), so a later stage can fold it into
    the runtime input conversion's single affine op instead of keeping two elementwise ops.
    """
    prefix, out = preprocess_prefix(input_name), normalized_name(input_name)
    g = model.graph
    ours = [n for n in g.node if n.name in (prefix, f"{prefix}_mean")]
    if not ours or not any(out in n.output for n in ours):
        return None
    inits = {t.name: t for t in g.initializer}
    values: dict[str, np.ndarray] = {}
    for node in ours:
        for name in node.input[1:]:
            if name in inits and name.startswith(prefix):
                field, found = _norm_value(name[len(prefix) + 1:],
                                           numpy_helper.to_array(inits[name]).astype(np.float64).ravel())
                values[field] = found
    removed_nodes = {id(n) for n in ours}
    kept = [n for n in g.node if id(n) not in removed_nodes]
    del g.node[:]
    g.node.extend(kept)
    still_used = {t for n in g.node for t in n.input}
    kept_inits = [t for t in g.initializer if not (t.name.startswith(prefix) and t.name not in still_used)]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    kept_info = [v for v in g.value_info if v.name != out]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    rewire_consumers(model, out, input_name)
    for o in g.output:
        if o.name == out:
            o.name = input_name
    return Normalization(values.get("mean_value"), values.get("scale_value"), values.get("std_value"))


__all__ = ["Normalization", "broadcast_shape", "find_normalization", "insert_normalization", "normalization_nodes",
           "normalized_name", "preprocess_prefix", "remove_normalization"]
