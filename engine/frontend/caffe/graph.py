"""An ONNX graph under construction: unique node and tensor names, initializers, known shapes.

Layer converters need static shapes while they build (pooling rounding, Crop, Reshape, Flatten),
so each layer's new nodes are shape-inferred right away with `onnx.shape_inference` on a small
model holding just those nodes (inputs typed from what is already known): linear in net size,
and the same inference the finished model gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17; read by every onnxruntime that runs it
SMALL = 64  # initializers up to this many values go into the per-layer inference model as data


class Names:
    """Hands out names never handed out before: `want`, else `want_1`, `want_2`, ..."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def reserve(self, name: str) -> None:
        self.taken.add(name)

    def unique(self, want: str) -> str:
        name, i = want, 0
        while name in self.taken:
            i += 1
            name = f"{want}_{i}"
        self.taken.add(name)
        return name


class Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.shapes: dict[str, list[int]] = {}
        self.tensors = Names()
        self.node_names = Names()
        self._pending: list[onnx.NodeProto] = []

    # ---- building -------------------------------------------------------------------------

    def add_input(self, name: str, shape: Sequence[int]) -> None:
        self.tensors.reserve(name)
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        self.shapes[name] = list(shape)

    def const(self, want: str, value: np.ndarray) -> str:
        """An initializer (float32 unless integer data) under a fresh name."""
        value = np.asarray(value)
        value = value.astype(np.int64 if value.dtype.kind in "iu" else np.float32)
        name = self.tensors.unique(want)
        self.initializers[name] = numpy_helper.from_array(value, name)
        self.shapes[name] = list(value.shape)
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs) -> onnx.NodeProto:
        """Append a node; `outputs` must already be unique tensor names (see `Names.unique`)."""
        node = helper.make_node(op, list(inputs), list(outputs), name=self.node_names.unique(name), **attrs)
        self.nodes.append(node)
        self._pending.append(node)
        return node

    # ---- shapes ---------------------------------------------------------------------------

    def shape(self, tensor: str) -> list[int]:
        if tensor not in self.shapes:
            self.infer_pending()
        return self.shapes[tensor]

    def infer_pending(self) -> list[str]:
        """Infer the output shapes of the nodes added since the last call; returns the outputs
        left without a static, non-empty shape. Raises shape_inference.InferenceError when the
        nodes do not type-check (mismatched shapes)."""
        nodes, self._pending = self._pending, []
        if not nodes:
            return []
        produced = {o for n in nodes for o in n.output}
        inputs, inits, seen = [], [], set()
        for n in nodes:
            for name in n.input:
                if not name or name in produced or name in seen:
                    continue
                seen.add(name)
                init = self.initializers.get(name)
                if init is not None and int(np.prod(self.shapes[name])) <= SMALL:
                    inits.append(init)  # shapes, scales, sizes: inference needs their values
                    continue
                dtype = init.data_type if init is not None else TensorProto.FLOAT
                inputs.append(helper.make_tensor_value_info(name, dtype, self.shapes[name]))
        mini = helper.make_model(helper.make_graph(nodes, "layer", inputs, [], inits),
                                 opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        inferred = shape_inference.infer_shapes(mini, strict_mode=True, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = [d.dim_value for d in dims]
        return [o for n in nodes for o in n.output if o not in self.shapes or min(self.shapes[o], default=1) < 1]

    # ---- result ---------------------------------------------------------------------------

    def model(self, name: str, outputs: Sequence[str], producer: str) -> onnx.ModelProto:
        self.infer_pending()
        graph = helper.make_graph(
            self.nodes, name or "caffe", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, self.shapes.get(o)) for o in outputs],
            list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                                  producer_name=producer)
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
