"""Fold a per-channel Mul / Add by a constant into the Conv (or ConvTranspose) before it.

    (W ⊛ x + b) · c  =  (W·c) ⊛ x + b·c        c[o] per output channel (W scaled as in `channels.py`)
    (W ⊛ x + b) + c  =   W ⊛ x + (b + c)

Exact in real arithmetic; c must broadcast against the output [N, M, ...] along the channel axis
only (a scalar, [M], [M,1,1], [1,M,1,1], …) — a c that varies over batch or space, or has a
higher rank, is not a per-channel constant. Exporters emit these for scale layers, frozen
affine blocks (PP-LCNet's learnable affine) and "Mul by 1.0". Sub / Div are not folded (their
rewrite would not be exact). The Conv keeps its name and takes over the Mul/Add's output tensor.

Refused (Skip): the Conv output is read elsewhere or is a graph output, the weight or bias is not
a private constant initializer, the constant is not per-channel or not floating point.
"""

from __future__ import annotations

import numpy as np
import onnx

from engine.passes.channels import output_channels, per_channel, scale_output_channels
from engine.passes.graph import FLOAT_TYPES, Graph
from engine.passes.result import PassResult, Skip

NAME, VERSION = "fold_conv_mul_add", 1
CONVS = ("Conv", "ConvTranspose")


def match(g: Graph, node: onnx.NodeProto) -> tuple[onnx.NodeProto, str] | None:
    """(conv, constant input name) when `node` is Mul/Add of a Conv output and a constant."""
    if len(node.input) != 2:
        return None
    for mine, other in ((0, 1), (1, 0)):
        conv = g.producer(node.input[mine])
        if conv is not None and conv.op_type in CONVS and g.constant(node.input[other]) is not None:
            return conv, node.input[other]
    return None


def check(g: Graph, conv: onnx.NodeProto, node: onnx.NodeProto, const: str) -> Skip | None:
    out = conv.output[0]
    if out in g.outputs:
        return Skip(node.name, f"{conv.op_type} output '{out}' is also a graph output")
    others = [n.name for n in g.consumers(out) if n.name != node.name]
    if others:
        return Skip(node.name, f"{conv.op_type} output '{out}' also feeds {', '.join(others)}")
    for role, name in (("weight", conv.input[1]), ("bias", conv.input[2] if len(conv.input) > 2 else "")):
        if not name:
            continue
        if not g.private_initializer(name, conv):
            what = "is shared with another node" if g.is_initializer(name) else "is not a constant initializer"
            return Skip(node.name, f"{conv.op_type} {role} '{name}' {what}")
        if g.initializers[name].data_type not in FLOAT_TYPES:
            return Skip(node.name, f"{conv.op_type} {role} '{name}' is not floating point")
    value = g.constant(const)
    if value.dtype.kind != "f":
        return Skip(node.name, f"constant '{const}' is not floating point")
    rank = len(g.shape(out) or ()) or g.constant(conv.input[1]).ndim
    channels = output_channels(conv, g.constant(conv.input[1]))
    if per_channel(value, rank, channels) is None:
        return Skip(node.name, f"constant '{const}' of shape {list(value.shape)} is not per output channel "
                               f"of the {conv.op_type} ({channels} channels, rank {rank})")
    return None


def rewrite(g: Graph, conv: onnx.NodeProto, node: onnx.NodeProto, const: str) -> None:
    weight = g.constant(conv.input[1])
    rank = len(g.shape(conv.output[0]) or ()) or weight.ndim
    c = per_channel(g.constant(const), rank, output_channels(conv, weight)).astype(np.float64)
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = g.constant(conv.input[2]).astype(np.float64) if has_bias else np.zeros_like(c)
    if node.op_type == "Mul":
        g.set_initializer(conv.input[1], scale_output_channels(conv, weight, c))
        bias = bias * c
    else:
        bias = bias + c
    if not has_bias:
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = g.unique_name(f"{conv.name}_bias")
    g.set_initializer(conv.input[2], bias.astype(weight.dtype))
    old = conv.output[0]
    conv.output[0] = node.output[0]
    g.remove_nodes([node.name])
    g.drop_value_info([old])


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for node in [n for n in model.graph.node if n.op_type in ("Mul", "Add") and n.domain in ("", "ai.onnx")]:
        found = match(g, node)
        if found is None:
            continue
        conv, const = found
        skip = check(g, conv, node, const)
        if skip:
            result.skipped.append(skip)
            continue
        rewrite(g, conv, node, const)
        result.changed += 1
    return result
