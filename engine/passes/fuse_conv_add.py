"""Record Conv + Add (residual) fusion groups for the quantizer (the graph is unchanged).

    z = (W ⊛ x + b) + r   → one integer op: the Conv's int32 accumulator takes r (requantized to
                             the accumulator scale) and is requantized once to z's scale

An Add of two same-shape activations, one of which is a Conv (or ConvTranspose) output read only
by this Add, forms a group `Conv_3+Add_4` of type `Conv+Add`, kind `conv_add`. When both inputs
qualify, the Conv computed last is taken (the other operand then already exists when it runs).
Groups are recomputed from the graph on every run (`groups.write_groups`).

Refused (Skip): the Add broadcasts (its inputs' shapes differ or are unknown), or the only Conv
input is also read elsewhere or is a graph output.
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph
from engine.passes.groups import FusionGroup, write_groups
from engine.passes.result import PassResult

NAME, VERSION = "fuse_conv_add", 2
CONVS = ("Conv", "ConvTranspose")


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    groups: list[FusionGroup] = []
    for add in [n for n in model.graph.node if n.op_type == "Add" and n.domain in ("", "ai.onnx")]:
        if len(add.input) != 2 or any(g.constant(i) is not None for i in add.input):
            continue
        if add.input[0] == add.input[1]:  # c + c: no residual to add in the accumulator (a plain Add)
            result.skip(add.name, f"not fused: it adds {add.input[0]} to itself")
            continue
        convs = [p for p in map(g.producer, add.input) if p is not None and p.op_type in CONVS]
        if not convs:
            continue
        a, b = (g.shape(i) for i in add.input)
        if a is None or a != b or None in a:
            result.skip(add.name, f"not fused with {convs[-1].name}: the Add broadcasts "
                                  f"({list(a) if a else '?'} + {list(b) if b else '?'})")
            continue
        own = [c for c in convs if g.only_consumer(c.output[0]) is not None]
        if not own:
            result.skip(add.name, f"not fused with {convs[-1].name}: its output is also read elsewhere")
            continue
        conv = max(own, key=lambda c: g.index[c.name])
        groups.append(FusionGroup.of([conv, add], "conv_add"))
    result.changed = write_groups(model, "conv_add", groups)
    return result
