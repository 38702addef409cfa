"""Fuse decomposed gated activations y = x · g(x) into one op, or record them as one group.

    HardSwish(x) = x · min(max(x + 3, 0), 6) / 6   = x · HardSigmoid(x)         ONNX HardSwish (opset 14)
    SiLU(x)      = x · Sigmoid(x)                                               ONNX Swish     (opset 24)
    GELU(x)      = 0.5 · x · (1 + erf(x / √2))                                  ONNX Gelu      (opset 20)
    GELU_tanh(x) = 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))           Gelu approximate="tanh"
    Mish(x)      = x · tanh(softplus(x)) = x · tanh(ln(1 + eˣ))                 ONNX Mish      (opset 18)

Pattern: a Mul whose two inputs are both computed from one tensor x through elementwise ops with
scalar constants (`activations.closure`, the closest such x), plus up to two trailing Mul/Div by
a scalar (the `/6`, the `·0.5`). The nodes are accepted only when they compute one of the
functions above (`activations.identify`: reference evaluator vs the ONNX op, within float32
rounding), trying the longest trailing chain first.

Rewrite when the model's opset has the op and onnxruntime runs it: the last node keeps its name and
output tensor and becomes the op on x; the other nodes go. Otherwise the nodes stay and are recorded
as one fusion group of kind `activation` (type = the name above), which the quantizer turns into a
single lookup-table op — the reason is given as a Skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from engine.passes.activations import (
    ELEMENTWISE,
    GATED,
    Activation,
    closure,
    identify,
    ort_runs,
    private,
    scalar,
)
from engine.passes.graph import Graph, replace_node
from engine.passes.groups import FusionGroup, write_groups
from engine.passes.result import PassResult

NAME, VERSION = "fuse_activations", 1
MAX_SOURCE_DEPTH = 6
NONLINEAR = frozenset({"Erf", "Tanh", "Sigmoid", "HardSigmoid", "Softplus", "Clip", "Relu", "Exp", "Log"})


@dataclass
class Match:
    source: str
    nodes: list[onnx.NodeProto]  # graph order; the last one produces the activation's output
    activation: Activation


def sources(g: Graph, mul: onnx.NodeProto) -> list[str]:
    """Candidate x tensors, nearest first: walking back from the Mul through elementwise ops."""
    found: list[str] = []
    frontier = [i for i in mul.input if i]
    for _ in range(MAX_SOURCE_DEPTH):
        nxt: list[str] = []
        for name in frontier:
            if name in found or g.constant(name) is not None:
                continue
            found.append(name)
            node = g.producer(name)
            if node is not None and node.op_type in ELEMENTWISE:
                nxt.extend(i for i in node.input if i)
        frontier = nxt
    return found


def trailing(g: Graph, node: onnx.NodeProto, limit: int = 2) -> list[onnx.NodeProto]:
    """Up to `limit` Mul / Div by a scalar constant following `node`, each its output's only reader."""
    chain = []
    while len(chain) < limit:
        out = (chain[-1] if chain else node).output[0]
        nxt = g.only_consumer(out)
        if nxt is None or nxt.op_type not in ("Mul", "Div"):
            break
        other = [i for i in nxt.input if i != out]
        if len(other) != 1 or scalar(g, other[0]) is None or (nxt.op_type == "Div" and nxt.input[0] != out):
            break
        chain.append(nxt)
    return chain


def match(g: Graph, mul: onnx.NodeProto) -> Match | None:
    if len(mul.input) != 2 or any(g.constant(i) is not None for i in mul.input):
        return None
    ends = [mul, *trailing(g, mul)]
    for source in sources(g, mul):
        body = closure(g, list(mul.input), source)
        if body is None or not any(n.op_type in NONLINEAR for n in body):
            continue
        for k in range(len(ends), 0, -1):
            nodes = [*body, *ends[:k]]
            output = ends[k - 1].output[0]
            if not private(g, nodes, output):
                continue
            act = identify(g, nodes, source, output, GATED)
            if act is not None:
                return Match(source, nodes, act)
    return None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    groups: list[FusionGroup] = []
    taken: set[str] = set()
    opset = g.opset()
    for mul in [n for n in model.graph.node if n.op_type == "Mul"]:
        if mul.name in taken or mul.name not in g.index:
            continue
        m = match(g, mul)
        if m is None or taken & {n.name for n in m.nodes}:
            continue
        act, last = m.activation, m.nodes[-1]
        if opset >= act.since and ort_runs(act, opset):
            replace_node(last, act.op, [m.source], **dict(act.attrs))
            g.remove_nodes([n.name for n in m.nodes[:-1]])
            result.changed += 1
            continue
        taken.update(n.name for n in m.nodes)
        groups.append(FusionGroup.of(m.nodes, "activation", act.name))
        why = f"opset {opset} has no {act.op} (needs {act.since})" if opset < act.since else \
            f"onnxruntime has no {act.op} kernel at opset {opset}"
        result.skip(last.name, f"{act.name} kept as {len(m.nodes)} nodes, grouped: {why}")
    result.changed += write_groups(model, "activation", groups)
    return result
