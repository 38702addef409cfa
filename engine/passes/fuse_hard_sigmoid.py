"""Rewrite the decomposed hard sigmoid `Clip(x + 3, 0, 6) / 6` to `HardSigmoid(alpha=1/6, beta=0.5)`.

    HardSigmoid(x) = max(0, min(1, alpha·x + beta)) = min(max(x + 3, 0), 6) / 6   for alpha=1/6, beta=1/2

Pattern: Add(x, c) → Clip(·, lo, hi) → Div(·, d) or Mul(·, m), scalar constants, each
intermediate read only by the next node. The three nodes are accepted only when, evaluated by the
ONNX reference evaluator, they compute HardSigmoid(1/6, 1/2) (`activations.identify`), so
`Clip(x+3, 0, 6) · 0.16666667` and `Clip(3+x, 0, 6) / 6` qualify and `Clip(x+3, 0, 5) / 6` does not.
The last node (Div / Mul) keeps its name and output tensor and becomes the HardSigmoid; it is
exact in ONNX since opset 6, so it is always rewritten. Where a HardSwish is written
`x · (Clip(x+3,0,6)/6)`, this leaves `x · HardSigmoid(x)` for `fuse_activations`.
"""

from __future__ import annotations

import onnx

from engine.passes.activations import HARD_SIGMOID, identify, scalar
from engine.passes.graph import Graph, replace_node
from engine.passes.result import PassResult

NAME, VERSION = "fuse_hard_sigmoid", 1


def match(g: Graph, clip: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, [Add, Clip, Div|Mul]) around `clip`, or None."""
    add = g.producer(clip.input[0])
    if add is None or add.op_type != "Add" or g.only_consumer(add.output[0]) is None:
        return None
    consts = [scalar(g, i) is not None for i in add.input]
    if consts.count(True) != 1:
        return None
    x = add.input[consts.index(False)]
    end = g.only_consumer(clip.output[0])
    if end is None or end.op_type not in ("Div", "Mul"):
        return None
    other = [i for i in end.input if i != clip.output[0]]
    if len(other) != 1 or scalar(g, other[0]) is None or (end.op_type == "Div" and end.input[0] != clip.output[0]):
        return None
    return x, [add, clip, end]


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for clip in [n for n in model.graph.node if n.op_type == "Clip"]:
        if clip.name not in g.index:
            continue
        found = match(g, clip)
        if found is None:
            continue
        x, nodes = found
        if identify(g, nodes, x, nodes[-1].output[0], (HARD_SIGMOID,)) is None:
            result.skip(clip.name, "Add → Clip → Div/Mul around it does not compute HardSigmoid(1/6, 1/2)")
            continue
        replace_node(nodes[-1], "HardSigmoid", [x], **dict(HARD_SIGMOID.attrs))
        g.remove_nodes([nodes[0].name, nodes[1].name])
        result.changed += 1
    return result
