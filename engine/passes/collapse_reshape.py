"""Collapse consecutive Reshape / Flatten into one Reshape.

    Reshape(Reshape(x, s1), s2) = Reshape(x, s)     (the same holds with Flatten on either side)

A reshape only re-reads the row-major element order, so a chain of them is the last shape
applied to the first input. s is the chain's output shape from shape inference when fully known
(input shapes are static here); otherwise the last Reshape's own constant shape when it has no 0
entry (a 0 copies a dim of the *intermediate* tensor, which would change meaning). The last node
keeps its name and output tensor and becomes `Reshape(x, s)`; the first goes when nothing else
reads its output. Longer chains collapse one link per step within a single run.

Refused (Skip): the intermediate is read elsewhere or is a graph output, the shape is not
constant, or the output shape is unknown and the last shape holds a 0.
"""

from __future__ import annotations

import numpy as np
import onnx

from engine.passes.graph import Graph, attr, replace_node
from engine.passes.result import PassResult, Skip

NAME, VERSION = "collapse_reshape", 1
RESHAPES = ("Reshape", "Flatten")


def target_shape(g: Graph, last: onnx.NodeProto) -> np.ndarray | str:
    """The shape the collapsed Reshape writes, or why it cannot be known."""
    out = g.static_shape(last.output[0])
    if out is not None and all(d > 0 for d in out):
        return np.array(out, dtype=np.int64)
    if last.op_type == "Reshape":
        shape = g.constant(last.input[1])
        if shape is None:
            return f"shape '{last.input[1]}' is not constant"
        if 0 in shape.tolist() and not attr(last, "allowzero", 0):
            return f"output shape is unknown and shape {shape.tolist()} copies dims with 0"
        return shape.astype(np.int64)
    return f"output shape of '{last.output[0]}' is unknown"


def check(g: Graph, first: onnx.NodeProto, last: onnx.NodeProto) -> Skip | None:
    mid = first.output[0]
    if mid in g.outputs:
        return Skip(last.name, f"intermediate '{mid}' is a graph output")
    others = [n.name for n in g.consumers(mid) if n.name != last.name]
    if others:
        return Skip(last.name, f"intermediate '{mid}' also feeds {', '.join(others)}")
    if last.op_type == "Reshape" and g.constant(last.input[1]) is None:
        return Skip(last.name, f"shape '{last.input[1]}' is not constant")
    shape = target_shape(g, last)
    return Skip(last.name, shape) if isinstance(shape, str) else None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for last in [n for n in model.graph.node if n.op_type in RESHAPES and n.domain in ("", "ai.onnx")]:
        first = g.producer(last.input[0])
        if first is None or first.op_type not in RESHAPES or first.domain not in ("", "ai.onnx"):
            continue
        skip = check(g, first, last)
        if skip:
            result.skipped.append(skip)
            continue
        shape = target_shape(g, last)
        shape_name = g.unique_name(f"{last.name}_shape")
        g.set_initializer(shape_name, shape)
        replace_node(last, "Reshape", [first.input[0], shape_name])
        g.remove_nodes([first.name])
        result.changed += 1
    return result
