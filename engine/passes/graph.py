"""Small graph utilities the passes share: producers, consumers, constants, shapes, renames.

A `Graph` is a view over `model.graph` built once per pass; after a structural edit (nodes
removed, inputs rewired) call `refresh()` so the maps match the graph again. Tensors named by
nodes inside If/Loop/Scan bodies count as uses of the outer tensor, so no pass removes or renames
a tensor a subgraph still reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16)


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node` (onnx.helper's conversion), or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def used_names(node: onnx.NodeProto) -> list[str]:
    """The tensors `node` reads: its inputs, then names its subgraphs read from outside."""
    names = [i for i in node.input if i]
    for sub in subgraphs(node):
        inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        inner |= {o for n in sub.node for o in n.output}
        names += [u for n in sub.node for u in used_names(n) if u not in inner]
    return names


def _rename_inputs(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for sub in subgraphs(n):
            _rename_inputs(sub.node, old, new)


@dataclass
class Graph:
    """Maps over one model's main graph; see the module docstring for the refresh rule."""

    model: onnx.ModelProto
    producers: dict[str, onnx.NodeProto] = field(init=False)
    _consumers: dict[str, list[onnx.NodeProto]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    inputs: set[str] = field(init=False)
    outputs: set[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    value_info: dict[str, onnx.ValueInfoProto] = field(init=False)

    def __post_init__(self) -> None:
        self.refresh()

    @property
    def g(self) -> onnx.GraphProto:
        return self.model.graph

    def refresh(self) -> None:
        self.producers, self._consumers, self.index = {}, {}, {}
        for i, node in enumerate(self.g.node):
            self.index[node.name] = i
            for out in node.output:
                if out:
                    self.producers[out] = node
            for name in dict.fromkeys(used_names(node)):
                self._consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in self.g.initializer}
        self.inputs = {i.name for i in self.g.input}
        self.outputs = {o.name for o in self.g.output}
        self.value_info = {v.name: v for v in (*self.g.value_info, *self.g.input, *self.g.output)}

    # --- lookups -------------------------------------------------------------------------------
    def producer(self, name: str) -> onnx.NodeProto | None:
        return self.producers.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return self._consumers.get(name, [])

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, if exactly one does and it is not a graph output."""
        users = self.consumers(name)
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def is_initializer(self, name: str) -> bool:
        """A constant initializer: present and not overridable as a graph input."""
        return name in self.initializers and name not in self.inputs

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is constant (an initializer or a Constant node's output)."""
        if self.is_initializer(name):
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return constant_node_value(node)
        return None

    def private_initializer(self, name: str, owner: onnx.NodeProto) -> bool:
        """An initializer only `owner` reads (so the pass may rewrite its values in place)."""
        return self.is_initializer(name) and [n.name for n in self.consumers(name)] == [owner.name]

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """Known dims of `name` (None for an unknown dim), or None when the rank is unknown."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        vi = self.value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shape(name)
        return shape if shape is not None and all(d is not None for d in shape) else None  # type: ignore[return-value]

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        vi = self.value_info.get(name)
        return vi.type.tensor_type.elem_type if vi is not None and vi.type.HasField("tensor_type") else None

    def opset(self, domain: str = "") -> int:
        return next((o.version for o in self.model.opset_import
                     if o.domain == domain or (domain == "" and o.domain == "ai.onnx")), 0)

    def names(self) -> set[str]:
        taken = {n.name for n in self.g.node} | set(self.producers) | set(self.initializers)
        return taken | self.inputs | self.outputs

    def unique_name(self, base: str, taken: set[str] | None = None) -> str:
        """`base`, or `base_k` for the first k free. `taken`: names already in use, kept by a caller that
        names many tensors before the graph changes (the new name is added to it)."""
        in_use = self.names() if taken is None else taken
        name, k = base, 1
        while name in in_use:
            name, k = f"{base}_{k}", k + 1
        if taken is not None:
            taken.add(name)
        return name

    # --- edits ---------------------------------------------------------------------------------
    def set_initializer(self, name: str, value: np.ndarray) -> None:
        """Add `name`, or overwrite its values in place (the caller checked nobody else reads it)."""
        tensor = numpy_helper.from_array(np.asarray(value, order="C"), name)
        if name in self.initializers:
            self.initializers[name].CopyFrom(tensor)
        else:
            self.g.initializer.append(tensor)
            self.initializers[name] = self.g.initializer[-1]

    def replace_uses(self, old: str, new: str) -> None:
        """Every node (and subgraph) reading `old` reads `new` instead."""
        _rename_inputs(self.consumers(old), old, new)

    def remove_nodes(self, names: Iterable[str]) -> None:
        """Delete nodes by name, drop the value_info of tensors nobody produces any more, refresh."""
        doomed = set(names)
        gone: set[str] = set()
        for i in reversed(range(len(self.g.node))):
            if self.g.node[i].name in doomed:
                gone.update(self.g.node[i].output)
                del self.g.node[i]
        self.refresh()
        self.drop_value_info(gone - set(self.producers))

    def drop_value_info(self, names: Iterable[str]) -> None:
        names = set(names)
        for i in reversed(range(len(self.g.value_info))):
            if self.g.value_info[i].name in names:
                del self.g.value_info[i]
        self.value_info = {v.name: v for v in (*self.g.value_info, *self.g.input, *self.g.output)}


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a Constant node holds (any of its value_* attribute forms but sparse)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.array(helper.get_attribute_value(a), dtype=np.int64)
        if a.name in ("value_string", "value_strings"):
            return np.array(helper.get_attribute_value(a), dtype=object)
    return None


def replace_node(node: onnx.NodeProto, op_type: str, inputs: list[str], **attrs) -> None:
    """Turn `node` into another op in place: its name, outputs and graph position stay."""
    node.op_type, node.domain = op_type, ""
    del node.input[:]
    node.input.extend(inputs)
    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items() if v is not None)
