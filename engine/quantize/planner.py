"""The quantization planner: optimized float model + options (+ thresholds) → `QuantPlan`.

Two entry points, both pure:
- `plan_tensors(model, options)` — before calibration: the activation tensors the calibrate stage
  must observe (float model inputs, the activation inputs of every integer op, the outputs that
  get a scale of their own). The observer exposes exactly these.
- `make_plan(model, thresholds, options)` — after calibration: every decision as data.

How a plan is made:
1. Units. Each node is one unit, except the members of a fusion group (`hb_fusion_groups` in the
   model's metadata, written by the optimize stage), which form one unit: one integer op whose
   only quantized output is the last node's; its quantized inputs are the group's run-time
   inputs (for Conv+Add that includes the residual).
2. Placement: the registry's rule, then the user's `run_on_cpu` / `run_on_bpu`, then `node_info`
   `ON` (which wins, with a note when it contradicts the other two). An op without an integer
   form cannot be forced onto the BPU (note). A user's CPU placement of one member of a fusion
   group dissolves the group.
3. Scales. Each observed tensor has its calibrated threshold. Ops that keep their input's scale
   (Reshape, MaxPool, …) tie input and output; Concat ties its inputs and output, Add / Sub
   their run-time inputs (a constant operand keeps its own scale, max|c|). Tied tensors form sets (union-find); each set takes the largest threshold of
   its members — the "shared scales" the integer ops need. The calibrated model uses the
   thresholds before sharing (`QuantPlan.calibrated_acts`), the ptq model those after (`acts`).
   Exception (DESIGN §5): a Concat feeding a model output whose inputs' thresholds differ more
   than `concat_range_ratio`× would round its small-range inputs to zero under one int8 scale:
   it stays in float on the CPU with its inputs keeping their own scales (or, if the user forces
   it onto the BPU, it shares one int16 scale), with a note.
   Offset ranges: the output of a lookup-table op whose table's image, over every code of its
   input, covers much less than [-T, T] (HardSwish-affine, HardSigmoid, Sigmoid gates) takes an
   int8 zero point and spreads its 255 codes over that image (`OffsetAct`, `_offset_table_outputs`):
   PP-OCRv4 det 640 at the default target, held-out `.bc` cosine 0.9909 -> 0.9915 with 17 -> 7
   nodes moved; rec 48×320 0.9754 -> 0.9842 with 18 -> 12. (Offset ranges for table *inputs* flat
   beyond some value, HardSwish below −3, were tried and dropped: see the note at OFFSET_SHARE.)
4. Bits: 8, or 16 where `node_info` (OutputType / InputType / InputTypeN), `optimization`
   (`set_{Op}_input_int16`, `set_{Op}_output_int16`, `set_all_nodes_int16`,
   `set_model_output_int16`) asks; a tied set takes its widest member. A model output computed
   by an accumulating op (Conv, Gemm, MatMul) that no integer op reads stays si32 (its int32
   accumulator, dequantized), unless `set_model_output_int8` / `_int16` asks otherwise.
5. Weights: int8 symmetric per output channel, s_w = max|W_c| / 127. Bias: int32 at
   s_in · s_w per channel, rounded half to even and saturated (with a note on overflow).

6. Decisions of calibration (`Calibration`, what `engine.stages.calibrate.load_thresholds` returns):
   node_info entries from automatic mixed precision are merged under the user's own node_info /
   run_on_cpu / run_on_bpu; bias corrections (`optimization: bias_correction`, engine.accuracy.bias)
   are added to the float bias before it is quantized (`CorrectedBias`, `bias_value`).
7. Chains of elementwise functions of one tensor (a LUT activation followed by scalar Mul / Add,
   PP-LCNetV3's learnable affine) become one lookup-table op (`_merge_elementwise_chains`).

Simplifications, stated: `asymmetric` is recorded on the options but calibrated thresholds stay
symmetric (only table outputs get the offset ranges of step 3, from the table itself).
With `per_channel`, per-channel
activation thresholds are kept only on model outputs that no integer op reads (an integer
Conv / Add / Reshape needs one scale per tensor); elsewhere the largest channel threshold is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper

from engine.config.values import OP_BITS_ITEM
from engine.passes.graph import FLOAT_TYPES, Graph
from engine.passes.groups import read_groups
from engine.pipeline.recent import Recent
from engine.quantize.registry import NodeView, OpRule, decide
from engine.quantize.types import ActQuant, BiasQuant, FusionGroup, NodePlan, On, QuantPlan, WeightQuant

MIN_THRESHOLD = 1e-6  # a tensor that was all zeros (a dead Relu) still needs a valid, positive scale
INT32_MAX = 2**31 - 1
BIAS_HEADROOM = float(2**30)  # |bias| / (s_in·s_w) stays below 2^30: int32 with room left for the accumulation
CONCAT_RANGE_RATIO = 8.0
# a weight channel whose every |w| is below this counts as all zeros (step 1/127): a subnormal one (PP-OCRv4
# rec has a channel at 3e-40) made a step of 2.5e-42 whose bias scale s_in · s_w underflowed float32 to 0
ZERO_WEIGHT = 1e-20


class MissingThresholdError(LookupError):
    """A tensor the plan quantizes has no threshold: the calibrate stage did not observe what
    `plan_tensors` listed (a pipeline bug, not a user error)."""


# --------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class NodeInfo:
    """One `model_parameters.node_info` entry: placement and int8 / int16 per input and output."""

    on: On | None = None
    input_bits: int | None = None  # InputType: every input
    input_bits_at: Mapping[int, int] = field(default_factory=dict)  # InputType<N>: input N
    output_bits: int | None = None  # OutputType

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> NodeInfo:
        def bits(value: Any) -> int | None:
            m = re.fullmatch(r"\s*int(8|16)\s*", str(value)) if value is not None else None
            return int(m.group(1)) if m else None

        on = str(entry.get("ON", "")).strip().upper() or None
        at = {int(k[len("InputType"):]): b for k, v in entry.items()
              if re.fullmatch(r"InputType\d+", str(k)) and (b := bits(v)) is not None}
        return cls(on if on in ("BPU", "CPU") else None, bits(entry.get("InputType")), at,
                   bits(entry.get("OutputType")))


@dataclass(frozen=True)
class QuantOptions:
    """What the config says about placement and bit widths (calibration_parameters + node_info)."""

    run_on_cpu: frozenset[str] = frozenset()
    run_on_bpu: frozenset[str] = frozenset()
    node_info: Mapping[str, NodeInfo] = field(default_factory=dict)
    decided: frozenset[str] = frozenset()  # node_info entries automatic mixed precision decided (not the user)
    model_output_bits: int | None = None  # set_model_output_int8 / _int16; None: si32 where possible
    op_input_bits: Mapping[str, int] = field(default_factory=dict)  # set_{Op}_input_int{8,16}
    op_output_bits: Mapping[str, int] = field(default_factory=dict)  # set_{Op}_output_int{8,16}
    all_nodes_int16: bool = False
    per_channel: bool = False
    asymmetric: bool = False  # recorded; quantization stays symmetric (see module docstring)
    bias_correction: bool = False  # corrections are measured by the calibrate stage (engine.accuracy.bias)
    concat_range_ratio: float = CONCAT_RANGE_RATIO
    merge_elementwise: bool = True  # chains of one-tensor elementwise ops run as one lookup table

    @classmethod
    def from_config(cls, config) -> QuantOptions:
        """From `engine.config.Config`: calibration_parameters and model_parameters.node_info."""
        cal = config.calibration
        return cls.build(run_on_cpu=cal.run_on_cpu, run_on_bpu=cal.run_on_bpu,
                         node_info=config.model.node_info, optimization=cal.optimization,
                         per_channel=cal.per_channel)

    @classmethod
    def build(cls, run_on_cpu: Iterable[str] = (), run_on_bpu: Iterable[str] = (),
              node_info: Mapping[str, Mapping[str, Any]] | None = None, optimization: Iterable[str] = (),
              per_channel: bool = False) -> QuantOptions:
        """From the config's values (`optimization` as its comma-split items)."""
        values = {"op_input_bits": {}, "op_output_bits": {}}
        flags: dict[str, Any] = {}
        for item in optimization:
            item = item.strip()
            if item in ("set_model_output_int8", "set_model_output_int16"):
                flags["model_output_bits"] = int(item.rsplit("int", 1)[1])
            elif item in ("set_all_nodes_int16", "asymmetric", "bias_correction"):
                flags[{"set_all_nodes_int16": "all_nodes_int16"}.get(item, item)] = True
            elif m := OP_BITS_ITEM.fullmatch(item):
                values[f"op_{m.group(2)}_bits"][m.group(1)] = int(m.group(3))
        return cls(run_on_cpu=frozenset(run_on_cpu), run_on_bpu=frozenset(run_on_bpu),
                   node_info={k: NodeInfo.parse(v) for k, v in (node_info or {}).items()},
                   per_channel=per_channel, **values, **flags)

    def output_request(self, node: onnx.NodeProto, model_output: bool = False) -> int | None:
        """The bits the config asks for `node`'s output, if any: node_info, then
        set_model_output_int* (for a model output), then set_{Op}_output_*, then set_all_nodes_int16."""
        info = self.node_info.get(node.name)
        if info is not None and info.output_bits:
            return info.output_bits
        if model_output and self.model_output_bits:
            return self.model_output_bits
        if node.op_type in self.op_output_bits:
            return self.op_output_bits[node.op_type]
        return 16 if self.all_nodes_int16 else None

    def input_request(self, node: onnx.NodeProto, index: int) -> int | None:
        info = self.node_info.get(node.name)
        if info is not None and (bits := info.input_bits_at.get(index) or info.input_bits):
            return bits
        if node.op_type in self.op_input_bits:
            return self.op_input_bits[node.op_type]
        return 16 if self.all_nodes_int16 else None


@dataclass(frozen=True)
class CorrectedBias(BiasQuant):
    """A bias with bias correction: the value the integer op adds is `b + correction` (per output
    channel), still int32 at s_in · s_w. (A field of BiasQuant once types.py takes it.)"""

    correction: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def bias_value(b: np.ndarray, planned: BiasQuant | None) -> np.ndarray:
    """The float bias the plan quantizes: the model's, plus its bias correction if it has one."""
    correction = getattr(planned, "correction", None)
    if correction is None or np.size(correction) != np.size(b):
        return b
    return (np.asarray(b, np.float64) + np.asarray(correction, np.float64).reshape(np.shape(b))).astype(np.float32)


@dataclass(frozen=True)
class OffsetAct(ActQuant):
    """An int8 activation whose range is not centred on zero: value = (code − zero_point) · step.
    (Fields of ActQuant once types.py takes them.) `threshold` stays the calibrated one (what the
    tables show); `scale` is the step.

    Given to the output of a lookup-table op whose table cannot reach one side of zero as far as
    the other (`_offset_table_outputs`): PP-LCNetV3's ``a·hswish(x) + c`` never goes below
    c − 0.375·a, so a symmetric scale spent half of its 255 codes on values the table never makes."""

    zero_point: int = 0  # int8 code of 0.0 (the executed uint8 form adds 128)
    step: float = 0.0

    @property
    def scale(self) -> float:
        return float(self.step)


def zero_point_of(act: ActQuant) -> int:
    """The int8 zero point of a planned activation (0 unless it is an `OffsetAct`)."""
    return int(getattr(act, "zero_point", 0))


class Calibration(dict):
    """What calibration hands every later stage: thresholds by tensor (the mapping itself), plus
    the node_info automatic mixed precision decided (`{node: {"OutputType": "int16"}}`, the
    user's own node_info / run_on_* win) and per-channel bias corrections by bias initializer."""

    def __init__(self, thresholds: Mapping[str, Any] = (), node_info: Mapping[str, Mapping[str, str]] | None = None,
                 bias_corrections: Mapping[str, np.ndarray] | None = None):
        super().__init__(thresholds)
        self.node_info = {k: dict(v) for k, v in (node_info or {}).items()}
        self.bias_corrections = {k: np.asarray(v, np.float32) for k, v in (bias_corrections or {}).items()}


# ------------------------------------------------------------------------------------ analysis
@dataclass
class _Unit:
    """One integer op (a node, or a fusion group) or one CPU node."""

    name: str
    nodes: list[onnx.NodeProto]
    rule: OpRule
    on: On
    reason: str
    group: FusionGroup | None = None
    acts: list[str] = field(default_factory=list)  # tensors read quantized
    outputs: list[str] = field(default_factory=list)  # tensors it makes visible to the rest of the graph
    forced_bpu: bool = False

    @property
    def last(self) -> onnx.NodeProto:
        return self.nodes[-1]

    @property
    def bpu(self) -> bool:
        return self.on == "BPU"


@dataclass
class _Analysis:
    graph: Graph
    units: list[_Unit]
    unit_of: dict[str, _Unit]  # node name → unit
    producer: dict[str, _Unit]  # tensor → unit that makes it visible
    readers: dict[str, list[_Unit]]  # tensor → units reading it
    notes: list[str]
    groups: list[FusionGroup]
    facts: _GraphFacts


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # a custom op shape inference cannot handle: use what the model states
        return model


def _view(g: Graph, node: onnx.NodeProto) -> NodeView:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    consts = tuple(bool(i) and g.constant(i) is not None for i in node.input)
    floating = tuple(bool(i) and g.elem_type(i) in (*FLOAT_TYPES, None, 0) for i in node.input)
    shapes = tuple(g.shape(i) if i else None for i in node.input)
    return NodeView(node.name, node.op_type, tuple(node.input), tuple(node.output), attrs, consts, floating,
                    shapes, node.domain)


MIXED_PRECISION = "automatic mixed precision (target_output_cosine)"  # who placed a node the search moved


@dataclass(frozen=True)
class _Place:
    on: On
    reason: str
    user: On | None = None  # where the user's run_on_cpu / run_on_bpu / node_info put it, if they did


def _placement(node: onnx.NodeProto, rule: OpRule, options: QuantOptions, notes: list[str]) -> _Place:
    """Where one node runs: the rule, overridden by run_on_cpu / run_on_bpu, overridden by node_info."""
    info = options.node_info.get(node.name)
    asked: tuple[On, str] | None = None
    if info is not None and info.on is not None:
        for key, where in (("run_on_cpu", "CPU"), ("run_on_bpu", "BPU")):
            if node.name in getattr(options, key):
                notes.append(f"node_info takes priority over {key} for node '{node.name}': it runs on "
                             f"{info.on}" + ("" if info.on == where else f", not {where}"))
        asked = (info.on, MIXED_PRECISION if node.name in options.decided else "node_info")
    elif node.name in options.run_on_cpu:
        asked = ("CPU", "run_on_cpu")
    elif node.name in options.run_on_bpu:
        asked = ("BPU", "run_on_bpu")
    if asked is None:
        return _Place(rule.on, rule.reason)
    on, key = asked
    if on == "CPU":
        return _Place("CPU", f"{key} places it on the CPU", "CPU")
    if rule.on == "CPU":
        notes.append(f"{key} asks for node '{node.name}' on the BPU, but it stays on the CPU: {rule.reason}")
        return _Place("CPU", rule.reason, "BPU")
    return _Place("BPU", f"{key} places it on the BPU", "BPU")


@dataclass
class _GraphFacts:
    """What a plan reads of the model alone, whatever the options and thresholds: the graph view of
    its shape-inferred copy, each node's registry rule, and its weights' per-channel scales (filled
    as plans ask). Two thirds of a `make_plan` on digits (1.0 of 1.5 ms), 30 ms on PP-OCRv4 det, and
    a calibrate stage makes ~7 plans of one model (`default`'s four candidates, the accuracy steps',
    its own; ptq's is another stage's): `_facts` keeps them by the model's bytes."""

    key: str  # sha256 of the model's bytes
    graph: Graph
    rules: dict[str, OpRule]
    weight_scales: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    table_functions: dict[tuple[str, ...], Any] = field(default_factory=dict)  # table unit's nodes → its function


class _KeptGraph(Graph):
    """A `Graph` that is never edited (the planner's view of a kept model): each constant's value is
    converted once, read-only, instead of on every call (a plan asks for each weight and bias)."""

    def refresh(self) -> None:
        super().refresh()
        self._constants: dict[str, np.ndarray | None] = {}

    def constant(self, name: str) -> np.ndarray | None:
        if name not in self._constants:
            value = super().constant(name)
            if value is not None:
                value.setflags(write=False)
            self._constants[name] = value
        return self._constants[name]


FACTS_KEPT = 4  # models whose facts a process keeps (a few projects in one daemon; det: ~6 MB each)
_facts_memo: Recent[str, _GraphFacts] = Recent(FACTS_KEPT)


def _facts(model: onnx.ModelProto) -> _GraphFacts:
    """The `_GraphFacts` of `model`, by the sha256 of its bytes (digits 0.04 ms, det 5 ms): a model
    edited in place, or another model object with the same bytes, is keyed by what it holds now. The
    graph views a copy (shape inference returns one; a model it cannot infer is copied), so no caller
    can change what a kept entry holds."""
    key = hashlib.sha256(model.SerializeToString()).hexdigest()
    found = _facts_memo.get(key)
    if found is not None:
        return found
    inferred = _infer(model)
    if inferred is model:
        inferred = onnx.ModelProto()
        inferred.CopyFrom(model)
    g = _KeptGraph(inferred)
    return _facts_memo.put(key, _GraphFacts(key, g, {node.name: decide(_view(g, node)) for node in g.g.node}))


def _analyse(model: onnx.ModelProto, options: QuantOptions, facts: _GraphFacts) -> _Analysis:
    g = facts.graph
    notes: list[str] = []
    rules: dict[str, OpRule] = dict(facts.rules)
    placed: dict[str, _Place] = {}
    for node in g.g.node:
        placed[node.name] = _placement(node, rules[node.name], options, notes)

    by_name = {n.name: n for n in g.g.node}
    groups: list[FusionGroup] = []
    in_group: dict[str, FusionGroup] = {}
    for pg in read_groups(model):
        fg = FusionGroup(pg.name, pg.type, tuple(pg.nodes), pg.kind)
        if not fg.nodes or any(n not in by_name for n in fg.nodes) or any(n in in_group for n in fg.nodes):
            notes.append(f"fusion group {fg.name} does not match the graph (missing or shared nodes): ignored")
            continue
        user_cpu = [n for n in fg.nodes if placed[n].user == "CPU"]
        if user_cpu:
            notes.append(f"fusion group {fg.name} is not fused: {', '.join(user_cpu)} is placed on the CPU")
            continue
        if fg.kind != "activation" and rules[fg.nodes[0]].on != "BPU":
            continue  # a Conv without an integer form: its members are planned one by one
        groups.append(fg)
        in_group.update(dict.fromkeys(fg.nodes, fg))
    if options.merge_elementwise:
        _merge_elementwise_chains(g, rules, placed, groups, in_group)

    units: list[_Unit] = []
    for node in g.g.node:
        fg = in_group.get(node.name)
        if fg is not None:
            if node.name != fg.nodes[-1]:
                continue
            members = [by_name[n] for n in fg.nodes]
            unit = _group_unit(g, fg, members, rules, placed)
        else:
            place, rule = placed[node.name], rules[node.name]
            unit = _Unit(node.name, [node], rule, place.on, place.reason, forced_bpu=place.user == "BPU")
            if place.on == "BPU":
                unit.acts = [node.input[i] for i in rule.acts]
            unit.outputs = [o for o in node.output if o]
        units.append(unit)
    return _indexed(g, units, notes, groups, facts)


def _indexed(g: Graph, units: list[_Unit], notes: list[str], groups: list[FusionGroup], facts: _GraphFacts
             ) -> _Analysis:
    """The analysis of `units`: which unit holds each node, makes each tensor, reads each tensor."""
    unit_of = {n.name: u for u in units for n in u.nodes}
    producer = {t: u for u in units for t in u.outputs}
    readers: dict[str, list[_Unit]] = {}
    for u in units:
        for t in dict.fromkeys(i for n in u.nodes for i in n.input if i):
            readers.setdefault(t, []).append(u)
    return _Analysis(g, units, unit_of, producer, readers, notes, groups, facts)


@dataclass
class _Prepared:
    """What a plan of (model, options) decides before any threshold is read: the analysis and its
    scales. Plans never change it: a plan that moves an output Concat to the CPU works on a copy
    (`_moved`), and its notes start from a copy of the analysis'."""

    analysis: _Analysis
    scales: _Scales


PREPARED_KEPT = 16  # (model, options) pairs kept: mixed precision plans under a few node_info sets in turn
_prepared_memo: Recent[tuple[str, Any], _Prepared] = Recent(PREPARED_KEPT)


def _canonical(value: Any) -> Any:
    """A hashable form of an options value, equal for equal values (sets sorted, mappings by key)."""
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(_canonical(v) for v in value)))
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple((f.name, _canonical(getattr(value, f.name)))
                                            for f in dataclasses.fields(value)))
    return value


def _prepared(model: onnx.ModelProto, options: QuantOptions) -> _Prepared:
    """The `_Prepared` of (`model`, `options`), by the model's bytes and the options' values: the
    search's four candidates, the stage's own plan and the accuracy steps' share one."""
    facts = _facts(model)
    key = (facts.key, _canonical(options))
    found = _prepared_memo.get(key)
    if found is None:
        a = _analyse(model, options, facts)
        found = _prepared_memo.put(key, _Prepared(a, _scales(a, options)))
    return found


# Ops that act on each element alone; with scalar constant operands only they are a function of one
# tensor, which the integer program runs as one lookup table (engine.quantize.luts.ELEMENTWISE).
_ELEMENTWISE = frozenset({
    "Abs", "Add", "Clip", "Div", "Elu", "Exp", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Mish", "Mul",
    "Neg", "Relu", "Sigmoid", "Softplus", "Sub", "Swish", "Tanh"})


def _unary_source(g: Graph, node: onnx.NodeProto) -> str | None:
    """The one run-time input of an elementwise `node` whose other inputs are scalar constants."""
    if node.op_type not in _ELEMENTWISE or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    sources = []
    for i in node.input:
        if not i:
            continue
        value = g.constant(i)
        if value is None:
            if g.elem_type(i) not in (*FLOAT_TYPES, None, 0):
                return None
            sources.append(i)
        elif value.size != 1:
            return None
    return sources[0] if len(sources) == 1 else None


def _merge_elementwise_chains(g: Graph, rules: dict[str, OpRule], placed: dict[str, _Place],
                              groups: list[FusionGroup], in_group: dict[str, FusionGroup]) -> None:
    """Chains of elementwise functions of one tensor become one lookup-table op.

    PP-LCNetV3 (PP-OCRv4 det / rec) follows every activation with a learnable affine
    ``HardSwish → Mul(a) → Add(c)``; quantized one by one that is three int8 roundings where the
    function ``a·hswish(x) + c`` is one table: measured on PP-OCRv4 det, the requantized affine
    outputs were the most sensitive tensors of the model. A chain grows from a LUT activation, a
    scalar Mul / Add / Sub / Div or an existing activation group, through single-reader tensors
    that are not model outputs, over BPU nodes the user did not place; Relu / Clip join when they
    follow (they do not start a chain: Conv+Relu grouping is the optimize stage's).
    """
    by_name = {n.name: n for n in g.g.node}
    merged: dict[str, tuple[list[onnx.NodeProto], str]] = {}  # last node name → (chain, type)
    starts = [n for n in g.g.node if _unary_source(g, n) is not None or
              (in_group.get(n.name) is not None and in_group[n.name].kind == "activation"
               and in_group[n.name].nodes[-1] == n.name)]
    taken: set[str] = set()
    for node in starts:
        if node.name in taken or placed[node.name].on != "BPU" or placed[node.name].user is not None:
            continue
        fg = in_group.get(node.name)
        if fg is not None and fg.kind != "activation":
            continue
        if fg is None and node.op_type in ("Relu", "Clip"):
            continue
        chain = [by_name[n] for n in fg.nodes] if fg is not None else [node]
        tail = chain[-1]
        while True:
            nxt = g.only_consumer(tail.output[0])
            if (nxt is None or nxt.name in in_group or nxt.name in taken or _unary_source(g, nxt) != tail.output[0]
                    or placed[nxt.name].on != "BPU" or placed[nxt.name].user is not None):
                break
            chain.append(nxt)
            tail = nxt
        if len(chain) < 2 or (fg is not None and len(chain) == len(fg.nodes)):
            continue
        taken.update(n.name for n in chain)
        head = fg.type if fg is not None else node.op_type
        merged[chain[-1].name] = (chain, "+".join([head, *(n.op_type for n in chain[len(fg.nodes) if fg else 1:])]))
        if fg is not None:
            groups.remove(fg)
    for chain, type_ in merged.values():
        names = tuple(n.name for n in chain)
        fg = FusionGroup("+".join(names), type_, names, "activation")
        groups.append(fg)
        in_group.update(dict.fromkeys(names, fg))
    order = {n.name: i for i, n in enumerate(g.g.node)}
    groups.sort(key=lambda f: order.get(f.nodes[0], 0))


def _group_unit(g: Graph, fg: FusionGroup, members: list[onnx.NodeProto], rules: dict[str, OpRule],
                placed: dict[str, _Place]) -> _Unit:
    """A fusion group as one op: the head's weight / bias, the group's run-time inputs, one output."""
    inside = {o for n in members for o in n.output if o}
    head = rules[members[0].name] if fg.kind != "activation" else OpRule("BPU", lut=True)
    acts: list[str] = []
    for n in members:
        for i in n.input:
            if (i and i not in inside and i not in acts and g.constant(i) is None
                    and g.elem_type(i) in (*FLOAT_TYPES, None, 0)):
                acts.append(i)
    member_names = {n.name for n in members}
    visible = [o for o in members[-1].output if o]
    for n in members[:-1]:  # an inner tensor read outside the group must stay visible (and quantized)
        visible += [o for o in n.output if o and (o in g.outputs or any(c.name not in member_names
                                                                         for c in g.consumers(o)))]
    forced = [placed[n.name] for n in members if placed[n.name].user == "BPU"]
    rule = OpRule("BPU", acts=(), weight=head.weight, bias=head.bias, lut=fg.kind == "activation")
    return _Unit(fg.name, members, rule, "BPU", forced[0].reason if forced else "", fg, acts, visible, bool(forced))


# ------------------------------------------------------------------------------- observed tensors
@dataclass
class _Scales:
    """Which tensors are quantized and how their thresholds relate."""

    observed: list[str] = field(default_factory=list)  # thresholds come from calibration
    constant: dict[str, np.ndarray] = field(default_factory=dict)  # thresholds from the value
    derived: dict[str, str] = field(default_factory=dict)  # same-scale output → its input
    quantized: list[str] = field(default_factory=list)  # every tensor with an ActQuant
    si32: set[str] = field(default_factory=set)
    ties: list[tuple[str, ...]] = field(default_factory=list)  # Concat / Add / Sub shared sets


def _si32(a: _Analysis, unit: _Unit, out: str, options: QuantOptions) -> bool:
    """A model output left as the int32 accumulator: nothing asks for int8/16 and no integer op reads it."""
    return (unit.rule.accumulates and unit.group is None and out in a.graph.outputs
            and options.output_request(unit.last, model_output=True) is None
            and not any(r.bpu for r in a.readers.get(out, [])))


def _scales(a: _Analysis, options: QuantOptions) -> _Scales:
    s = _Scales()
    seen: set[str] = set()

    def add(t: str) -> None:
        if t not in seen:
            seen.add(t)
            s.quantized.append(t)

    for inp in a.graph.g.input:
        if inp.name not in a.graph.initializers and a.graph.elem_type(inp.name) in (*FLOAT_TYPES, None, 0):
            s.observed.append(inp.name)
    for u in a.units:
        if not u.bpu:
            continue
        for t in u.acts:
            value = a.graph.constant(t)
            if value is not None:
                s.constant[t] = value
            elif t not in s.observed and t not in s.derived:
                s.observed.append(t)
            add(t)
        for out in u.outputs:
            if _si32(a, u, out, options):
                s.si32.add(out)
                continue
            if u.rule.output == "input" and not u.rule.shared_inputs and u.acts:
                s.derived[out] = u.acts[0]
            elif out not in s.observed:
                s.observed.append(out)
            add(out)
        # a constant operand keeps its own scale: the integer op folds it in as a parameter, and tying it
        # to the activation's coarser step would shift every element by its rounding error
        tied = [t for t in u.acts if t not in s.constant] if u.rule.output != "input" else list(u.acts)
        tied += u.outputs if u.rule.output == "input" else []
        if u.rule.shared_inputs and len(set(tied)) > 1:
            s.ties.append(tuple(dict.fromkeys(tied)))
    return s


def plan_tensors(model: onnx.ModelProto, options: QuantOptions | None = None) -> list[str]:
    """The activation tensors the calibrate stage must observe, in graph order."""
    prepared = _prepared(model, options or QuantOptions())
    a, observed = prepared.analysis, set(prepared.scales.observed)
    order = [i.name for i in a.graph.g.input] + [o for n in a.graph.g.node for o in n.output]
    return [t for t in dict.fromkeys(order) if t in observed]


def width_sets(model: onnx.ModelProto, options: QuantOptions | None = None) -> list[tuple[str, ...]]:
    """The quantized tensors of `model` that share one scale, and so one width, in sets of two or more:
    an int16 request on one member makes every member int16 (`make_plan` takes the widest). Ties
    (Concat / Add / Sub inputs and output) and same-scale outputs (Resize, MaxPool, Reshape … and
    their input). What a move to int16 really raises, for pricing it (`engine.accuracy.mixed`):
    on PP-OCRv4 det one neck Add at 24×40×40 raises the whole FPN concat to 96×160×160."""
    s = _prepared(model, options or QuantOptions()).scales
    sets = _scale_sets(s)
    return [tuple(m) for m in sets.members(s.quantized).values() if len(m) > 1]


def _scale_sets(s: _Scales) -> Sets:
    """The quantized tensors joined where they share one scale: same-scale outputs with their source, and ties."""
    sets = Sets()
    for t in s.quantized:
        sets.find(t)
    for out, src in s.derived.items():
        sets.union(out, src)
    for tie in s.ties:
        sets.union(*tie)
    return sets


# ---------------------------------------------------------------------------------- union-find
class Sets:
    """Union-find over tensor (or row) names: which share one scale (the plan), which run as one island (mixed)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, *xs: str) -> None:
        roots = [self.find(x) for x in xs]
        for r in roots[1:]:
            self.parent[r] = roots[0]

    def members(self, names: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(self.find(n), []).append(n)
        return out


# ----------------------------------------------------------------------------------- the plan
def _threshold_of(value: Any) -> tuple[float | np.ndarray, str, int | None]:
    """(threshold, method, channel axis) from any form of a calibration result:
    `engine.calibration.Threshold` (per-channel in `channels` along `axis`), ActQuant, a number."""
    if isinstance(value, ActQuant):
        return value.threshold, value.method, value.axis
    if hasattr(value, "value"):
        channels = getattr(value, "channels", None)
        if channels is not None:
            return np.asarray(channels, np.float64), str(getattr(value, "method", "")), getattr(value, "axis", 1)
        return value.value, str(getattr(value, "method", "")), None
    return value, "", None


def _clean(t: float | np.ndarray, tensor: str, notes: list[str]) -> float | np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        notes.append(f"tensor '{tensor}' has a non-finite calibration threshold; it is quantized with the "
                     f"smallest scale (check the float model for NaN / Inf on the calibration data)")
    arr = np.where(bad | (arr < MIN_THRESHOLD), MIN_THRESHOLD, arr)
    return float(arr) if arr.ndim == 0 else arr


def _tmax(t: float | np.ndarray) -> float:
    return float(np.max(t))


def _to_output(a: _Analysis, concat: _Unit) -> list[_Unit] | None:
    """The same-scale units from a Concat's output to a model output (single reader each), or None."""
    chain: list[_Unit] = []
    t = concat.outputs[0] if concat.outputs else None
    while t is not None:
        if t in a.graph.outputs:
            return chain
        rs = a.readers.get(t, [])
        if len(rs) != 1 or not rs[0].bpu or rs[0].rule.output != "input" or rs[0].rule.shared_inputs:
            return None
        chain.append(rs[0])
        t = rs[0].outputs[0] if len(rs[0].outputs) == 1 else None
    return None


def make_plan(model: onnx.ModelProto, thresholds: Mapping[str, Any], options: QuantOptions | None = None) -> QuantPlan:
    """Every quantization decision for `model` given the calibrated thresholds (module docstring)."""
    options = options or QuantOptions()
    auto = getattr(thresholds, "node_info", None) or {}
    if auto:  # decided by automatic mixed precision; the user's own placement of a node wins
        mine = set(options.node_info) | options.run_on_cpu | options.run_on_bpu
        options = replace(options, node_info={**{k: NodeInfo.parse(v) if isinstance(v, Mapping) else v
                                                  for k, v in auto.items() if k not in mine},
                                               **options.node_info},
                          decided=frozenset(k for k in auto if k not in mine))
    prepared = _prepared(model, options)
    a, s = prepared.analysis, prepared.scales
    notes = list(a.notes)
    if options.asymmetric:
        notes.append("optimization asymmetric is recorded, but activations stay symmetric (zero point 0) here")

    raw: dict[str, float | np.ndarray] = {}
    methods: dict[str, str] = {}
    axes: dict[str, int | None] = {}
    for t in s.observed:
        if t not in s.quantized:
            continue  # observed but read only by the CPU (e.g. a model input of a CPU node)
        if t not in thresholds:
            where = a.producer[t].name if t in a.producer else "a model input"
            raise MissingThresholdError(
                f"no calibration threshold for tensor '{t}' (from {where}): the calibrate stage must observe "
                f"every tensor plan_tensors() lists")
        value, methods[t], axes[t] = _threshold_of(thresholds[t])
        raw[t] = _clean(value, t, notes)
    for t, value in s.constant.items():
        raw[t] = _clean(float(np.max(np.abs(value))) if value.size else 0.0, t, notes)
        methods[t] = "const"
    for out, src in s.derived.items():  # graph order: a source is known before what derives from it
        raw[out], methods[out] = raw[src], methods.get(src, "")

    wide, moved = _split_output_concats(a, raw, options, notes)
    if moved:  # units moved to the CPU: the plan's own copy of the analysis, and its scales
        a = _moved(a, moved)
        s = _scales(a, options)
        for out, src in s.derived.items():
            raw[out], methods[out] = raw[src], methods.get(src, "")

    sets = _scale_sets(s)
    bits = _bits(a, s, options)
    bits.update((t, 16) for t in wide if t in bits)

    per_channel_ok = _per_channel_tensors(a, s, options)
    acts: dict[str, ActQuant] = {}
    calibrated: dict[str, ActQuant] = {}
    shared: list[tuple[str, ...]] = []
    tied = {t for tie in s.ties for t in tie}
    reduced = 0
    for members in sets.members(s.quantized).values():
        width = max(bits[m] for m in members)
        for m in members:
            if np.ndim(raw[m]) and m not in per_channel_ok:
                raw[m], reduced = _tmax(raw[m]), reduced + 1
        final = raw[members[0]] if len(members) == 1 else max(_tmax(raw[m]) for m in members)
        for m in members:
            axis = (axes.get(m) if axes.get(m) is not None else 1) if np.ndim(raw[m]) else None
            acts[m] = ActQuant(m, final if len(members) > 1 else raw[m], width, axis, methods.get(m, ""))
            calibrated[m] = ActQuant(m, raw[m], width, axis, methods.get(m, ""))
        if len(members) > 1 and tied.intersection(members):
            shared.append(tuple(members))
    if reduced:
        notes.append(f"per_channel: {reduced} activation tensors use one threshold (their largest channel's): "
                     f"per-channel activation scales are kept only on model outputs a conv or matmul writes and no integer op reads")

    singletons = {m for members in sets.members(s.quantized).values() if len(members) == 1 for m in members}
    _offset_table_outputs(a, singletons, acts, calibrated)
    plan = QuantPlan(groups=list(a.groups), shared=shared, notes=notes)
    plan.acts = {t: acts[t] for t in s.quantized}
    plan.calibrated_acts = {t: calibrated[t] for t in s.quantized}
    _weights_and_biases(a, plan, getattr(thresholds, "bias_corrections", None) or {})
    for u in a.units:
        out_bits = 0
        if u.bpu:
            main = u.outputs[0] if u.outputs else None
            out_bits = 32 if main in s.si32 else (plan.acts[main].bits if main in plan.acts else 8)
        act_set = set(u.acts)
        for n in u.nodes:
            w = n.input[u.rule.weight.input] if u.bpu and u.rule.weight is not None and n is u.nodes[0] else None
            b = n.input[u.rule.bias] if u.bpu and u.rule.bias is not None and n is u.nodes[0] else None
            plan.nodes[n.name] = NodePlan(
                n.name, n.op_type, u.on, u.reason, u.group.name if u.group else None,
                tuple(dict.fromkeys(i for i in n.input if i in act_set)) if u.bpu else (),
                w if w in plan.weights else None, b if b in plan.biases else None, out_bits)
    return plan


# A table output gets an offset range when its table's image spans at most this share of the symmetric
# range [-T, T]: below it the finer scale is worth a zero point (PP-OCRv4 rec's hswish-affine outputs: ~0.52).
OFFSET_SHARE = 0.9
# Offset ranges for table inputs flat beyond some value (a conv output read only by HardSwish, constant
# below -3, spread over [-3, T]): tried and dropped (2026-11-26). Measured with the default config, `.bc`
# on held-out samples, narrowed vs not: PP-OCRv4 rec (256 lines) cosine 0.9730 vs 0.9810, CER 0.0294 vs
# 0.0301, 18 vs 6 moves (the `default` search picked other thresholds under it); det 640 0.9909 vs 0.9915,
# IoU 0.9712 vs 0.9718; cls 0.9993 vs 0.9982; digits `default` 0.99967 vs 0.99973, `max` 0.99967 vs
# 0.99954. Each table input alone was rounded finer, but the models as a whole did not gain.


def _table_unit(u: _Unit) -> bool:
    """One lookup-table op: an activation group (merged chain) or a single LUT node."""
    if not u.bpu or len(u.acts) != 1 or len(u.outputs) != 1:
        return False
    return (u.group is not None and u.group.kind == "activation") or (u.group is None and u.rule.lut)


def _table_function(g: Graph, nodes: list[onnx.NodeProto], source: str):
    """The float function of a table unit (engine.quantize.luts.elementwise_function, which keeps it by the
    chain's nodes and scalar constants); None when it is not a function of `source` alone."""
    from engine.quantize import luts

    inside = {o for n in nodes for o in n.output if o}
    constants = {}
    for n in nodes:
        if n.op_type not in luts.ELEMENTWISE or n.domain not in ("", "ai.onnx"):
            return None
        for i in n.input:
            if not i or i in inside or i == source:
                continue
            value = g.constant(i)
            if value is None or value.size != 1:
                return None
            constants[i] = onnx.numpy_helper.from_array(np.asarray(value), i)
    return luts.elementwise_function(nodes, source, nodes[-1].output[0], list(constants.values()),
                                     list(g.model.opset_import))  # kept there by content


def _offset_table_outputs(a: _Analysis, singletons: set[str], acts: dict[str, ActQuant],
                          calibrated: dict[str, ActQuant]) -> None:
    """Table outputs whose table cannot make values on one side of zero as far out as on the other
    get an offset int8 range (`OffsetAct`), in place.

    The table's image over every code of its input's encoding is known exactly: [lo, hi]. The
    output needs only [max(min(lo, 0), −T), max(hi, 0)], taken when that is at most OFFSET_SHARE of
    [−T, T]; spread over 255 codes that is up to twice the resolution (one bit) on, e.g., every
    ``a·hswish(x) + c`` of PP-LCNetV3 and every HardSigmoid / Sigmoid gate. The top is the table's
    own (its input's threshold already bounds it), not the calibrated T: T was chosen for a
    symmetric step, and clipping at it as well cost held-out accuracy once the step was finer
    (PP-OCRv4 det 640, default: `.bc` cosine 0.9886 with 2 moves clipped at T, 0.9915 with 7 not). Only a tensor with a scale of its own (no Concat / Add / Reshape
    tie) and 8 bits, read from a per-tensor input: integer ops take its zero point as given
    (QLinearConv pads with it, so zero padding stays exact). Not a model output: what a deployed
    model hands its user keeps hb_compile's symmetric form (one scale, no zero point), and a
    calibrated model read back by `calibration_type: load` gives its thresholds unchanged.
    """
    outputs = {o.name for o in a.graph.g.output}
    for u in a.units:
        if not _table_unit(u):
            continue
        out, src = u.outputs[0], u.acts[0]
        act, inp = acts.get(out), acts.get(src)
        if act is None or inp is None or out not in singletons or out in outputs or act.bits != 8 or act.axis is not None \
                or inp.axis is not None or np.ndim(act.threshold):
            continue
        known = (src, *(n.name for n in u.nodes))
        if known not in a.facts.table_functions:  # the graph is the facts': its nodes are fixed
            a.facts.table_functions[known] = _table_function(a.graph, u.nodes, src)
        fn = a.facts.table_functions[known]
        if fn is None:
            continue
        qmax = inp.qmax
        x = ((np.arange(-qmax - 1, qmax + 1, dtype=np.float64) - zero_point_of(inp)) * float(inp.scale)
             ).astype(np.float32)
        y = np.asarray(fn(x), np.float64)
        if y.size != x.size or not np.all(np.isfinite(y)):
            continue
        t = float(act.threshold)
        lo, hi = max(min(float(y.min()), 0.0), -t), max(float(y.max()), 0.0)
        if hi - lo > OFFSET_SHARE * 2 * t or hi - lo <= 0:
            continue
        scale = (hi - lo) / 255.0
        zp = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
        for table in (acts, calibrated):
            old = table[out]
            table[out] = OffsetAct(out, old.threshold, 8, None, old.method, zp, scale)


def _bits(a: _Analysis, s: _Scales, options: QuantOptions) -> dict[str, int]:
    """8 or 16 per quantized tensor: its producer's output request, its integer readers' input requests."""
    want: dict[str, int] = dict.fromkeys(s.quantized, 8)
    for u in a.units:
        if not u.bpu:  # a CPU node's node_info OutputType: the width it hands its integer readers
            for out in u.outputs:
                info = options.node_info.get(u.last.name)
                if out in want and info is not None and info.output_bits:
                    want[out] = max(want[out], info.output_bits)
            continue
        for n in u.nodes:
            for i, t in enumerate(n.input):
                if t in want and t in u.acts and (r := options.input_request(n, i)):
                    want[t] = max(want[t], r)
        for out in u.outputs:
            if out not in want:
                continue
            model_output = out in a.graph.outputs
            request = next((r for n in reversed(u.nodes) if (r := options.output_request(n, model_output))), None)
            if request:
                want[out] = max(want[out], request)
    return want


PER_CHANNEL_WRITERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # requantize per output channel


def _per_channel_tensors(a: _Analysis, s: _Scales, options: QuantOptions) -> set[str]:
    """Model outputs that may keep per-channel thresholds: no integer op reads them, and their writer
    requantizes per channel (a conv / matmul, alone or with its fused activation) or is a CPU node.
    Other integer writers (pooling, Sigmoid, Softmax, …) have one output scale in onnxruntime's
    QLinear kernels: their Q/DQ pairs are fused into those, which a per-channel scale breaks."""
    if not options.per_channel:
        return set()
    tied = {t for tie in s.ties for t in tie} | set(s.derived) | set(s.derived.values())

    def writer_allows(t: str) -> bool:
        unit = a.producer.get(t)
        return unit is None or not unit.bpu or unit.nodes[0].op_type in PER_CHANNEL_WRITERS

    return {t for t in s.quantized if t in a.graph.outputs and t not in tied
            and not any(r.bpu for r in a.readers.get(t, [])) and writer_allows(t)}


def _split_output_concats(a: _Analysis, raw: dict[str, Any], options: QuantOptions, notes: list[str]
                          ) -> tuple[set[str], dict[str, str]]:
    """DESIGN §5: an output Concat must not join very different ranges under one int8 scale.

    Decides, without touching `a`: such Concats (and the same-scale ops between them and the output)
    move to the CPU ({unit name: reason}, for `_moved`); the tensors of a user-forced one share one
    int16 scale instead (the returned set).
    """
    wide: set[str] = set()
    moved: dict[str, str] = {}
    for u in a.units:
        if not (u.bpu and u.group is None and u.last.op_type == "Concat" and len(u.acts) > 1):
            continue
        ts = [_tmax(raw[t]) for t in u.acts if t in raw]
        if len(ts) < 2 or min(ts) <= 0:
            continue
        ratio = max(ts) / min(ts)
        if ratio <= options.concat_range_ratio:
            continue
        chain = _to_output(a, u)
        span = f"thresholds {min(ts):.4g} to {max(ts):.4g} ({ratio:.0f}×)"
        if chain is None:
            notes.append(f"{u.name} joins tensors with {span} under one scale; if accuracy suffers, give it "
                         f"int16 (node_info OutputType: int16) or place it on the CPU")
        elif u.forced_bpu:
            notes.append(f"{u.name} joins model-output tensors with {span}; it is forced onto the BPU, so it "
                         f"shares one int16 scale instead of int8")
            wide.update([*u.acts, *u.outputs])
        else:
            names = [u.name, *(c.name for c in chain)]
            notes.append(f"{u.name} joins model-output tensors with {span}: one int8 scale would round the "
                         f"small ones to zero, so {', '.join(names)} stay in float on the CPU and each input "
                         f"keeps its own scale")
            for c in [u, *chain]:
                moved[c.name] = f"output Concat of very different ranges ({ratio:.0f}×) stays in float"
    return wide, moved


def _moved(a: _Analysis, moved: Mapping[str, str]) -> _Analysis:
    """A copy of `a` in which the units named in `moved` run on the CPU for the reason given (a kept
    analysis is shared by every plan of its model and options, so it is never changed in place)."""
    units = [replace(u, on="CPU", reason=moved[u.name], acts=[]) if u.name in moved else u for u in a.units]
    return _indexed(a.graph, units, list(a.notes), list(a.groups), a.facts)


def _weights_and_biases(a: _Analysis, plan: QuantPlan, corrections: Mapping[str, np.ndarray]) -> None:
    """Per-channel weight scales, then the int32 bias scales s_in · s_w.

    Two passes: a weight shared by several convs may have its scale raised by a later reader (a
    near-zero channel whose bias would not fit int32), and every reader's bias scale must use the
    final weight scale — the integer program accumulates with it.
    """
    g = a.graph
    pending: list[tuple[str, str, str, float, np.ndarray, np.ndarray | None]] = []
    for u in a.units:
        if not u.bpu or u.rule.weight is None:
            continue
        head = u.nodes[0]
        spec = u.rule.weight
        wname = head.input[spec.input]
        w = g.constant(wname)
        if w is None:
            continue
        if wname not in plan.weights:
            known = (wname, spec.axis, spec.groups)
            if known not in a.facts.weight_scales:  # the constant's value is the graph's: fixed for the facts
                scales = weight_scales(w, spec.axis, spec.groups)
                scales.setflags(write=False)  # shared by every plan of the model
                a.facts.weight_scales[known] = scales
            plan.weights[wname] = WeightQuant(wname, spec.axis, a.facts.weight_scales[known], groups=spec.groups)
        wq = plan.weights[wname]
        if u.rule.bias is None:
            continue
        bname = head.input[u.rule.bias]
        b = g.constant(bname)
        x = u.acts[0] if u.acts else None
        if b is None or x not in plan.acts:
            continue
        users = {n.name for n in g.consumers(bname)}
        if users != {head.name}:
            plan.notes.append(f"bias '{bname}' of {head.name} is shared with {sorted(users - {head.name})}: it stays float")
            continue
        s_in = float(plan.acts[x].scale)
        shift = corrections.get(bname)
        if shift is not None and np.size(shift) == b.size:
            b = (b.astype(np.float64) + np.asarray(shift, np.float64).reshape(b.shape)).astype(np.float32)
        else:
            shift = None
        b64 = np.abs(b.astype(np.float64).reshape(-1))
        if b64.shape != wq.scale.shape:
            plan.notes.append(f"bias '{bname}' of {head.name} has {b64.size} values for {wq.scale.size} output "
                              f"channels: it stays float")
            continue
        need = (b64 / (s_in * BIAS_HEADROOM)).astype(np.float32)  # the smallest s_w that keeps b in range
        if (low := need > wq.scale).any():
            # a near-zero weight channel (e.g. after BN folding) with a real bias: a coarser weight step
            # costs nothing (the weights are ~0), a saturated bias would shift the whole channel
            wq = WeightQuant(wq.tensor, wq.axis, np.maximum(wq.scale, need), wq.bits, wq.groups)
            plan.weights[wname] = wq
            plan.notes.append(f"weight '{wname}' of {head.name}: the scale of {int(low.sum())} near-zero channels is "
                              f"raised so their bias fits int32")
        pending.append((bname, head.name, wname, s_in, b64, shift))
    for bname, head_name, wname, s_in, b64, shift in pending:
        scale = bias_scale(s_in, plan.weights[wname].scale)
        plan.biases[bname] = BiasQuant(bname, scale) if shift is None else \
            CorrectedBias(bname, scale, np.asarray(shift, np.float32).reshape(g.constant(bname).shape))
        if (over := int(np.count_nonzero(b64 / scale.astype(np.float64) > INT32_MAX))):
            plan.notes.append(f"bias '{bname}' of {head_name}: {over} values exceed int32 at scale s_in·s_w and "
                              f"are saturated")


def weight_scales(w: np.ndarray, axis: int, groups: int = 1) -> np.ndarray:
    """Per-output-channel int8 scales max|W_c| / 127 (float32; an all-zero channel, or one under
    ZERO_WEIGHT, gets 1/127).

    `groups` > 1 (grouped ConvTranspose, W: [C_in, C_out/groups, k…]): channel g·(C_out/groups)+j
    takes the max over W[g·C_in/groups:(g+1)·C_in/groups, j].
    """
    a = np.abs(np.asarray(w, dtype=np.float64))
    if groups > 1:
        cin, cog = a.shape[0], a.shape[1]
        a = a.reshape(groups, cin // groups, cog, -1).max(axis=(1, 3))  # [groups, cog]
        m = a.reshape(-1)
    else:
        m = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)
    m = np.where(m > ZERO_WEIGHT, m, 1.0)
    return (m / 127.0).astype(np.float32)


def bias_scale(s_in: float, s_w: np.ndarray) -> np.ndarray:
    """s_in · s_w per output channel, float32 (the value the DequantizeLinear of the bias holds)."""
    return (np.float64(s_in) * np.asarray(s_w, dtype=np.float64)).astype(np.float32)


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round-half-even(b / scale), saturated to int32."""
    q = np.rint(np.asarray(b, np.float64).reshape(-1) / np.asarray(scale, np.float64))
    return np.clip(q, -INT32_MAX - 1, INT32_MAX).astype(np.int32).reshape(np.shape(b))


def quantize_weight(w: np.ndarray, wq: WeightQuant) -> np.ndarray:
    """round-half-even(W / s_w) per output channel, saturated to ±127, int8."""
    s = weight_scale_array(wq, np.shape(w))
    return np.clip(np.rint(np.asarray(w, np.float64) / s), -127, 127).astype(np.int8)


def weight_scale_array(wq: WeightQuant, shape: tuple[int, ...]) -> np.ndarray:
    """The scale of every weight element, broadcastable to `shape` (float64)."""
    s = np.asarray(wq.scale, np.float32).astype(np.float64)
    if wq.groups > 1:
        cin, cog = shape[0], shape[1]
        per = s.reshape(wq.groups, 1, cog).repeat(cin // wq.groups, axis=1).reshape(cin, cog)
        return per.reshape(cin, cog, *([1] * (len(shape) - 2)))
    view = [1] * len(shape)
    view[wq.axis] = shape[wq.axis]
    return s.reshape(view)


__all__ = ["CONCAT_RANGE_RATIO", "Calibration", "CorrectedBias", "bias_value", "MIN_THRESHOLD", "MissingThresholdError", "NodeInfo",
           "OffsetAct", "QuantOptions", "Sets", "zero_point_of",
           "bias_scale", "make_plan", "plan_tensors", "quantize_bias", "quantize_weight", "weight_scale_array",
           "weight_scales", "width_sets"]
