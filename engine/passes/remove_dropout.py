"""Remove Dropout in inference mode: output = data (the ratio is ignored at inference).

A Dropout is in inference mode when its `training_mode` input (opset ≥ 12) is absent or a constant
false. Removal follows `remove_identity.bypass`. Refused (Skip): training_mode true or not
constant, or the `mask` output is read (it would have to become a constant of ones).
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph
from engine.passes.remove_identity import bypass
from engine.passes.result import PassResult, Skip

NAME, VERSION = "remove_dropout", 1


def check(g: Graph, node: onnx.NodeProto) -> Skip | None:
    training = node.input[2] if len(node.input) > 2 else ""
    if training:
        value = g.constant(training)
        if value is None:
            return Skip(node.name, f"training_mode '{training}' is not a constant")
        if bool(value.reshape(-1)[0]):
            return Skip(node.name, "training_mode is true")
    mask = node.output[1] if len(node.output) > 1 else ""
    if mask and (g.consumers(mask) or mask in g.outputs):
        return Skip(node.name, f"its mask output '{mask}' is used")
    return None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for node in [n for n in model.graph.node if n.op_type == "Dropout" and n.domain in ("", "ai.onnx")]:
        skip = check(g, node) or bypass(g, node, node.input[0], node.output[0])
        if skip:
            result.skipped.append(skip)
        else:
            result.changed += 1
    return result
