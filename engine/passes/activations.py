"""Recognising decomposed activations by what they compute, not only by how they are spelled.

Exporters write the same activation many ways (`x·Clip(x+3,0,6)/6`, `x·(Clip(x+3,0,6)·(1/6))`,
`x·HardSigmoid(x)`; GELU as `0.5·x·(1+Erf(x/√2))` or `x·0.5·(1+Erf(x·0.7071))`; SiLU with a
`Mul(x, 1.0)` before the Sigmoid; …). A pass finds a candidate structurally — a small subgraph of
elementwise ops whose only non-scalar input is one tensor x (`closure`) — and then *verifies* it:
the subgraph and the ONNX op it would become are both run by `onnx.reference.ReferenceEvaluator`
on PROBE (x from -12 to 12) and must agree within float32 rounding (`identify`). So a rewrite
happens only when the replacement is the same function, whatever the spelling.

The targets are ONNX ops (`Activation.op` at opset `since`), so "the same function" means the
ONNX definition of HardSwish, Gelu, Mish, Swish, HardSigmoid. Whether a model may use the op
(its opset) and whether onnxruntime runs it (`ort_runs`) is decided by the passes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.passes.graph import Graph

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Abs", "Reciprocal", "Exp",
                         "Log", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "Softplus", "Clip", "Relu"})
MAX_NODES = 12  # the largest decomposition we know (GELU tanh form) has 9
PROBE = np.concatenate([np.linspace(-12, 12, 2401), [-30.0, 30.0]]).astype(np.float32)


@dataclass(frozen=True)
class Activation:
    name: str  # the fusion group type the quantizer sees
    op: str  # the exact ONNX op
    since: int  # first default-domain opset that has `op`
    attrs: tuple[tuple[str, object], ...] = ()


HARD_SIGMOID = Activation("HardSigmoid", "HardSigmoid", 6, (("alpha", 1 / 6), ("beta", 0.5)))
GATED = (  # x · g(x) forms
    Activation("HardSwish", "HardSwish", 14),
    Activation("SiLU", "Swish", 24),
    Activation("GELU", "Gelu", 20),
    Activation("GELU_tanh", "Gelu", 20, (("approximate", "tanh"),)),
    Activation("Mish", "Mish", 18),
)


@functools.cache
def reference(act: Activation) -> np.ndarray:
    """act.op on PROBE, as ONNX's reference implementation computes it (float64 for comparing)."""
    node = helper.make_node(act.op, ["x"], ["y"], **dict(act.attrs))
    graph = helper.make_graph([node], act.name, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", act.since)])
    return ReferenceEvaluator(model).run(None, {"x": PROBE})[0].astype(np.float64)


@functools.cache
def ort_runs(act: Activation, opset: int) -> bool:
    """Whether this onnxruntime has a kernel for act.op at `opset` (asked, not assumed)."""
    import onnxruntime as ort

    node = helper.make_node(act.op, ["x"], ["y"], **dict(act.attrs))
    graph = helper.make_graph([node], act.name, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.zeros(4, np.float32)})
    except Exception:  # any failure means "cannot rely on it"
        return False
    return True


def scalar(g: Graph, name: str) -> float | None:
    value = g.constant(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 and value.dtype.kind == "f" else None


def closure(g: Graph, roots: list[str], source: str) -> list[onnx.NodeProto] | None:
    """The elementwise nodes computing `roots` from `source` and scalar constants only, in graph
    order; None if anything else (another tensor, a non-scalar constant, another op) feeds in."""
    nodes: dict[str, onnx.NodeProto] = {}
    seen: set[str] = set()
    stack = [r for r in roots if r]
    while stack:
        name = stack.pop()
        if name == source or name in seen:
            continue
        seen.add(name)
        if g.constant(name) is not None:
            if scalar(g, name) is None:
                return None
            continue
        node = g.producer(name)
        if (node is None or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx")
                or len([o for o in node.output if o]) != 1):
            return None
        nodes[node.name] = node
        if len(nodes) > MAX_NODES:
            return None
        stack.extend(i for i in node.input if i)
    return sorted(nodes.values(), key=lambda n: g.index[n.name])


def private(g: Graph, nodes: list[onnx.NodeProto], output: str) -> bool:
    """Only the pattern reads its intermediate tensors (so replacing it loses nothing)."""
    inside = {n.name for n in nodes}
    return all(o == output or (o not in g.outputs and all(c.name in inside for c in g.consumers(o)))
               for n in nodes for o in n.output if o)


def evaluate(g: Graph, nodes: list[onnx.NodeProto], source: str, output: str) -> np.ndarray:
    """The pattern as a function of `source`, on PROBE (reference evaluator, flattened)."""
    produced = {o for n in nodes for o in n.output}
    consts = dict.fromkeys(i for n in nodes for i in n.input if i and i != source and i not in produced)
    inits = [numpy_helper.from_array(g.constant(c), c) for c in consts]
    graph = helper.make_graph(list(nodes), "pattern", [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, [None])],
                              [onnx.ValueInfoProto(name=output)], inits)
    model = helper.make_model(graph, opset_imports=g.model.opset_import)
    return np.asarray(ReferenceEvaluator(model).run(None, {source: PROBE})[0], np.float64).reshape(-1)


def identify(g: Graph, nodes: list[onnx.NodeProto], source: str, output: str,
             candidates: tuple[Activation, ...]) -> Activation | None:
    """The candidate activation the pattern computes (within float32 rounding), or None."""
    if g.elem_type(source) not in (None, 0, onnx.TensorProto.FLOAT):
        return None
    try:
        got = evaluate(g, nodes, source, output)
    except Exception:  # a pattern the evaluator rejects is not an activation we can replace
        return None
    if got.shape != PROBE.shape:
        return None
    for act in candidates:
        want = reference(act)
        if np.all(np.abs(got - want) <= 2e-5 * (1.0 + np.abs(want))):
            return act
    return None
