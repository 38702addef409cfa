"""Remove Identity nodes: y = Identity(x) carries no computation.

Three cases (the output y decides):
  1. y is not a graph output: every reader of y reads x instead; the node goes.
  2. y is a graph output and x is an ordinary node output read by nobody else that matters:
     x's producer writes y directly (graph output names never change), readers of x read y.
  3. y is a graph output and x is a graph input, an initializer or another graph output:
     the Identity is what makes y exist, so it stays (Skip).
`bypass` is shared with `remove_dropout`, whose inference-mode Dropout is an Identity on input 0.
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph
from engine.passes.result import PassResult, Skip

NAME, VERSION = "remove_identity", 1


def bypass(g: Graph, node: onnx.NodeProto, x: str, y: str) -> Skip | None:
    """Remove `node`, which only passes tensor `x` through as `y` (cases in the module docstring)."""
    if y not in g.outputs:  # case 1
        g.replace_uses(y, x)
        g.remove_nodes([node.name])
        return None
    producer = g.producer(x)
    if producer is None or x in g.inputs or x in g.outputs or g.is_initializer(x):  # case 3
        return Skip(node.name, f"its output '{y}' is a graph output and its input '{x}' is a graph "
                               "input, initializer or graph output")
    # case 2
    for i, out in enumerate(producer.output):
        if out == x:
            producer.output[i] = y
    g.replace_uses(x, y)
    g.remove_nodes([node.name])
    g.drop_value_info([x])
    return None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for node in [n for n in model.graph.node if n.op_type == "Identity" and n.domain in ("", "ai.onnx")]:
        skip = bypass(g, node, node.input[0], node.output[0])
        if skip:
            result.skipped.append(skip)
        else:
            result.changed += 1
    return result
