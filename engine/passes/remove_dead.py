"""Dead node elimination: drop nodes no graph output depends on, then unused initializers.

A node is live when one of its outputs is a graph output or is read by a live node (including
reads from inside If/Loop/Scan bodies). ONNX ops have no side effects, so everything else can go.
Graph inputs are the model's interface and always stay, used or not. value_info entries of
tensors that no longer exist are dropped with them.
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph, used_names
from engine.passes.result import PassResult

NAME, VERSION = "remove_dead_nodes", 1


def run(model: onnx.ModelProto) -> PassResult:
    g = Graph(model)
    needed = set(g.outputs)
    dead: list[str] = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output if o):
            needed.update(used_names(node))
        else:
            dead.append(node.name)
    if dead:
        g.remove_nodes(dead)
    unused = [t.name for t in model.graph.initializer if t.name not in needed and t.name not in g.inputs]
    for i in reversed(range(len(model.graph.initializer))):
        if model.graph.initializer[i].name in unused:
            del model.graph.initializer[i]
    produced = set(g.producers) | g.inputs | {t.name for t in model.graph.initializer}
    g.drop_value_info(v.name for v in model.graph.value_info if v.name not in produced)
    return PassResult(changed=len(dead) + len(unused))
