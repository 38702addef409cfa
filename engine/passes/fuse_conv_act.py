"""Record Conv + Relu / Clip / LeakyRelu fusion groups for the quantizer (the graph is unchanged).

    y = act(W ⊛ x + b)   → one integer op: int32 accumulate, activation on the accumulator,
                            one requantization to y's scale (the Conv output gets no scale of its own)

A Conv (or ConvTranspose) whose output is read only by one Relu, LeakyRelu or Clip with constant
bounds (Relu6) forms a group `Conv_0+Relu_1` of type `Conv+Relu`, kind `conv_act`. Groups are
recomputed from the graph on every run (`groups.write_groups`).

Refused (Skip): the Conv output is also read by another node or is a graph output; Clip bounds
that are not constant.
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph
from engine.passes.groups import FusionGroup, write_groups
from engine.passes.result import PassResult

NAME, VERSION = "fuse_conv_act", 1
CONVS = ("Conv", "ConvTranspose")
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu")


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    groups: list[FusionGroup] = []
    for conv in [n for n in model.graph.node if n.op_type in CONVS and n.domain in ("", "ai.onnx")]:
        out = conv.output[0]
        acts = [n for n in g.consumers(out) if n.op_type in ACTIVATIONS and n.domain in ("", "ai.onnx")]
        if not acts:
            continue
        act = acts[0]
        if out in g.outputs or len(g.consumers(out)) > 1:
            others = [n.name for n in g.consumers(out) if n.name != act.name]
            where = f"also feeds {', '.join(others)}" if others else "is also a graph output"
            result.skip(act.name, f"not fused with {conv.name}: {conv.op_type} output '{out}' {where}")
            continue
        if act.op_type == "Clip" and any(i and g.constant(i) is None for i in act.input[1:]):
            result.skip(act.name, f"not fused with {conv.name}: Clip bounds are not constant")
            continue
        groups.append(FusionGroup.of([conv, act], "conv_act"))
    result.changed = write_groups(model, "conv_act", groups)
    return result
