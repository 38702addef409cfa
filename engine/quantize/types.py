"""The quantization plan: every decision about a model's quantization, as data.

Produced by `engine.quantize.planner` (which op runs where, which tensors carry which scale,
which tensors share a scale, what is fused) from the optimized float model, the config's
options and the calibration thresholds; consumed by the emitters that write the calibrated /
ptq ONNX models, by the integer lowering that writes the `.bc`, and by the reports. Emitters
never decide anything: if a choice is not in the plan, it is a planner bug.

Scheme (DESIGN §5): activations symmetric per tensor, scale = threshold / (2**(bits-1) - 1),
zero point 0 (the integer program may *execute* int8 as uint8 with zero point 128 for speed —
same values, shifted) — except lookup-table outputs whose table is lopsided, which get an offset
range (`engine.quantize.planner.OffsetAct`); weights symmetric per output channel int8; bias int32
at s_in · s_w.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

On = Literal["BPU", "CPU"]


@dataclass(frozen=True)
class ActQuant:
    """Quantization of one activation tensor (per tensor, or per channel along `axis`)."""

    tensor: str
    threshold: float | np.ndarray
    bits: int = 8  # 8 or 16
    axis: int | None = None  # set only for per-channel activations
    method: str = ""  # provenance: max / max-percentile / kl / load / skip …

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float | np.ndarray:
        return np.asarray(self.threshold, dtype=np.float64) / self.qmax if self.axis is not None else \
            float(self.threshold) / self.qmax


@dataclass(frozen=True)
class WeightQuant:
    """A constant weight: int8 symmetric per output channel (`axis` 0 for Conv, 1 for ConvTranspose…)."""

    tensor: str
    axis: int
    scale: np.ndarray  # float32, one per channel along axis
    bits: int = 8
    # grouped ConvTranspose (W: [C_in, C_out/groups, k…]): `scale` has C_out entries, output channel
    # g·(C_out/groups) + j covering W[g·C_in/groups:(g+1)·C_in/groups, j]; 1 = plain per-axis
    groups: int = 1


@dataclass(frozen=True)
class BiasQuant:
    """A constant bias quantized to int32 at scale s_in · s_w (per output channel)."""

    tensor: str
    scale: np.ndarray


@dataclass(frozen=True)
class FusionGroup:
    """Nodes executed as one integer op (e.g. Conv_0+Relu_1); only the last output is quantized."""

    name: str  # "Conv_0+Relu_1"
    type: str  # "Conv+Relu"
    nodes: tuple[str, ...]
    kind: str  # conv_act | conv_add | activation (a lookup-table op)


@dataclass(frozen=True)
class NodePlan:
    node: str
    op_type: str
    on: On
    reason: str = ""  # why CPU (operator without integer form, user's run_on_cpu, …); why BPU if forced
    group: str | None = None  # name of its FusionGroup, if any
    act_inputs: tuple[str, ...] = ()  # activation inputs read quantized
    weight: str | None = None  # initializer name of a quantized weight
    bias: str | None = None
    output_bits: int = 8  # 8 / 16; 32 for an si32 conv output; 0 for float (CPU)

    @property
    def output_dtype(self) -> str:
        """hb_compile's label: si8 / si16 / si32 / f32."""
        return "f32" if self.on == "CPU" or self.output_bits == 0 else f"si{self.output_bits}"


@dataclass
class QuantPlan:
    nodes: dict[str, NodePlan] = field(default_factory=dict)  # node name → plan, graph order
    acts: dict[str, ActQuant] = field(default_factory=dict)  # tensor → quantization
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    biases: dict[str, BiasQuant] = field(default_factory=dict)
    groups: list[FusionGroup] = field(default_factory=list)
    shared: list[tuple[str, ...]] = field(default_factory=list)  # tensors forced to one scale (Concat, Add)
    notes: list[str] = field(default_factory=list)  # advice lines (e.g. split output concat)
    # the thresholds calibration found, before the hardware rules (shared scales) changed them: what
    # the calibrated model uses; `acts` is what the ptq model and the integer program use. Empty → acts.
    calibrated_acts: dict[str, ActQuant] = field(default_factory=dict)

    def group_of(self, node: str) -> FusionGroup | None:
        name = self.nodes[node].group if node in self.nodes else None
        return next((g for g in self.groups if g.name == name), None)
