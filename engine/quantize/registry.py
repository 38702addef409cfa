"""Which operators have an integer ("BPU") form, and how each is quantized: one flat table.

`RULES` maps an ONNX op type to a rule; a rule reads a `NodeView` (a read-only description of one
node built by the planner) and returns an `OpRule`: where the op runs and, if on the BPU, which
inputs are activations read quantized, which input is a per-channel int8 weight (and along which
axis), which is an int32 bias, and how the output scale is chosen. Rules never touch the graph and
never see the config; user overrides (run_on_cpu, node_info, …) are applied by the planner.

Output scale policies (`OpRule.output`):
- ``own``: the output is observed and gets its own threshold (Conv, Add, LUT activations, …);
- ``input``: the output keeps input 0's scale — ops that only move, select or take the max of
  values (Reshape, Transpose, Slice, Split, Pad, MaxPool, Resize nearest, Concat, …), so int8 in
  = int8 out, no requantization;
Concat, Add and Sub also need one scale for all their activation inputs (`shared_inputs`): the
integer op adds or joins raw int8 values.

Decided here (DESIGN §5 leaves these open):
- ReduceMean runs on the BPU with its own output scale: it is an average like GlobalAveragePool
  (int32 sum, one requantize); ReduceMax keeps the input scale like GlobalMaxPool. Other reductions
  (ReduceSum can overflow int8 ranges arbitrarily, ReduceProd, ReduceL2, …) stay on the CPU.
- Gemm / MatMul are integer ops only with a constant B (a weight quantized per output channel);
  MatMul of two activations (attention scores) stays on the CPU here.
- The unary functions the optimize stage fuses or meets (Mish, Softplus, Elu, HardSwish, Swish,
  Gelu) are lookup-table ops like Sigmoid / Tanh, besides those DESIGN §5 lists.
- Constant operands of Add / Sub / Mul / Concat (a bias tensor, a scale) are quantized like
  activations, with threshold max|c| computed by the planner from the value and a scale of their
  own — not tied to the other operand's: the integer op folds a constant in as a parameter, and
  rounding it to the activation's coarser step would shift every element (measured on PP-OCRv4
  rec, whose learnable-affine and LayerNorm constants are Adds: ptq output cosine 0.86 tied,
  0.997 untied).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.quantize.types import On

OutputScale = Literal["own", "input", "none"]


@dataclass(frozen=True)
class NodeView:
    """What a rule may know about one node: names, attributes, and per-input facts."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    constant: tuple[bool, ...] = ()  # per input: an initializer / Constant output
    floating: tuple[bool, ...] = ()  # per input: a float tensor (float32/16/64, bfloat16)
    shapes: tuple[tuple[int | None, ...] | None, ...] = ()  # per input, None when unknown
    domain: str = ""

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def is_const(self, i: int) -> bool:
        return self.has(i) and i < len(self.constant) and self.constant[i]

    def is_float(self, i: int) -> bool:
        return self.has(i) and (i >= len(self.floating) or self.floating[i])

    def is_activation(self, i: int) -> bool:
        """A float tensor computed at run time (what the calibrate stage observes)."""
        return self.is_float(i) and not self.is_const(i)

    def rank(self, i: int) -> int | None:
        shape = self.shapes[i] if i < len(self.shapes) else None
        return None if shape is None else len(shape)


@dataclass(frozen=True)
class WeightSpec:
    """Input `input` is a constant weight, int8 per output channel along `axis`.

    `groups` > 1 only for grouped ConvTranspose, whose axis 1 holds C_out / groups channels per
    group: output channel g·(C_out/groups) + j is W[g·(C_in/groups):(g+1)·(C_in/groups), j].
    """

    input: int
    axis: int
    groups: int = 1


@dataclass(frozen=True)
class OpRule:
    """One node's quantization decision, as data (see the module docstring for `output`)."""

    on: On
    reason: str = ""
    acts: tuple[int, ...] = ()  # input indices read quantized (activations, or constants quantized like them)
    weight: WeightSpec | None = None
    bias: int | None = None  # input index of an int32 bias at s_in · s_w
    output: OutputScale = "own"
    shared_inputs: bool = False  # all `acts` take one scale (Concat, Add, Sub)
    accumulates: bool = False  # an int32 accumulator (Conv, Gemm, MatMul): may stay si32 at a model output
    lut: bool = False  # a lookup-table activation


Rule = Callable[[NodeView], OpRule]


def cpu(view: NodeView, why: str | None = None) -> OpRule:
    return OpRule("CPU", why or f"operator {view.op_type} has no integer form here", output="none")


def _float_first(view: NodeView) -> OpRule | None:
    """The CPU answer when the node's data input is not a run-time float tensor."""
    if not view.has(0):
        return cpu(view, f"{view.op_type} without a data input has no integer form here")
    if not view.is_float(0):
        return cpu(view, f"{view.op_type} on a non-float tensor (shape or index arithmetic) stays on the CPU")
    if view.is_const(0):
        return cpu(view, f"{view.op_type} of a constant only computes a constant")
    return None


def _weighted(view: NodeView, axis: int, groups: int = 1, bias: int | None = 2) -> OpRule:
    if (r := _float_first(view)) is not None:
        return r
    if not view.is_const(1) or not view.is_float(1):
        return cpu(view, f"{view.op_type} with a non-constant weight has no integer form here")
    has_bias = bias is not None and view.is_const(bias) and view.is_float(bias)
    return OpRule("BPU", acts=(0,), weight=WeightSpec(1, axis, groups), bias=bias if has_bias else None,
                  accumulates=True)


def conv(view: NodeView) -> OpRule:
    return _weighted(view, axis=0)


def conv_transpose(view: NodeView) -> OpRule:
    return _weighted(view, axis=1, groups=int(view.attrs.get("group", 1)))


def gemm(view: NodeView) -> OpRule:
    """Y = α·A'·B' + β·C; B' = Bᵀ when transB, so the output channel is B's axis 0, else axis 1."""
    axis = 0 if view.attrs.get("transB", 0) else 1
    rule = _weighted(view, axis=axis)
    if rule.on == "CPU" or rule.bias is None:
        return rule
    b_shape = view.shapes[1] if len(view.shapes) > 1 else None
    c_shape = view.shapes[2] if len(view.shapes) > 2 else None
    channels = b_shape[axis] if b_shape is not None and len(b_shape) == 2 else None
    per_channel = (c_shape is not None and len(c_shape) >= 1 and c_shape[-1] == channels
                   and all(d == 1 for d in c_shape[:-1]))
    unit = float(view.attrs.get("alpha", 1.0)) == 1.0 and float(view.attrs.get("beta", 1.0)) == 1.0
    if not (per_channel and unit):  # C is not one value per output channel of A·B: it stays float
        return OpRule("BPU", acts=rule.acts, weight=rule.weight, accumulates=True)
    return rule
    shape = view.shapes[2] if view.has(2) and len(view.shapes) > 2 else None
    if rule.bias is not None and (shape is None or sum(d != 1 for d in shape) > 1):
        rule = OpRule("BPU", acts=rule.acts, weight=rule.weight, accumulates=True)  # C is not per channel: stays float
    return rule


def matmul(view: NodeView) -> OpRule:
    if (r := _float_first(view)) is not None:
        return r
    if not view.is_const(1):
        return cpu(view, "MatMul of two activations has no integer form here (only a constant B)")
    rank = view.rank(1)
    if rank is None or rank < 2:
        return cpu(view, "MatMul with a 1-D constant B has no per-channel integer form here")
    return OpRule("BPU", acts=(0,), weight=WeightSpec(1, rank - 1), accumulates=True)


def own_scale(view: NodeView) -> OpRule:
    """A unary op whose output range differs from its input's: observed, own threshold."""
    return _float_first(view) or OpRule("BPU", acts=(0,))


def lut(view: NodeView) -> OpRule:
    return _float_first(view) or OpRule("BPU", acts=(0,), lut=True)


def same_scale(view: NodeView) -> OpRule:
    """Moves or selects values: int8 in, same int8 out (Reshape, Transpose, Slice, MaxPool, …)."""
    return _float_first(view) or OpRule("BPU", acts=(0,), output="input")


def resize(view: NodeView) -> OpRule:
    mode = view.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return _float_first(view) or OpRule("BPU", acts=(0,), output="input" if mode == "nearest" else "own")


def _float_inputs(view: NodeView) -> tuple[int, ...] | OpRule:
    acts = tuple(i for i in range(len(view.inputs)) if view.is_float(i))
    if len(acts) != len([i for i in view.inputs if i]):
        return cpu(view, f"{view.op_type} on non-float tensors (shape or index arithmetic) stays on the CPU")
    if all(view.is_const(i) for i in acts):
        return cpu(view, f"{view.op_type} of constants only computes a constant")
    return acts


def add_sub(view: NodeView) -> OpRule:
    acts = _float_inputs(view)
    return acts if isinstance(acts, OpRule) else OpRule("BPU", acts=acts, shared_inputs=True)


def mul(view: NodeView) -> OpRule:
    acts = _float_inputs(view)
    return acts if isinstance(acts, OpRule) else OpRule("BPU", acts=acts)


def concat(view: NodeView) -> OpRule:
    acts = _float_inputs(view)
    return acts if isinstance(acts, OpRule) else OpRule("BPU", acts=acts, output="input", shared_inputs=True)


RULES: dict[str, Rule] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "MaxPool": same_scale,
    "GlobalMaxPool": same_scale,
    "AveragePool": own_scale,
    "GlobalAveragePool": own_scale,
    "ReduceMean": own_scale,
    "ReduceMax": same_scale,
    "Add": add_sub,
    "Sub": add_sub,
    "Mul": mul,
    "Concat": concat,
    "Resize": resize,
    "Relu": own_scale,
    "Clip": own_scale,
    "LeakyRelu": own_scale,
    "PRelu": own_scale,
    **dict.fromkeys(("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Swish", "Gelu", "Mish", "Exp", "Softmax",
                     "Softplus", "Elu"), lut),
    **dict.fromkeys(("Reshape", "Flatten", "Transpose", "Split", "Slice", "Pad", "Squeeze", "Unsqueeze",
                     "DepthToSpace", "SpaceToDepth"), same_scale),
}


def decide(view: NodeView) -> OpRule:
    """The rule's answer for `view`; ops of other domains and unknown ops go to the CPU with a reason."""
    if view.domain not in ("", "ai.onnx"):
        return cpu(view, f"operator {view.domain}.{view.op_type} (custom domain) has no integer form here")
    rule = RULES.get(view.op_type)
    return rule(view) if rule is not None else cpu(view)
