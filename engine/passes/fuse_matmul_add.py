"""Fuse MatMul(A, B) + C into Gemm(A, B, C) where that is the same computation.

    Gemm(A, B, C) = alpha·A·B + beta·C  with alpha = beta = 1  =  MatMul(A, B) + C

Gemm is 2-D only, so: A must be known to be rank 2 (shape inference), B a constant 2-D
initializer, C a constant that broadcasts unidirectionally to the output [N, M] (scalar, [M],
[1, M], [N, 1] or [N, M]). The MatMul keeps its name, becomes the Gemm and takes over the Add's
output tensor; the Add goes. MatMuls on 3-D activations (transformer blocks) are left alone.

Refused (Skip): the MatMul output is read elsewhere or is a graph output, A is not 2-D or its rank
is unknown, B is not a 2-D constant, C does not broadcast to [N, M].
"""

from __future__ import annotations

import onnx

from engine.passes.graph import Graph, replace_node
from engine.passes.result import PassResult, Skip

NAME, VERSION = "fuse_matmul_add", 1


def match(g: Graph, add: onnx.NodeProto) -> tuple[onnx.NodeProto, str] | None:
    """(matmul, name of C) when `add` adds a constant to a MatMul output."""
    if len(add.input) != 2:
        return None
    for mine, other in ((0, 1), (1, 0)):
        mm = g.producer(add.input[mine])
        if mm is not None and mm.op_type == "MatMul" and g.constant(add.input[other]) is not None:
            return mm, add.input[other]
    return None


def check(g: Graph, mm: onnx.NodeProto, add: onnx.NodeProto, c_name: str) -> Skip | None:
    out = mm.output[0]
    if out in g.outputs:
        return Skip(add.name, f"MatMul output '{out}' is also a graph output")
    others = [n.name for n in g.consumers(out) if n.name != add.name]
    if others:
        return Skip(add.name, f"MatMul output '{out}' also feeds {', '.join(others)}")
    a_shape = g.shape(mm.input[0])
    if a_shape is None or len(a_shape) != 2:
        rank = "unknown" if a_shape is None else f"{len(a_shape)}-D"
        return Skip(add.name, f"MatMul input '{mm.input[0]}' is {rank}, Gemm needs 2-D")
    b = g.constant(mm.input[1])
    if b is None or b.ndim != 2:
        return Skip(add.name, f"MatMul weight '{mm.input[1]}' is not a 2-D constant")
    c = g.constant(c_name)
    n, m = a_shape[0], b.shape[1]
    if c.ndim > 2 or c.dtype != b.dtype or any(d != 1 and d != want
                                               for d, want in zip(reversed(c.shape), (m, n), strict=False)):
        return Skip(add.name, f"bias '{c_name}' of shape {list(c.shape)} does not broadcast to [{n}, {m}]")
    return None


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for add in [n for n in model.graph.node if n.op_type == "Add" and n.domain in ("", "ai.onnx")]:
        found = match(g, add)
        if found is None:
            continue
        mm, c_name = found
        skip = check(g, mm, add, c_name)
        if skip:
            result.skipped.append(skip)
            continue
        old = mm.output[0]
        replace_node(mm, "Gemm", [mm.input[0], mm.input[1], c_name])
        mm.output[0] = add.output[0]
        g.remove_nodes([add.name])
        g.drop_value_info([old])
        result.changed += 1
    return result
