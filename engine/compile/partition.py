"""Partition: which nodes run on the BPU (integer) and which on the CPU (float), and the BPU subgraphs.

A **subgraph** is a connected set of BPU nodes: two BPU nodes are in the same subgraph when one
reads a tensor the other writes. Every CPU node therefore splits the BPU regions around it
(hb_mapper checker: "each CPU op splits the BPU regions around it into separate subgraphs");
ids are numbered in graph order, ``id(0)``, ``id(1)`` …; CPU nodes show ``--``.

Three sources, one result:
- the optimized float model **with its `QuantPlan`** (the compile stage): ON and the reason come
  from `plan.nodes[n]`, fusion groups stay together;
- a float model **without a plan** (check mode): the planner places it with the same rules and the
  config's `QuantOptions`, thresholds being irrelevant to placement;
- the integer **program** (`.bc`, `.hbm`): integer operators and operators on integer tensors are
  BPU, float operators are CPU, except the float kernels that emulate a BPU node
  (``hbcompile.emulated``); with ``hbcompile.node_map`` every program node is attributed to its
  float node (and to the plan's reason, when a plan is passed too).

`advice_json` writes the reference §12.4 layout (``tensor_names: [{tensor_name, data_type}]``,
``backend``) plus the node, its type and, for CPU nodes, why. Backends are hbdk4's words
(``bpu``, ``external_cpu``) so the display mapping of §12.4 (`display_backend`) reads them back
as BPU / CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from engine.compile.program import (
    EMULATED,
    NODE_MAP,
    PLACEMENT,
    TensorType,
    is_integer_program,
    json_metadata,
    set_metadata,
    tensor_types,
)
from engine.problems import ModelError, error
from engine.quantize.types import QuantPlan

NODE_TABLE_HEADER = ("Node", "ON", "Subgraph", "Type")

# float op (or fusion-group kind) → hb-style name of the BPU op it becomes (reference §9)
HB_TYPES: dict[str, str] = {
    "Conv": "HzSQuantizedConv", "Gemm": "HzSQuantizedConv", "ConvTranspose": "HzSQuantizedConvTranspose",
    "MatMul": "HzSQuantizedMatmul", "MaxPool": "HzQuantizedMaxPool", "AveragePool": "HzQuantizedAveragePool",
    "GlobalAveragePool": "HzQuantizedGlobalAveragePool", "ReduceMean": "HzQuantizedGlobalAveragePool",
    "GlobalMaxPool": "HzQuantizedGlobalMaxPool", "ReduceMax": "HzQuantizedGlobalMaxPool",
    "Add": "HzSElementwiseAdd", "Sub": "HzSElementwiseAdd", "Mul": "HzSQuantizedMul",
    "Resize": "HzQuantizedResizeUpsample", "LeakyRelu": "HzLeakyRelu", "PRelu": "HzPRelu",
    "Softmax": "HzQSoftmax", "Pad": "HzPad", "DepthToSpace": "HzDepthToSpace", "SpaceToDepth": "HzSpaceToDepth",
    "Relu": "HzLut", "Clip": "HzLut",
    **dict.fromkeys(("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Swish", "Gelu", "Mish", "Exp", "Softplus",
                     "Elu"), "HzLut"),
    "conv_act": "HzSQuantizedConv", "conv_add": "HzSQuantizedConv", "activation": "HzLut",
}
# integer-program op → hb-style name (when the program has no node map back to float ops)
PROGRAM_TYPES: dict[str, str] = {
    "QLinearConv": "HzSQuantizedConv", "ConvInteger": "HzSQuantizedConv", "QLinearMatMul": "HzSQuantizedMatmul",
    "MatMulInteger": "HzSQuantizedMatmul", "QuantizeLinear": "HzQuantize", "DequantizeLinear": "HzDequantize",
    "QLinearAdd": "HzSElementwiseAdd", "QLinearMul": "HzSQuantizedMul", "QLinearConcat": "Concat",
    "QLinearAveragePool": "HzQuantizedAveragePool", "QLinearGlobalAveragePool": "HzQuantizedGlobalAveragePool",
    "QLinearSoftmax": "HzQSoftmax", "QLinearLeakyRelu": "HzLeakyRelu", "QLinearSigmoid": "HzLut",
    "Gather": "HzLut", "MaxPool": "HzQuantizedMaxPool",
}
PREPROCESS_TYPE = "HzSQuantizedPreprocess"
PREPROCESS_PREFIX = "HZ_PREPROCESS_FOR_"
CPU_DEQUANTIZE = "Dequantize"


@dataclass(frozen=True)
class Placement:
    """One node: where it runs, its subgraph (None on the CPU), its hb-style type and why on the CPU."""

    node: str
    op_type: str
    on: str  # BPU / CPU
    subgraph: int | None
    type: str
    reason: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_dtypes: tuple[str, ...] = ()  # per output: int8 / int16 / int32 / float32 (as executed)
    owner: str | None = None  # the float node a program node implements (hbcompile.node_map)
    unit: str | None = None  # its fusion group, else `owner`: one layer of the perf estimate

    @property
    def subgraph_label(self) -> str:
        return "--" if self.subgraph is None else f"id({self.subgraph})"


@dataclass(frozen=True)
class Partition:
    nodes: tuple[Placement, ...]
    subgraph_count: int
    source: str  # plan | check | program

    def by_name(self) -> dict[str, Placement]:
        return {p.node: p for p in self.nodes}

    @property
    def cpu_nodes(self) -> list[Placement]:
        return [p for p in self.nodes if p.on == "CPU"]

    @property
    def bpu_nodes(self) -> list[Placement]:
        return [p for p in self.nodes if p.on == "BPU"]

    def subgraph(self, index: int) -> list[Placement]:
        return [p for p in self.nodes if p.subgraph == index]


# ------------------------------------------------------------------------------------------ entry

def partition(model: onnx.ModelProto, plan: QuantPlan | None = None, options=None,
              types: Mapping[str, TensorType] | None = None) -> Partition:
    """The partition of `model` (a float model, with or without its plan, or an integer program).

    `options` (`engine.quantize.planner.QuantOptions`) carries run_on_cpu / run_on_bpu / node_info
    for a float model without a plan. `types`: the program's `tensor_types` when the caller has them
    (they cost an onnxruntime session: 40 ms on PP-OCRv4 det's program).
    """
    program = is_integer_program(model)
    if plan is not None and not program:
        return _from_plan(model, plan, "plan")
    if not program:
        return _from_plan(model, check_plan(model, options), "check")
    return _from_program(model, plan, types)


def check_plan(model: onnx.ModelProto, options=None) -> QuantPlan:
    """The planner's placement of a float model before calibration: every observed tensor gets a
    unit threshold (placement never depends on thresholds)."""
    from engine.quantize.planner import make_plan, plan_tensors

    try:
        return make_plan(model, dict.fromkeys(plan_tensors(model, options), 1.0), options)
    except (ValueError, KeyError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(error("model-partition", f"Cannot place the model's nodes on BPU/CPU: {e}")) from None


# ------------------------------------------------------------------------------------ float + plan

def _from_plan(model: onnx.ModelProto, plan: QuantPlan, source: str) -> Partition:
    kinds = {g.name: g.kind for g in plan.groups}
    rows: list[dict] = []
    for node in model.graph.node:
        np_ = plan.nodes.get(node.name)
        if np_ is None:
            raise ModelError(error("model-partition", f"Node '{node.name}' ({node.op_type}) is not in the "
                                                      "quantization plan: the plan belongs to another model"))
        on = np_.on
        if on == "BPU":
            kind = kinds.get(np_.group or "")
            hb = PREPROCESS_TYPE if node.name.startswith(PREPROCESS_PREFIX) else \
                HB_TYPES.get(kind or "", HB_TYPES.get(node.op_type, node.op_type))
        else:
            hb = node.op_type
        dtype = {"si8": "int8", "si16": "int16", "si32": "int32"}.get(np_.output_dtype, "float32")
        rows.append(dict(node=node.name, op_type=node.op_type, on=on, type=hb,
                         reason=np_.reason if on == "CPU" else "", inputs=tuple(node.input),
                         outputs=tuple(o for o in node.output if o),
                         output_dtypes=tuple(dtype for o in node.output if o), unit=np_.group or node.name))
    return _number(rows, source)


# ------------------------------------------------------------------------------------- program

def placement_table(plan: QuantPlan) -> dict[str, dict]:
    """{float node: {on, reason, op_type, group, kind}}: the plan's placement as the program stores it
    (``hbcompile.placement``), so a `.bc` / `.hbm` can be partitioned without its plan."""
    kinds = {g.name: g.kind for g in plan.groups}
    return {n: {"on": p.on, "reason": p.reason if p.on == "CPU" else "", "op_type": p.op_type,
                "group": p.group, "kind": kinds.get(p.group or "")} for n, p in plan.nodes.items()}


def stamp_placement(program: onnx.ModelProto, plan: QuantPlan) -> None:
    set_metadata(program, PLACEMENT, placement_table(plan))


def _owners(node_map: dict[str, list[str]]) -> dict[str, str]:
    """Program node → the float node it implements: the float node of the same name when there is
    one (the lowering keeps float names), else the first that lists it."""
    owner: dict[str, str] = {}
    for float_node, progs in node_map.items():
        for prog in progs:
            owner.setdefault(prog, float_node)
    for float_node, progs in node_map.items():
        if float_node in progs:
            owner[float_node] = float_node
    return owner


def _from_program(model: onnx.ModelProto, plan: QuantPlan | None,
                  types: Mapping[str, TensorType] | None = None) -> Partition:
    types = tensor_types(model) if types is None else types
    node_map: dict[str, list[str]] = json_metadata(model, NODE_MAP, {}) or {}
    emulated: dict[str, str] = json_metadata(model, EMULATED, {}) or {}
    decided: dict[str, dict] = placement_table(plan) if plan is not None else \
        (json_metadata(model, PLACEMENT, {}) or {})
    owner = _owners(node_map)
    constants = {t.name for t in model.graph.initializer} | \
        {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    made_by: dict[str, str] = {}  # program tensor → the float node whose lowering computes it
    rows: list[dict] = []
    for node in model.graph.node:
        # a node onnxruntime's offline optimization made (HardSwish inlined at O2) has no name: it belongs
        # to the float node whose values it reads
        own = owner.get(node.name) if node.name else _inherited(node, made_by, constants)
        for o in node.output:
            if o and own is not None:
                made_by[o] = own
        d = decided.get(own or "")
        if d is not None:
            on, reason = d["on"], d.get("reason", "") if d["on"] == "CPU" else ""
        else:
            on, reason = _program_place(node, types, own, emulated, constants)
        hb = node.op_type
        if on == "BPU":
            if node.name.startswith(PREPROCESS_PREFIX) or (own or "").startswith(PREPROCESS_PREFIX):
                hb = PREPROCESS_TYPE
            elif d is not None:
                hb = HB_TYPES.get(d.get("kind") or "", HB_TYPES.get(d.get("op_type", ""), d.get("op_type", hb)))
            else:
                hb = PROGRAM_TYPES.get(node.op_type, node.op_type)
        elif node.op_type == "DequantizeLinear":
            hb = CPU_DEQUANTIZE
        outs = tuple(o for o in node.output if o)
        unit = (d.get("group") if d is not None else None) or own
        rows.append(dict(node=node.name, op_type=node.op_type, on=on, type=hb, reason=reason,
                         inputs=tuple(node.input), outputs=outs,
                         output_dtypes=tuple(types[o].dtype if o in types else "unknown" for o in outs),
                         owner=own, unit=unit))
    return _number(rows, "program")


def _inherited(node: onnx.NodeProto, made_by: Mapping[str, str], constants: set[str]) -> str | None:
    """The float node a node without one of its own belongs to: the one whose lowering computes every
    value it reads (an inlined function's pieces read only each other and their function's input)."""
    owners = {made_by.get(i) for i in node.input if i and i not in constants}
    return owners.pop() if len(owners) == 1 else None


def _program_place(node: onnx.NodeProto, types: Mapping[str, TensorType], own: str | None,
                   emulated: dict[str, str], constants: set[str]) -> tuple[str, str]:
    """ON and reason of a program node without a recorded placement; constants do not count."""
    if own is not None and own in emulated:
        return "BPU", ""
    if node.op_type == "QuantizeLinear":
        return "BPU", ""
    if node.op_type == "DequantizeLinear":
        return "CPU", "dequantizes an integer result for a float reader or a model output"
    values = [types.get(t) for t in [*node.input, *node.output] if t and t not in constants]
    outs = [types.get(t) for t in node.output if t]
    if any(v is not None and v.dtype in ("int64", "bool") for v in outs):
        return "CPU", "shape or index arithmetic stays on the CPU"
    if values and all(v is not None and v.is_integer for v in values):
        return "BPU", ""
    if node.op_type in PROGRAM_TYPES and node.op_type != "Gather":
        return "BPU", ""
    return "CPU", f"operator {node.op_type} runs in float (no integer form in the program)"


# --------------------------------------------------------------------------------- numbering

def _number(rows: list[dict], source: str) -> Partition:
    """Connected components of BPU nodes (tensor edges between two BPU nodes), ids in graph order."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {o: i for i, r in enumerate(rows) for o in r["outputs"]}
    for i, r in enumerate(rows):
        if r["on"] != "BPU":
            continue
        for t in r["inputs"]:
            j = producer.get(t)
            if j is not None and rows[j]["on"] == "BPU":
                parent[find(i)] = find(j)
    ids: dict[int, int] = {}
    out = []
    for i, r in enumerate(rows):
        sub = None
        if r["on"] == "BPU":
            sub = ids.setdefault(find(i), len(ids))
        out.append(Placement(subgraph=sub, **r))
    return Partition(tuple(out), len(ids), source)


# ---------------------------------------------------------------------------------- renderings

def node_table(partition: Partition) -> list[tuple[str, str, str, str]]:
    """Rows ``Node | ON | Subgraph | Type`` (hb_mapper checker's table)."""
    return [(p.node, p.on, p.subgraph_label, p.type) for p in partition.nodes]


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """hb's console layout: ``=`` above, ``-`` under the header, left-aligned, space-padded columns."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    total = sum(widths) + 2 * (len(widths) - 1)
    return "\n".join(["=" * total, line(header), "-" * total, *(line(r) for r in rows)])


BACKENDS = {"BPU": "bpu", "CPU": "external_cpu"}


def display_backend(backend: str) -> str:
    """Reference §12.4: Vpu/Spu → BPU, external_cpu → CPU, external_jit → JIT, else upper-cased."""
    return {"vpu": "BPU", "spu": "BPU", "external_cpu": "CPU", "external_jit": "JIT"}.get(
        backend.lower(), backend.upper())


def advice_json(partition: Partition) -> list[dict]:
    """`{prefix}_advice.json`: one entry per node, its output tensors with their data types and its
    backend; CPU entries say why the node is not on the BPU."""
    out = []
    for p in partition.nodes:
        entry = {"node": p.node, "op_type": p.op_type, "type": p.type,
                 "tensor_names": [{"tensor_name": t, "data_type": d}
                                  for t, d in zip(p.outputs, p.output_dtypes or ("float32",) * len(p.outputs))],
                 "backend": BACKENDS[p.on]}
        if p.subgraph is not None:
            entry["subgraph"] = p.subgraph
        if p.on == "CPU":
            entry["reason"] = p.reason or "runs in float on the CPU"
        out.append(entry)
    return out
