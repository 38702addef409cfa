"""Which op goes where: the table of integer lowerings, by op type and by fusion-group kind.

A lowering is `(builder, node) -> None | str`: None when it wrote the integer op(s), or the reason
it cannot (an int16 operand, a mode onnxruntime's integer kernel lacks, …) — the node is then
emulated with float kernels between integer tensors (`emulate.emulate`) and the reason recorded in
the `.bc` (`hbcompile.emulated`). Fusion groups are lowered by kind with `(builder, nodes, name)`.
Ops without an entry that the plan puts on the BPU are emulated; CPU nodes are float islands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from engine.quantize import luts
from engine.quantize.lower import conv, layout, lut, qlinear
from engine.quantize.lower.builder import Builder

NodeLowering = Callable[[Builder, onnx.NodeProto], "str | None"]
GroupLowering = Callable[[Builder, Sequence[onnx.NodeProto], str], "str | None"]

NODES: dict[str, NodeLowering] = {
    "Conv": conv.conv,
    "Gemm": conv.gemm,
    "MatMul": conv.matmul,
    "Add": qlinear.binary,
    "Mul": qlinear.binary,
    "Concat": qlinear.concat,
    "Softmax": qlinear.softmax,
    "AveragePool": qlinear.average_pool,
    "GlobalAveragePool": qlinear.global_average_pool,
    "ReduceMean": qlinear.global_average_pool,
    "Relu": layout.clamp,
    "Clip": layout.clamp,
    **{op: layout.on_codes for op in layout.ON_CODES},
    **{op: lut.lut_node for op in luts.ELEMENTWISE if op not in ("Add", "Mul", "Relu", "Clip", "Identity")},
}

GROUPS: dict[str, GroupLowering] = {
    "conv_act": conv.conv_act,
    "conv_add": conv.conv_add,
    "activation": lut.lut_group,
}
