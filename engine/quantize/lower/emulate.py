"""Float kernels inside the integer program: CPU islands, and BPU ops without an integer kernel.

CPU island (plan ON = CPU): the float node as it is, reading the float form of its inputs
(DequantizeLinear of quantized tensors) and writing float; where the plan quantizes an output (a
BPU op reads it) a QuantizeLinear follows:

    x_quantized ─DequantizeLinear→ x ─[float op]→ y_float ─QuantizeLinear→ y_quantized

Emulated BPU op: the same shape, for ops the plan puts on the BPU but onnxruntime has no integer
kernel for (ConvTranspose, Sub, PRelu, Resize linear, per-channel constants, int16 arithmetic, …).
Inputs are the integer tensors dequantized, weights are their int8 codes times their scales, the
bias its int32 codes times s_in · s_w, and the output is quantized to the plan's encoding — the
values are those of the fake-quant (calibrated) model computed in float32, where real integer
hardware would accumulate exactly in int32 (the difference is float32 rounding, far below one
output step). `hbcompile.emulated` in the `.bc` lists every such node with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from engine.quantize.lower.builder import Builder, planner_bug
from engine.quantize.lower.encoding import Encoding

# ops whose output holds the same values as (a selection of) their input: the output keeps the
# input's encoding when the plan gives it none
KEEPS_SCALE = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "DepthToSpace",
    "SpaceToDepth", "Identity", "Expand", "Tile", "Gather", "MaxPool", "GlobalMaxPool", "ReduceMax",
    "ReduceMin", "Resize", "Pad", "Relu", "Clip", "Concat"})
SHAPE_READERS = frozenset({"Shape", "Size"})


def cpu_node(b: Builder, node: onnx.NodeProto) -> None:
    """A float node on the CPU, between DequantizeLinear and QuantizeLinear as needed."""
    if node.op_type in SHAPE_READERS and node.input[0] in b.int_forms and node.input[0] not in b.float_forms:
        inputs = [b.int_forms[node.input[0]].name]  # a shape is the same in either form
    else:
        inputs = [b.float_of(i) if i else "" for i in node.input]
    for outer in _outer_names(node):
        b.float_of(outer)
    with b.lowering(node.name):
        b.copy_node(node, inputs, [b.float_output(o) if o else "" for o in node.output])


def output_encoding(b: Builder, node: onnx.NodeProto, output: str) -> Encoding:
    """The plan's encoding of a BPU output; a scale-keeping op inherits its input's."""
    enc = b.planned(output)
    if enc is not None:
        return enc
    if node.op_type in KEEPS_SCALE and node.input and node.input[0] in b.int_forms:
        return b.int_forms[node.input[0]].enc
    raise planner_bug(f"output '{output}' of {node.op_type} node '{node.name}' (on BPU) has no "
                      "quantization in the plan")


def emulate(b: Builder, nodes: Sequence[onnx.NodeProto], reason: str,
            encodings: dict[str, Encoding] | None = None) -> None:
    """BPU node(s) without an integer kernel, run by float kernels between integer tensors (see
    the module docstring); the reason is recorded in the `.bc` (`hbcompile.emulated`)."""
    float_kernels(b, nodes, encodings)
    for n in nodes:
        b.emulated[n.name] = reason


def float_kernels(b: Builder, nodes: Sequence[onnx.NodeProto], encodings: dict[str, Encoding] | None = None,
                  name: str | None = None) -> None:
    """DequantizeLinear → the float node(s) → QuantizeLinear: Q_y(f(DQ_x(x))).

    `nodes` is one node or a fusion group; only outputs read outside the group are quantized, with
    `encodings` overriding the plan (e.g. an si32 accumulator output). Weights and biases read as
    their integer codes times their scales, planned constants as their codes. `name` names the
    last node (a fusion group's row name), else every node keeps its own.
    """
    encodings = dict(encodings or {})
    readers = {n.name for n in nodes}
    external = [o for n in nodes for o in n.output if o and (
        o in b.graph_outputs or any(c.name not in readers for c in b.consumers.get(o, [])))]
    for o in external:
        if o not in encodings:
            producer = next(n for n in nodes if o in n.output)
            encodings[o] = output_encoding(b, producer, o)
    renamed: dict[str, str] = {}
    with b.lowering(*(n.name for n in nodes)):
        for n in nodes:
            inputs = []
            for i in n.input:
                if not i:
                    inputs.append("")
                elif i in renamed:
                    inputs.append(renamed[i])
                elif i in b.plan.weights:
                    inputs.append(b.float_weight(i))
                elif i in b.plan.biases:
                    inputs.append(b.float_bias(i))
                else:
                    inputs.append(b.dequantized(i))
            for outer in _outer_names(n):
                b.float_of(outer)
            outputs = []
            for o in n.output:
                if o:
                    renamed[o] = b.fresh(f"{o}_float")
                outputs.append(renamed.get(o, ""))
            b.copy_node(n, inputs, outputs, name=name if name and n is nodes[-1] else None)
        for o in external:
            q = b.define_int(o, encodings[o])
            b.quantize(renamed[o], q, name=b.fresh(f"{o}_quantize"))


def _outer_names(node: onnx.NodeProto) -> list[str]:
    """Tensors an If/Loop/Scan body reads from the enclosing graph."""
    names: list[str] = []
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in subs:
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer} | \
                {o for n in sub.node for o in n.output}
            for n in sub.node:
                names += [i for i in n.input if i and i not in inner]
                names += [i for i in _outer_names(n) if i not in inner]
    return list(dict.fromkeys(names))
