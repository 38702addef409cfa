"""One fake-quant model whose every quantization can be switched on and off at run time.

Sensitivity analysis asks "what does the output lose when only node N is quantized?" for every
node, and mixed precision asks "what if N were int16?". Building a calibrated model per question
costs a model build and an onnxruntime session each (≈0.3 s on PP-OCRv4 det, before any run);
here one model answers all of them. Every quantized activation T gets an int8 fake-quant pair
and, optionally, an int16 one, and its readers see

    Where(use16_T, dq16(T), Where(use8_T, dq8(T), T))

where `use8_T` / `use16_T` are scalar bool graph inputs; every quantized weight W likewise
`Where(use_W, dq(W), W)`. Turning switches on and off is then just a different feed.

The quantization is the plan's (`QuantPlan.acts`: shared scales applied, the view of the ptq
model and the `.bc`), the same Q/DQ layout as `engine.quantize.calibrated` (it is a `QdqWriter`),
so with every int8 switch on the outputs equal the calibrated model built from `plan.acts`.
A bias follows its weight's switch: the model's float bias when off, its int32 codes at
s_in · s_w (of the bias-corrected value where the plan says) when on — as the integer program adds it, which is coarse when the
input's scale is large.

Switches are grouped into *rows*, the units of the node table: a node or a fusion group owns its
weights, the constant operands it reads quantized, and the activations it produces; a tensor
quantized where it enters the integer part (a model input, the output of a CPU node) is its own
row, named after the tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.passes.graph import subgraphs
from engine.quantize.calibrated import QdqWriter, _subgraph_rename
from engine.quantize.planner import bias_value, quantize_bias
from engine.quantize.types import ActQuant, QuantPlan, WeightQuant

Kind = Literal["activation", "weight"]
INPUT_ROW = "input"


@dataclass(frozen=True)
class Switch:
    """One switchable quantization: an activation tensor (8 and maybe 16 bits) or a weight."""

    kind: Kind
    target: str  # tensor or weight initializer name
    row: str  # the table row that owns it
    input8: str  # bool graph input: use the int8 (weight: int8) value
    input16: str | None = None  # bool graph input: use the int16 value (activations only)


@dataclass(frozen=True)
class Row:
    """A unit of the node table: a node, a fusion group, or a tensor quantized at an entry."""

    name: str
    op_type: str
    nodes: tuple[str, ...]
    tensor: str  # the float tensor the row's output is (for per-node cosines)
    switches: tuple[Switch, ...] = ()

    def of_kind(self, kind: Kind) -> tuple[Switch, ...]:
        return tuple(s for s in self.switches if s.kind == kind)


@dataclass
class Setting:
    """Which switches are on: activation tensors at 8 or 16 bits, weights on or off."""

    acts: dict[str, int] = field(default_factory=dict)  # tensor → 8 / 16 (absent: float)
    weights: set[str] = field(default_factory=set)

    def copy(self) -> Setting:
        return Setting(dict(self.acts), set(self.weights))


@dataclass
class SwitchableModel:
    model: onnx.ModelProto
    switches: list[Switch]
    rows: list[Row]  # graph order
    outputs: list[str]
    mapping: dict[str, str]  # float tensor → the tensor its readers see
    _session: object | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)
    _gated: dict[str, str] = field(default_factory=dict, repr=False)  # switch input → its constants' digest
    _by_target: dict[tuple[str, str], list[Switch]] | None = field(default=None, repr=False)

    @property
    def acts(self) -> dict[str, Switch]:
        return {s.target: s for s in self.switches if s.kind == "activation"}

    @property
    def weights(self) -> dict[str, Switch]:
        return {s.target: s for s in self.switches if s.kind == "weight"}

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def all_on(self, bits: int = 8) -> Setting:
        return Setting({s.target: bits for s in self.switches if s.kind == "activation"},
                       {s.target for s in self.switches if s.kind == "weight"})

    def rows_on(self, rows: Iterable[Row], kinds: Sequence[Kind] = ("activation", "weight")) -> Setting:
        setting = Setting()
        for row in rows:
            for s in row.switches:
                if s.kind not in kinds:
                    continue
                if s.kind == "activation":
                    setting.acts[s.target] = 8
                else:
                    setting.weights.add(s.target)
        return setting

    def switched_on(self, setting: Setting) -> list[tuple[str, bool]]:
        """(switch input, on) of every switch input under `setting`, in switch order."""
        return [pair for s in self.switches for pair in _inputs(s, setting)]

    def feeds(self, setting: Setting) -> dict[str, np.ndarray]:
        return {name: np.array(on) for name, on in self.switched_on(setting)}

    def digest(self) -> str:
        """sha256 of the model's bytes except the values of the constants only a switch's quantized side
        reads (`gated_constants`), computed once: with `setting_key`, what a run's result depends on
        besides the sample (`engine.accuracy.runs`). The model is not changed after it is built."""
        if self._digest is None:
            self._digest, self._gated = gated_digests(self.model, {s.input8 for s in self.switches}
                                                      | {s.input16 for s in self.switches if s.input16})
        return self._digest

    def setting_key(self, setting: Setting) -> str:
        """The switch feeds of `setting`, as text: the name of each switch input that is on, sorted, with
        the digest of the constants it gates (its scales and zero points, its
        quantized weight, its bias codes). A switch that is off passes the float value through: its
        constants are not read, so a threshold that moved elsewhere leaves this run's key as it was."""
        self.digest()  # every switch input is in it: the key lists the ones on
        return ";".join(sorted(f"{k}:{self._gated.get(k, '')}" for k in self.inputs_on(setting)))

    def inputs_on(self, setting: Setting) -> list[str]:
        """The switch inputs `setting` turns on (those `feeds` sets True), found from the setting's own
        tensors and weights: a ranking question turns on one row of hundreds of switches."""
        if self._by_target is None:
            self._by_target = {}
            for s in self.switches:
                self._by_target.setdefault((s.kind, s.target), []).append(s)
        chosen = [*(("activation", t) for t in setting.acts), *(("weight", t) for t in setting.weights)]
        return [name for key in chosen for s in self._by_target.get(key, ()) for name, on in _inputs(s, setting) if on]

    def session(self, threads: int | None = None):
        if self._session is None:
            self._session = fake_quant_session(self.model, threads)
        return self._session

    def run(self, sample: Mapping[str, np.ndarray], setting: Setting, tensors: Sequence[str] = ()
            ) -> dict[str, np.ndarray]:
        """Outputs (and the named float tensors, as their readers see them) under `setting`."""
        session = self.session()
        inputs = {i.name for i in self.model.graph.input}
        names = [*self.outputs, *(self.mapping.get(t, t) for t in tensors if self.mapping.get(t, t) not in inputs)]
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in sample.items() if k in wanted}
        feeds.update(self.feeds(setting))
        values = session.run(list(dict.fromkeys(names)), feeds)
        got = dict(zip(dict.fromkeys(names), values, strict=True))
        out = {o: got[o] for o in self.outputs}
        for t in tensors:
            out[t] = got[self.mapping.get(t, t)] if self.mapping.get(t, t) in got else sample[t]
        return out


def _inputs(s: Switch, setting: Setting) -> list[tuple[str, bool]]:
    """(input, on) of switch `s`'s inputs under `setting`: an activation's int8 input is on at 8 bits (and at
    16 when it has no int16 input), its int16 input at 16; a weight's when the setting names its tensor."""
    if s.kind != "activation":
        return [(s.input8, s.target in setting.weights)]
    bits = setting.acts.get(s.target, 0)
    pairs = [(s.input8, bits == 8 or (bits == 16 and s.input16 is None))]
    return pairs + [(s.input16, bits == 16)] if s.input16 is not None else pairs


def gated_constants(model: onnx.ModelProto, switches: Collection[str]) -> dict[str, set[str]]:
    """Initializer → the switch inputs that gate it: the constants read only on the quantized side of a
    switch (inside the then-branch of an `If` on it, or as the second input of a `Where` on it). A
    constant also read anywhere else (a node that always runs, the other side of a switch, a graph
    output) is not gated: its value matters to every run."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    gate: dict[str, set[str] | None] = {}  # None: read ungated

    def read(name: str, by: str | None) -> None:
        if name not in inits or (name in gate and gate[name] is None):
            return
        if by is None:
            gate[name] = None
        else:
            gate.setdefault(name, set()).add(by)

    def names_in(nodes: Iterable[onnx.NodeProto]) -> set[str]:
        """Every name the nodes read, their subgraphs' included."""
        out: set[str] = set()
        for n in nodes:
            out.update(n.input)
            for sub in subgraphs(n):
                out |= names_in(sub.node)
        return out

    for n in g.node:
        switch = n.input[0] if n.input and n.input[0] in switches else None
        if switch is not None and n.op_type == "If":
            for a in n.attribute:
                for x in names_in(a.g.node):
                    read(x, switch if a.name == "then_branch" else None)
        elif switch is not None and n.op_type == "Where" and len(n.input) == 3:
            read(n.input[1], switch)
            read(n.input[2], None)
        else:
            for x in names_in([n]):
                read(x, None)
    for o in g.output:
        read(o.name, None)
    return {name: by for name, by in gate.items() if by}


def _drop_doc_strings(nodes: Iterable[onnx.NodeProto]) -> None:
    for n in nodes:
        n.ClearField("doc_string")
        for sub in subgraphs(n):
            _drop_doc_strings(sub.node)


def gated_digests(model: onnx.ModelProto, switches: Collection[str]) -> tuple[str, dict[str, str]]:
    """(sha256 of `model` with the values of its gated constants left out — their names, types and shapes
    kept —, sha256 of each switch input's gated constants). Together with which switches are on, the two
    fix a run's result: a switch that is off reads none of its constants."""
    gated = gated_constants(model, switches)
    h = hashlib.sha256()
    values: dict[str, bytes] = {}
    for t in model.graph.initializer:
        if t.name in gated:
            values[t.name] = t.SerializeToString(deterministic=True)
            h.update(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims).SerializeToString())
        else:
            h.update(t.SerializeToString(deterministic=True))
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    del rest.graph.initializer[:]
    _drop_doc_strings(rest.graph.node)  # not computation: a Q/DQ pair's tells its threshold
    h.update(b"\0model\0" + rest.SerializeToString(deterministic=True))
    by_switch: dict[str, list[str]] = {}
    for name, owners in gated.items():
        for switch in owners:
            by_switch.setdefault(switch, []).append(name)
    digests = {}
    for switch, names in by_switch.items():
        d = hashlib.sha256()
        for name in sorted(names):
            d.update(name.encode() + b"\0" + values[name])
        digests[switch] = d.hexdigest()
    return h.hexdigest(), digests


def fake_quant_session(model: onnx.ModelProto, threads: int | None = None):
    """An onnxruntime session that computes a Q/DQ model as written.

    Basic graph optimizations only (the extended level fuses Q/DQ pairs into integer kernels), and
    without onnxruntime's WeightBiasQuantization, which at the *basic* level quantizes the float
    weight and bias of a Conv / Gemm whose input comes from a DequantizeLinear — i.e. it silently
    quantizes every float (CPU) convolution next to the integer part (measured: a CPU conv whose
    weights int8 cannot hold, output cosine 0.906 with it, 0.9997 without). No spinning thread
    pool (`engine.accuracy.sessions`).
    """
    from engine.accuracy.sessions import quiet_session

    return quiet_session(model, threads)


class _SwitchWriter(QdqWriter):
    """A QdqWriter that puts a run-time switch between each float value and its fake-quant."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, int16: bool | Collection[str],
                 wide: Mapping[str, float]):
        super().__init__(model, plan)
        self.int16 = int16
        self.wide = wide
        self.switches: list[Switch] = []
        self.switch_inputs: list[onnx.ValueInfoProto] = []
        self.row_of: dict[str, str] = {}  # target → row, filled by the caller before writing
        self.weight_values: list[str] = []  # fake-quantized weights, folded to constants at the end

    def _switch_input(self, base: str) -> str:
        name = self.name(f"{base}_switch")
        self.switch_inputs.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
        return name

    def fake_quant(self, act: ActQuant, readers, whole: bool) -> str:
        readers = list(readers)
        t = act.tensor
        dq8 = super().fake_quant(act, readers, whole)
        anchor_nodes = self.after[self._anchor(t)]  # ends with the pair just added: Q, DQ
        source = anchor_nodes[-2].input[0]  # the QuantizeLinear's input: the float value
        if dq8 == t:  # a model output: the DequantizeLinear wrote T itself; the switch writes it now
            fresh = self.name(f"{t}_fake_quantized")
            anchor_nodes[-1].output[0] = fresh
            dq8, out = fresh, t
        else:
            out = self.name(f"{t}_switched")
            for n in readers:
                _subgraph_rename(n, dq8, out)
        use8 = self._switch_input(f"{t}_int8")
        chosen = self.name(f"{t}_int8_or_float")
        two = self.int16 is True or (not isinstance(self.int16, bool) and t in self.int16)
        q8, dq8_node = anchor_nodes.pop(-2), anchor_nodes.pop(-1)  # they move into the switch's branch
        nodes = [self._branch(use8, [q8, dq8_node], dq8, source, chosen if two else out, f"{t}_int8_switch")]
        use16 = None
        if two:
            wide = ActQuant(t, self.wide.get(t, act.threshold), 16, act.axis, act.method)
            s, zp = self._scale_zp(f"{t}_int16", wide.scale, 16)
            domain = self.domain(16)
            q16, dq16 = self.name(f"{t}_int16_quantized"), self.name(f"{t}_int16_output")
            use16 = self._switch_input(f"{t}_int16")
            pair = [helper.make_node("QuantizeLinear", [source, s, zp], [q16], name=self.name(f"{t}_int16"),
                                     domain=domain, **self._axis(wide.axis, wide.scale)),
                    helper.make_node("DequantizeLinear", [q16, s, zp], [dq16], name=self.name(f"{t}_int16_dq"),
                                     domain=domain, **self._axis(wide.axis, wide.scale))]
            nodes.append(self._branch(use16, pair, dq16, chosen, out, f"{t}_int16_switch"))
        anchor_nodes.extend(nodes)
        self.mapping[t] = out
        self.switches.append(Switch("activation", t, self.row_of.get(t, t), use8, use16))
        return out

    def _branch(self, use: str, pair: list[onnx.NodeProto], quantized: str, source: str, out: str,
                base: str) -> onnx.NodeProto:
        """`out` = If(use, the fake-quant `pair` ending in `quantized`, Identity(source)).

        An If, not a Where: a Where computes both of its inputs on every run, so every fake-quant
        pair of the model ran whether its switch was on or not (PP-OCRv4 det: a run with one row
        quantized cost as much CPU as one with all of them); an If runs only its taken branch, so
        "only this row quantized" costs about a float pass."""
        keep = self.name(f"{base}_float")
        then = helper.make_graph(pair, self.name(f"{base}_on"), [],
                                 [helper.make_tensor_value_info(quantized, TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Identity", [source], [keep], name=self.name(f"{base}_off"))],
                                  self.name(f"{base}_off_branch"), [],
                                  [helper.make_tensor_value_info(keep, TensorProto.FLOAT, None)])
        return helper.make_node("If", [use], [out], name=self.name(base), then_branch=then, else_branch=other)

    def switched_bias(self, tensor: str, value: np.ndarray, scale: np.ndarray, use: str,
                      floating_value: np.ndarray) -> str:
        """The bias as the integer op adds it — int32 codes at s_in · s_w of `value` (bias-corrected if
        the plan says so), which is coarse when the input's scale is large — when its weight's switch
        is on, else `floating_value` (the model's own bias: a correction undoes the int8 weight's
        error, so with the float weight it would be an error of its own)."""
        codes = quantize_bias(value, scale)
        step = np.asarray(scale, np.float64).reshape(np.shape(value)) if np.size(scale) == np.size(value) else scale
        quantized = self.const(f"{tensor}_int32_value", (codes.astype(np.float64) * step).astype(np.float32))
        floating = self.const(f"{tensor}_float_value",
                              np.asarray(floating_value, np.float32))
        out = self.name(f"{tensor}_switched")
        self._add(-1, helper.make_node("Where", [use, quantized, floating], [out], name=self.name(f"{tensor}_switch")))
        for n in self.readers.get(tensor, []):
            if (p := self.plan.nodes.get(n.name)) is not None and p.bias == tensor:
                _subgraph_rename(n, tensor, out)
        self.replaced.add(tensor)
        return out

    def weight(self, wq: WeightQuant, integer: bool) -> str | None:
        readers = [n for n in self.readers.get(wq.tensor, [])
                   if (p := self.plan.nodes.get(n.name)) is not None and p.weight == wq.tensor]
        out = super().weight(wq, integer=False)
        if out is None:
            return None
        use = self._switch_input(f"{wq.tensor}_weight")
        switched = self.name(f"{wq.tensor}_switched")
        self._add(-1, helper.make_node("Where", [use, out, wq.tensor], [switched],
                                       name=self.name(f"{wq.tensor}_weight_switch")))
        for n in readers:
            _subgraph_rename(n, out, switched)
        self.switches.append(Switch("weight", wq.tensor, self.row_of.get(wq.tensor, wq.tensor), use))
        self.weight_values.append(out)
        return switched


def table_rows(model: onnx.ModelProto, plan: QuantPlan) -> tuple[list[tuple[str, str, tuple[str, ...], str]],
                                                               dict[str, str]]:
    """Rows in graph order and the row owning each quantized tensor / weight."""
    groups = {g.name: g for g in plan.groups}
    producer = {o: n for n in model.graph.node for o in n.output if o}
    rows: list[tuple[str, str, tuple[str, ...], str]] = []
    row_of_node: dict[str, str] = {}
    seen: set[str] = set()
    for node in model.graph.node:
        p = plan.nodes.get(node.name)
        group = groups.get(p.group) if p is not None and p.group else None
        name, op_type, members = ((group.name, group.type, group.nodes) if group is not None
                                  else (node.name, node.op_type, (node.name,)))
        row_of_node[node.name] = name
        if name in seen:
            continue
        seen.add(name)
        last = next(n for n in model.graph.node if n.name == members[-1])
        rows.append((name, op_type, members, next((o for o in last.output if o), "")))
    owner: dict[str, str] = {}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node.name)
    entry_rows: list[tuple[str, str, tuple[str, ...], str]] = []
    for t in plan.acts:
        made = producer.get(t)
        if made is not None and made.op_type != "Constant" and plan.nodes.get(made.name) is not None \
                and plan.nodes[made.name].on == "BPU":
            owner[t] = row_of_node[made.name]
        elif made is None and t not in {i.name for i in model.graph.input}:  # a constant operand
            owner[t] = next((row_of_node[r] for r in readers.get(t, []) if r in row_of_node), t)
        elif made is not None and made.op_type == "Constant":
            owner[t] = next((row_of_node[r] for r in readers.get(t, []) if r in row_of_node), t)
        else:
            owner[t] = t
            entry_rows.append((t, INPUT_ROW, (), t))
    for w in plan.weights:
        owner[w] = next((row_of_node[r] for r in readers.get(w, [])
                         if r in row_of_node and plan.nodes[r].weight == w), w)
    return entry_rows + rows, owner


def fold_constants(model: onnx.ModelProto, names: Sequence[str]) -> int:
    """Compute `names` (tensors made from initializers only, e.g. fake-quantized weights) once with
    onnxruntime and store them as initializers, dropping the nodes that made them (in place).

    onnxruntime keeps Q/DQ pairs on constants as written at the basic level, so without this every
    run re-quantized every weight: on PP-OCRv4 det at 320×320 that was 20 of a run's 55 CPU ms.
    Folding with onnxruntime itself keeps the values bit-identical to what the pairs computed.
    Returns how many tensors were folded (0 when one of them depends on a graph input)."""
    from engine.accuracy.sessions import quiet_session

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    needed: set[int] = set()
    stack = [n for n in names if n not in inits]
    while stack:
        t = stack.pop()
        if t in inits or not t:
            continue
        if t not in producer:
            return 0  # made from a graph input: not a constant
        i = producer[t]
        if i not in needed:
            needed.add(i)
            stack.extend(g.node[i].input)
    wanted = [n for n in dict.fromkeys(names) if n not in inits]
    if not wanted:
        return 0
    order = sorted(needed)
    used = {x for i in order for x in g.node[i].input if x in inits}
    sub = helper.make_model(helper.make_graph([g.node[i] for i in order], "fold", [],
                                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in wanted],
                                              [inits[n] for n in sorted(used)]),
                            opset_imports=list(model.opset_import), ir_version=model.ir_version)
    values = quiet_session(sub, 1).run(wanted, {})
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(g.node):
        for x in n.input:
            readers.setdefault(x, set()).add(i)
    outputs = {o.name for o in g.output}
    # a node goes when everything it makes is folded or read only by nodes that go
    gone = set(order)
    changed = True
    while changed:
        changed = False
        for i in sorted(gone):
            if any(o not in wanted and (o in outputs or readers.get(o, set()) - gone) for o in g.node[i].output if o):
                gone.discard(i)
                changed = True
    for i in sorted(gone, reverse=True):
        del g.node[i]
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), n) for n, v in zip(wanted, values, strict=True))
    still = {x for n in g.node for x in n.input} | outputs
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name in used and g.initializer[i].name not in still:
            del g.initializer[i]
    return len(wanted)


def build_switchable(model: onnx.ModelProto, plan: QuantPlan, int16: bool | Collection[str] = False,
                     wide: Mapping[str, float] | None = None, expose: Sequence[str] = (), weights: bool = True
                     ) -> SwitchableModel:
    """The switchable fake-quant model of `model` (the optimized float model) under `plan`.

    `int16` adds the 16-bit alternative of every activation (or of the tensors it lists: each
    alternative costs a Q/DQ pair per run whether used or not), at the threshold `wide` gives for it
    (mixed precision uses the tensor's max |x|: clipping buys nothing at 16 bits), else the plan's.
    `expose`: float tensors `run` may return, as their readers see them (every row's tensor is).
    `weights`: False keeps every weight float and constant, with no weight switches: a weight that is
    a run-time value (a switch's output) loses onnxruntime's prepacked convolution kernels, which
    cost 25 of a run's 60 CPU ms on PP-OCRv4 det at 320×320 — the activation-only questions of
    the sensitivity analysis ask them of this model.
    """
    writer = _SwitchWriter(model, plan, int16, wide or {})
    row_specs, owner = table_rows(model, plan)
    writer.row_of = owner
    writer.activations(plan.acts)
    if weights:
        for wq in plan.weights.values():
            writer.weight(wq, integer=False)
    weight_switch = {s.target: s.input8 for s in writer.switches if s.kind == "weight"}
    for bq in plan.biases.values():
        value = writer.constant(bq.tensor)
        owner = next((p.weight for p in plan.nodes.values() if p.bias == bq.tensor), None)
        # a correction belongs to the int8 weight: with its weight float (switch off, or `weights`
        # False) the bias is the model's own — corrected, the "float" baseline of every sensitivity
        # question carried every layer's correction as an error (mixed precision ranked on noise)
        if value is not None and owner in weight_switch:
            writer.switched_bias(bq.tensor, bias_value(value, bq), bq.scale, weight_switch[owner], value)
    out = writer.finish("switchable")
    fold_constants(out, writer.weight_values)
    out.graph.input.extend(writer.switch_inputs)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    wanted = [*expose, *(tensor for *_, tensor in row_specs if tensor)]
    for t in dict.fromkeys(writer.mapping.get(t, t) for t in wanted):
        if t not in present:
            out.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    by_row: dict[str, list[Switch]] = {}
    for s in writer.switches:
        by_row.setdefault(s.row, []).append(s)
    rows = [Row(name, op_type, members, tensor, tuple(by_row.get(name, ()))) for name, op_type, members, tensor
            in row_specs]
    return SwitchableModel(out, writer.switches, rows, [o.name for o in model.graph.output], dict(writer.mapping))


__all__ = ["INPUT_ROW", "Row", "Setting", "Switch", "SwitchableModel", "build_switchable", "fake_quant_session",
           "gated_constants", "gated_digests", "table_rows"]
