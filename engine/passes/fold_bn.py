"""Fold BatchNormalization (inference mode) into the Conv / ConvTranspose / Gemm before it.

    BN(y) = (y - mean) · f + beta,   f = gamma / sqrt(var + eps)
    y = W ⊛ x + b    →   BN(y) = (W·f) ⊛ x + (b - mean) · f + beta

so W' = W scaled per output channel by f (axis per op: `channels.py`) and b' = (b - mean)·f + beta.
For Gemm, y = alpha·A·B + beta_g·C: B' = B·f (per output column) and C' = beta_g·C·f + beta - mean·f
with beta_g set to 1 (C' is created when the Gemm had no C).

The Conv keeps its name and takes over the BatchNormalization's output tensor (which may be a graph
output); the BatchNormalization disappears. Refused (Skip): training mode, non-constant BN
parameters, a Conv output that something else also reads, a weight or bias that is not a constant
initializer or is shared with another node, channel counts that do not agree.
"""

from __future__ import annotations

import numpy as np
import onnx

from engine.passes.channels import WEIGHTED, output_channels, scale_output_channels
from engine.passes.graph import FLOAT_TYPES, Graph, attr
from engine.passes.result import PassResult, Skip

NAME, VERSION = "fold_bn", 1


def check(g: Graph, conv: onnx.NodeProto, bn: onnx.NodeProto) -> Skip | None:
    if attr(bn, "training_mode", 0) or any(g.consumers(o) or o in g.outputs for o in bn.output[1:] if o):
        return Skip(bn.name, "BatchNormalization is in training mode (its running statistics are used)")
    if any(g.constant(name) is None for name in bn.input[1:5]):
        return Skip(bn.name, "BatchNormalization scale, bias, mean or variance is not constant")
    if conv.output[0] in g.outputs:
        return Skip(bn.name, f"{conv.op_type} output '{conv.output[0]}' is also a graph output")
    others = [n.name for n in g.consumers(conv.output[0]) if n.name != bn.name]
    if others:
        return Skip(bn.name, f"{conv.op_type} output '{conv.output[0]}' also feeds {', '.join(others)}")
    for role, name in (("weight", conv.input[1]), ("bias", conv.input[2] if len(conv.input) > 2 else "")):
        if not name:
            continue
        if not g.is_initializer(name):
            return Skip(bn.name, f"{conv.op_type} {role} '{name}' is not a constant initializer")
        if not g.private_initializer(name, conv):
            return Skip(bn.name, f"{conv.op_type} {role} '{name}' is shared with another node")
        if g.initializers[name].data_type not in FLOAT_TYPES:
            return Skip(bn.name, f"{conv.op_type} {role} '{name}' is not floating point")
    weight = g.constant(conv.input[1])
    channels = output_channels(conv, weight)
    if any(g.constant(name).size != channels for name in bn.input[1:5]):
        return Skip(bn.name, f"BatchNormalization has not {channels} channels like its {conv.op_type}")
    if conv.op_type == "Gemm" and len(conv.input) > 2 and conv.input[2]:
        c = g.constant(conv.input[2])
        if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, channels)):
            return Skip(bn.name, f"Gemm C of shape {list(c.shape)} does not broadcast to {channels} columns")
    return None


def rewrite(g: Graph, conv: onnx.NodeProto, bn: onnx.NodeProto) -> None:
    gamma, beta, mean, var = (g.constant(n).astype(np.float64).reshape(-1) for n in bn.input[1:5])
    f = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    shift = beta - mean * f
    weight = g.constant(conv.input[1])
    g.set_initializer(conv.input[1], scale_output_channels(conv, weight, f))
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = g.constant(conv.input[2]).astype(np.float64) if has_bias else np.zeros(1)
    if conv.op_type == "Gemm":
        new_bias = float(attr(conv, "beta", 1.0)) * bias * f + shift if has_bias else shift
        for a in list(conv.attribute):
            if a.name == "beta":
                conv.attribute.remove(a)
    else:
        new_bias = bias * f + shift
    if not has_bias:
        name = g.unique_name(f"{conv.name}_bias")
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = name
    g.set_initializer(conv.input[2], new_bias.astype(weight.dtype))
    old = conv.output[0]
    conv.output[0] = bn.output[0]
    g.remove_nodes([bn.name])
    g.drop_value_info([old])


def run(model: onnx.ModelProto) -> PassResult:
    g, result = Graph(model), PassResult()
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        conv = g.producer(bn.input[0])
        if conv is None or conv.op_type not in WEIGHTED or conv.domain not in ("", "ai.onnx"):
            continue
        skip = check(g, conv, bn)
        if skip:
            result.skipped.append(skip)
            continue
        rewrite(g, conv, bn)
        result.changed += 1
    return result
