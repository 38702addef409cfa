"""What the rules and the editor need to know about a model, read cheaply and kept warm.

`ModelInfo` is small and immutable (names, shapes, op types), so the language server can keep
one per model content hash and the rules can check `input_name`, `input_shape` and node names
without holding the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

Dim = int | str | None  # int: static, str: symbolic, None: unknown


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[Dim, ...] | None
    elem_type: int

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d > 0 for d in self.shape)

    @property
    def dtype_name(self) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).name if self.elem_type else "unknown"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    nodes: tuple[NodeInfo, ...]
    opset: int
    value_shapes: dict[str, tuple[Dim, ...]]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def node(self, name: str) -> NodeInfo | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def checked_part(self) -> dict:
        """What the config rules read (input names, shapes, types; node names) as JSON: the parse stage
        keeps it with its result, so a run that reuses parse still checks the config of this run."""
        return {"inputs": [[t.name, list(t.shape) if t.shape is not None else None, t.elem_type]
                           for t in self.inputs],
                "nodes": [[n.name, n.op_type] for n in self.nodes], "opset": self.opset}

    @classmethod
    def from_checked_part(cls, part: dict) -> ModelInfo:
        inputs = tuple(TensorInfo(name, tuple(shape) if shape is not None else None, int(elem))
                       for name, shape, elem in part["inputs"])
        nodes = tuple(NodeInfo(name, op, (), ()) for name, op in part["nodes"])
        return cls(inputs, (), nodes, int(part.get("opset", 0)), {})


def _shape(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def model_info(model: onnx.ModelProto) -> ModelInfo:
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = tuple(TensorInfo(v.name, _shape(v), v.type.tensor_type.elem_type) for v in g.input if v.name not in inits)
    outputs = tuple(TensorInfo(v.name, _shape(v), v.type.tensor_type.elem_type) for v in g.output)
    nodes = tuple(NodeInfo(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in g.node)
    shapes = {v.name: s for v in list(g.value_info) + list(g.input) + list(g.output) if (s := _shape(v)) is not None}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(inputs, outputs, nodes, opset, shapes)


def read_model_info(path: str | Path) -> ModelInfo:
    """Structure only: external weights are not loaded (raises what `load_onnx` raises)."""
    from engine.frontend.onnx_model import load_onnx, name_nodes

    model = load_onnx(Path(path), load_weights=False)
    name_nodes(model)  # the names the parse stage gives, so rules and completion agree with the tables
    return model_info(model)
