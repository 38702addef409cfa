"""Static performance of the integer program on a march (`{prefix}.json`), and its latency measured here.

The model (every constant is in `engine.compile.march` or below, with its source):

- **Layers.** The BPU nodes of the program, grouped by the float node they implement
  (``hbcompile.node_map``; one program node per layer otherwise). CPU nodes are listed apart and
  not estimated (hb_perf does the same).
- **Compute.** Conv / ConvTranspose / MatMul / Gemm: 2 ops per MAC, MACs from the weight and output
  shapes; channels per group and output channels are rounded up to the BPU's channel block
  (`CHANNEL_ALIGN`, an assumption) — the "ideal" time uses the exact MACs, the estimate the aligned
  ones, and `advice` reports layers where the two drift apart. Pools: one op per window element;
  everything else (lookup tables, elementwise, data movement): one op per output element.
- **Data.** Weights, biases and tables are loaded from DDR once per frame. Model inputs are loaded
  from DDR; model outputs and tensors exchanged with CPU nodes go through DDR. Every other
  activation stays **on chip** if the plan has room for it, else it is stored to and re-loaded from
  DDR (once per reader), at its executed bit width.
- **The plan space.** A plan is an on-chip budget for resident activations, a fraction b of the
  march's on-chip memory (¼, ½, ¾ or all of it), and whether a tensor that does not fit is **tiled
  by rows** and kept on chip, its producer recomputing the consumer's halo rows (kernel − 1) for
  every tile, instead of being spilled to DDR. The memory not given to activations holds double
  buffers that overlap DMA with compute: a layer's time is max(compute, data) + (1 − o)·min(compute,
  data) with overlap o = (1 − b) / ¾ (the roofline max() at b = ¼, fully serialized at b = 1).
- **compile_mode is the objective** the plan is chosen by, among the 8 plans: latency → the lowest
  latency (ties: fewer DDR bytes); bandwidth → the fewest DDR bytes (ties: lower latency); balance →
  the lowest f·L/L_min + (1 − f)·D/D_min with f = balance_factor / 100. So bandwidth mode never moves
  more DDR bytes than latency mode, and latency mode is never slower.
- **Latency** = the sum of BPU layer times + `FC_OVERHEAD_S` per BPU function call (one per subgraph,
  more when `max_time_per_fc` cuts a subgraph); FPS = 1 / latency.
- **DDR access data** (reference §12.8 keys, bytes): input / output memory (model I/O tensors),
  static memory (constants), intermediate memory (peak of activations resident in DDR at once),
  temporary memory (peak of tensors exchanged with CPU nodes), dynamic memory (input + output +
  intermediate + temporary), min memory requirement (static + dynamic).

`measure_latency` runs the `.hbm`'s program in onnxruntime on this CPU (median of N runs, `jobs`
threads) so the report shows a real number beside the estimate — for a different machine. It
costs what the model costs: 3 warmups + 20 runs of PP-OCRv4 det's program (0.25 s a run on the
loaded machine of the first measurement) were 6 s of every compile. It now stops after `min_runs` (3) once `budget_s` (0.1 s) is spent: a slow
program is measured 3 times after one warmup run, a fast one up to `runs` times. Measured on
PP-OCRv4 det's O2 `.hbm` program (2 threads, interleaved, three repeats): the old 20 runs after 3
warmups gave medians of 34.9–35.5 ms for 1.7–2.0 CPU s, the 8 runs of a 0.25 s budget after 1 warmup
34.6–34.9 ms for 0.7 CPU s (earlier, on the slower `.bc`: 20-run medians 199–241 ms, 3-run
medians 202–249 ms — the spread of the 20-run median is as large as the difference). The budget went
from 0.25 to 0.1 s (session 6, det's O1 and O2 programs, 2 threads, 10 interleaved rounds on the shared
machine, load ~3): 4–6 runs gave medians of 51.7–81.4 ms (O1, median of the rounds 53.6) and 45.0–58.2 ms
(O2, 50.0), 3 runs 50.8–79.7 ms (54.2) and 46.2–52.1 ms (50.3) — the load moves the number far more
than the runs it is the median of — for 0.26 instead of 0.38 CPU s (session included). `LatencyMemo`
keeps each measurement by the program's structure (`program_structure`: operators, wiring, constant
kinds) and the measuring conditions: an edit of compile_mode, balance_factor, advice or debug builds
the same program and measures nothing, nor does new calibration (other values) or an optimize_level
whose program differs in constant sharing only (digits' O0 and O1).

A warm engine estimates the same program again on every compiler_parameters edit: the estimate's
options-independent part (types, partition, layers, the plans' view of the graph, and the 8
candidate plans themselves, which depend on the on-chip budget only) is kept in this process by the
program's sha256 (`estimate(..., digest=)`), so an edit re-times the candidates and chooses again.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from engine.compile.march import MarchProfile, profile
from engine.compile.params import CompileOptions
from engine.compile.partition import Partition, partition
from engine.compile.program import TensorType, tensor_types
from engine.pipeline.recent import Recent

CHANNEL_ALIGN = 8  # assumption: the BPU computes in blocks of 8 channels (hb's advice asks for multiples of 4 & 8)
FC_OVERHEAD_S = 5e-6  # assumption: cost of one BPU function call (launch + sync)
BUDGETS = (0.25, 0.5, 0.75, 1.0)  # on-chip shares for resident activations a plan may use
# of measure_latency's method (warmup, budget, minimum runs) and LatencyMemo's key (4: by structure; 5: by operators
# and wiring, constants by kind: names and sharing left out; 6: budget 0.25 → 0.1 s)
MEASURE_VERSION = 6

# weight input index per op: (index, kind)
_WEIGHTED = {"QLinearConv": 3, "ConvInteger": 1, "Conv": 1, "ConvTranspose": 1, "QLinearMatMul": 3,
             "MatMulInteger": 1, "MatMul": 1, "Gemm": 1}
_POOLS = {"QLinearAveragePool", "AveragePool", "MaxPool", "LpPool"}
_GLOBAL_POOLS = {"QLinearGlobalAveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}


@dataclass
class Layer:
    name: str
    type: str
    subgraph: int | None
    nodes: list[str]
    macs: int = 0
    ideal_ops: float = 0.0  # exact work
    ops: float = 0.0  # work at the BPU's channel alignment
    weight_bytes: int = 0
    inputs: list[str] = field(default_factory=list)  # activations read from outside the layer
    outputs: list[str] = field(default_factory=list)  # activations read outside the layer / model outputs
    kernel_rows: int = 1  # the largest kernel height among its nodes (halo for a tiled input)
    position: int = 0  # index of its last node in the program
    # the plan's answers
    loaded: int = 0
    stored: int = 0
    recompute: float = 1.0
    compute_s: float = 0.0
    data_s: float = 0.0
    time_s: float = 0.0
    ideal_s: float = 0.0
    onchip_outputs: list[str] = field(default_factory=list)
    tiled_outputs: list[str] = field(default_factory=list)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.data_s else "memory"


@dataclass
class PerfEstimate:
    name: str
    march: MarchProfile
    options: CompileOptions
    layers: list[Layer]
    cpu_nodes: list[dict[str, str]]
    subgraphs: list[dict[str, Any]]
    latency_s: float
    function_calls: int
    loaded: int
    stored: int
    memory: dict[str, int]
    budget: int
    notes: list[str] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)  # the chosen candidate
    candidates: list[dict[str, Any]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def ddr_bytes(self) -> int:
        return self.loaded + self.stored

    @property
    def fps(self) -> float:
        return 1.0 / self.latency_s if self.latency_s > 0 else 0.0

    @property
    def ops(self) -> float:
        return sum(layer.ops * layer.recompute for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


# ------------------------------------------------------------------------------------- work

def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _align(c: int) -> int:
    return int(math.ceil(c / CHANNEL_ALIGN) * CHANNEL_ALIGN) if c > 0 else c


def node_work(node: onnx.NodeProto, types: Mapping[str, TensorType]) -> tuple[int, float, float]:
    """(MACs, exact ops, channel-aligned ops) of one program node; 0 where shapes are unknown."""
    out = types.get(node.output[0]) if node.output else None
    out_elems = (out.elements or 0) if out is not None else 0
    op = node.op_type
    if op in _WEIGHTED and len(node.input) > _WEIGHTED[op]:
        w = types.get(node.input[_WEIGHTED[op]])
        x = types.get(node.input[0])
        if w is None or not w.static or out is None or not out.static:
            return 0, float(out_elems), float(out_elems)
        ws = list(w.shape)  # type: ignore[arg-type]
        if op == "ConvTranspose":
            if x is None or not x.static:
                return 0, float(out_elems), float(out_elems)
            macs = (x.elements or 0) * math.prod(ws[1:])
            group = int(_attr(node, "group", 1))
            cin, cout_g = ws[0], ws[1]
            factor = (_align(cin // group) * _align(cout_g)) / max(1, (cin // group) * cout_g)
            return macs, 2.0 * macs, 2.0 * macs * factor
        if op in ("Conv", "QLinearConv", "ConvInteger") and len(ws) >= 3:
            cout, cin_g = ws[0], ws[1]
            macs = out_elems * math.prod(ws[1:])
            factor = (_align(cout) * _align(cin_g)) / max(1, cout * cin_g)
            return macs, 2.0 * macs, 2.0 * macs * factor
        if len(ws) == 2:  # MatMul / Gemm: K × N
            trans_b = op == "Gemm" and int(_attr(node, "transB", 0))
            k, n = (ws[1], ws[0]) if trans_b else (ws[0], ws[1])
            macs = out_elems * k
            factor = (_align(k) * _align(n)) / max(1, k * n)
            return macs, 2.0 * macs, 2.0 * macs * factor
        return 0, float(out_elems), float(out_elems)
    if op in _POOLS:
        window = math.prod(_attr(node, "kernel_shape", [1]) or [1])
        return 0, float(out_elems * window), float(out_elems * window)
    if op in _GLOBAL_POOLS:
        x = types.get(node.input[0])
        n = (x.elements or 0) if x is not None else out_elems
        return 0, float(n), float(n)
    return 0, float(out_elems), float(out_elems)


def _kernel_rows(node: onnx.NodeProto, types: Mapping[str, TensorType]) -> int:
    kernel = _attr(node, "kernel_shape")
    if kernel:
        return int(kernel[0])
    if node.op_type in _WEIGHTED and len(node.input) > _WEIGHTED[node.op_type]:
        w = types.get(node.input[_WEIGHTED[node.op_type]])
        if w is not None and w.static and len(w.shape) >= 3:  # type: ignore[arg-type]
            return int(w.shape[2])  # type: ignore[index]
    return 1


# ------------------------------------------------------------------------------------- layers

def _layers(program: onnx.ModelProto, part: Partition, types: Mapping[str, TensorType]) -> list[Layer]:
    g = program.graph
    constants = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    placed = part.by_name()
    index = {n.name: k for k, n in enumerate(g.node)}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        p = placed[node.name]
        if p.on != "BPU" or node.op_type == "Constant":
            continue
        groups.setdefault(p.unit or p.owner or node.name, []).append(node)
    readers: dict[str, set[str]] = {}
    for node in g.node:
        for i in node.input:
            readers.setdefault(i, set()).add(node.name)
    outputs = {o.name for o in g.output}
    layers = []
    for name, nodes in groups.items():
        names = {n.name for n in nodes}
        produced = dict.fromkeys(o for n in nodes for o in n.output if o)  # in node order: the same JSON every process
        consumed = list(dict.fromkeys(i for n in nodes for i in n.input if i))
        layer = Layer(name, placed[nodes[0].name].type, placed[nodes[0].name].subgraph, [n.name for n in nodes])
        for n in nodes:
            macs, ideal, aligned = node_work(n, types)
            layer.macs += macs
            layer.ideal_ops += ideal
            layer.ops += aligned
            layer.kernel_rows = max(layer.kernel_rows, _kernel_rows(n, types))
        layer.weight_bytes = sum((types[t].nbytes or 0) for t in consumed if t in constants and t in types)
        layer.inputs = [t for t in consumed if t not in produced and t not in constants]
        layer.outputs = [t for t in produced if t in outputs or readers.get(t, set()) - names]
        layer.position = max(index[n] for n in names)
        layers.append(layer)
    layers.sort(key=lambda lay: lay.position)
    return layers


# --------------------------------------------------------------------------------------- plan

def overlap_of(share: float) -> float:
    """Share of data movement hidden under compute when `share` of on-chip memory holds activations."""
    return min(1.0, max(0.0, (1.0 - share) / (1.0 - BUDGETS[0])))


@dataclass
class _Graph:
    """What every plan reads of the program, taken once per estimate (8 candidate plans, then the
    chosen one again): which tensors are model I/O or touch a CPU node, each tensor's last reader,
    producing layer, halo rows, bytes and height."""

    model_io: set[str]
    cpu_touch: set[str]
    last_use: dict[str, int]
    layer_of: dict[str, Layer]
    consumers_rows: dict[str, int]
    size: dict[str, int]
    height: dict[str, int]  # rows of a 4-D activation (NCHW's H), 0 when not known
    fixed_memory: dict[str, int]  # input / output / static memory: the same under every plan


def _graph(program: onnx.ModelProto, part: Partition, layers: list[Layer], types: Mapping[str, TensorType]) -> _Graph:
    g = program.graph
    model_io = {i.name for i in g.input} | {o.name for o in g.output}
    cpu_touch = {t for p in part.cpu_nodes for t in (*p.inputs, *p.outputs) if t}
    index = {n.name: k for k, n in enumerate(g.node)}
    last_use: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            if i:
                last_use[i] = max(last_use.get(i, -1), index[node.name])
    for o in g.output:
        last_use[o.name] = len(g.node)
    layer_of = {t: lay for lay in layers for t in lay.outputs}
    consumers_rows: dict[str, int] = {}
    for lay in layers:
        for t in lay.inputs:
            consumers_rows[t] = max(consumers_rows.get(t, 1), lay.kernel_rows)
    size = {t: (types[t].nbytes or 0) if t in types else 0 for t in set(layer_of) | {i for lay in layers
                                                                                      for i in lay.inputs}}
    height = {}
    for t in layer_of:
        shape = types[t].shape if t in types else None
        height[t] = int(shape[2]) if shape is not None and len(shape) == 4 and isinstance(shape[2], int) else 0
    initializers = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    fixed = {
        "input memory": sum((types[i.name].nbytes or 0) for i in inputs if i.name in types),
        "output memory": sum((types[o.name].nbytes or 0) for o in g.output if o.name in types),
        "static memory": sum((types[t.name].nbytes or 0) for t in g.initializer if t.name in types),
    }
    return _Graph(model_io, cpu_touch, last_use, layer_of, consumers_rows, size, height, fixed)


def _plan(graph: _Graph, layers: list[Layer], budget: int, tiling: bool) -> tuple[dict[str, int], list[str]]:
    """Decide where each activation lives; fill each layer's DDR bytes and recompute factor."""
    for lay in layers:
        lay.loaded = lay.stored = 0
        lay.recompute = 1.0
        lay.onchip_outputs, lay.tiled_outputs = [], []
    model_io, cpu_touch, last_use, size = graph.model_io, graph.cpu_touch, graph.last_use, graph.size
    onchip: dict[str, int] = {}  # tensor → on-chip footprint
    in_ddr: set[str] = set()
    notes: list[str] = []
    live_chip = 0
    live_ddr: dict[str, int] = {}
    live_tmp: dict[str, int] = {}
    ddr_total = tmp_total = 0  # sums of live_ddr / live_tmp (integers: kept exactly)
    peak_ddr = peak_tmp = 0
    for lay in layers:
        for t in lay.outputs:
            s = size.get(t, 0)
            if t in model_io or t in cpu_touch:
                in_ddr.add(t)
                if t not in model_io:
                    tmp_total += s - live_tmp.get(t, 0)
                    live_tmp[t] = s
                continue
            if live_chip + s <= budget:
                onchip[t] = s
                live_chip += s
                lay.onchip_outputs.append(t)
                continue
            rows = graph.height.get(t, 0) if tiling else 0
            if rows > 1 and s:
                per_row = s / rows
                tile = int((budget - live_chip) // per_row)
                if tile >= 1:
                    foot = int(math.ceil(tile * per_row))
                    onchip[t] = foot
                    live_chip += foot
                    halo = graph.consumers_rows.get(t, 1) - 1
                    lay.recompute = max(lay.recompute, 1.0 + min(1.0, halo / tile))
                    lay.tiled_outputs.append(t)
                    continue
            in_ddr.add(t)
            ddr_total += s - live_ddr.get(t, 0)
            live_ddr[t] = s
        peak_ddr = max(peak_ddr, ddr_total)
        peak_tmp = max(peak_tmp, tmp_total)
        for t in [t for t in onchip if last_use.get(t, -1) <= lay.position and t not in model_io]:
            live_chip -= onchip.pop(t)
        for t in [t for t in live_ddr if last_use.get(t, -1) <= lay.position]:
            ddr_total -= live_ddr.pop(t)
        for t in [t for t in live_tmp if last_use.get(t, -1) <= lay.position]:
            tmp_total -= live_tmp.pop(t)
    layer_of = graph.layer_of
    for lay in layers:
        lay.loaded = lay.weight_bytes + sum(size.get(t, 0) for t in lay.inputs
                                            if t in in_ddr or t in model_io or t in cpu_touch or t not in layer_of)
        lay.stored = sum(size.get(t, 0) for t in lay.outputs if t in in_ddr)
    memory = {**graph.fixed_memory, "intermediate memory": peak_ddr, "temporary memory": peak_tmp}
    memory["dynamic memory"] = sum(memory[k] for k in ("input memory", "output memory", "intermediate memory",
                                                        "temporary memory"))
    memory["min memory requirement"] = memory["static memory"] + memory["dynamic memory"]
    if any(lay.tiled_outputs for lay in layers):
        notes.append(f"{sum(len(lay.tiled_outputs) for lay in layers)} activation(s) tiled by rows to stay on chip "
                     "(producer recomputes the consumer's halo)")
    return memory, notes


# ----------------------------------------------------------------------------------- estimate

@dataclass(frozen=True)
class _Planned:
    """What `_plan` wrote into each layer, and its answer (memory, notes)."""

    layers: list[tuple[int, int, float, list[str], list[str]]]  # loaded, stored, recompute, on chip, tiled
    memory: dict[str, int]
    notes: list[str]

    @classmethod
    def of(cls, layers: list[Layer], memory: dict[str, int], notes: list[str]) -> _Planned:
        return cls([(lay.loaded, lay.stored, lay.recompute, list(lay.onchip_outputs), list(lay.tiled_outputs))
                    for lay in layers], dict(memory), list(notes))

    def apply(self, layers: list[Layer]) -> tuple[dict[str, int], list[str]]:
        for lay, (loaded, stored, recompute, onchip, tiled) in zip(layers, self.layers, strict=True):
            lay.loaded, lay.stored, lay.recompute = loaded, stored, recompute
            lay.onchip_outputs, lay.tiled_outputs = list(onchip), list(tiled)
        return dict(self.memory), list(self.notes)


@dataclass(frozen=True)
class _Static:
    """What the estimate reads of the program alone, whatever the options: its partition, its layers
    before any plan, and the plans' view of its graph."""

    part: Partition
    layers: list[Layer]
    graph: _Graph
    plans: dict[tuple[int, bool], _Planned] = field(default_factory=dict, compare=False)  # by (budget, tiling)

    def plan(self, graph: _Graph, layers: list[Layer], budget: int, tiling: bool) -> tuple[dict[str, int], list[str]]:
        """`_plan(graph, layers, budget, tiling)` on `fresh` layers, its answer kept: the 8 candidate plans
        of a program are the same under every compile_mode / balance_factor / advice (only their timing
        differs), so an edit of those re-times them without planning again (digits: 0.23 of 0.26 ms)."""
        kept = self.plans.get((budget, tiling))
        if kept is None:
            memory, notes = _plan(graph, layers, budget, tiling)
            self.plans[(budget, tiling)] = _Planned.of(layers, memory, notes)
            return memory, notes
        return kept.apply(layers)

    def fresh(self) -> tuple[list[Layer], _Graph]:
        """Layers a plan may fill in (copies: an estimate's layers are its own) and the graph over them."""
        layers = [replace(lay, nodes=list(lay.nodes), inputs=list(lay.inputs), outputs=list(lay.outputs))
                  for lay in self.layers]
        return layers, replace(self.graph, layer_of={t: lay for lay in layers for t in lay.outputs})


STATIC_KEEP = 8  # programs whose static part is kept (a warm engine estimates the same few again)
_static_memo: Recent[str, _Static] = Recent(STATIC_KEEP)


def _static(program: onnx.ModelProto, types: Mapping[str, TensorType] | None, digest: str | None) -> _Static:
    """The program's `_Static`, kept by `digest` (the sha256 of its bytes) when the caller has one: a
    compiler_parameters edit estimates the same program under other options (digits: 1.1 of the
    1.7 ms the estimate took)."""
    kept = _static_memo.get(digest) if digest is not None else None
    if kept is not None:
        return kept
    types = tensor_types(program, digest) if types is None else types
    part = partition(program, types=types)
    layers = _layers(program, part, types)
    static = _Static(part, layers, _graph(program, part, layers, types))
    return _static_memo.put(digest, static) if digest is not None else static


def estimate(program: onnx.ModelProto, options: CompileOptions, name: str = "model", *,
             types: Mapping[str, TensorType] | None = None, digest: str | None = None) -> PerfEstimate:
    """The static estimate of `program` (the `.hbm`'s program or a `.bc`) for `options.march`.
    `types`: the program's `tensor_types` when the caller has them; `digest`: the sha256 of the
    program's bytes, under which its options-independent part is kept for the next estimate."""
    prof = profile(options.march)
    static = _static(program, types, digest)
    part = static.part
    layers, graph = static.fresh()
    peak = prof.peak_ops(options.core_num)
    bandwidth = prof.ddr_bandwidth.value
    candidates = []
    for share in BUDGETS:
        for tiling in (False, True):
            budget = int(prof.onchip_memory.value * share)
            static.plan(graph, layers, budget, tiling)
            _time(layers, peak, bandwidth, overlap_of(share))
            candidates.append({"on-chip share": share, "tiling": tiling, "overlap": overlap_of(share),
                               "latency (ms)": sum(lay.time_s for lay in layers) * 1e3,
                               "DDR bytes": sum(lay.loaded + lay.stored for lay in layers)})
    chosen = choose(candidates, options.balance_factor)
    budget = int(prof.onchip_memory.value * chosen["on-chip share"])
    memory, notes = static.plan(graph, layers, budget, chosen["tiling"])
    _time(layers, peak, bandwidth, chosen["overlap"])
    subgraphs = []
    calls = 0
    for sid in range(part.subgraph_count):
        members = [lay for lay in layers if lay.subgraph == sid]
        t = sum(lay.time_s for lay in members)
        n = max(1, math.ceil(t / (options.max_time_per_fc * 1e-6))) if options.max_time_per_fc else 1
        calls += n
        subgraphs.append({"id": sid, "layers": len(members), "latency (ms)": t * 1e3, "function calls": n,
                          "ops": sum(lay.ops * lay.recompute for lay in members),
                          "DDR loaded bytes": sum(lay.loaded for lay in members),
                          "DDR stored bytes": sum(lay.stored for lay in members)})
    latency = sum(lay.time_s for lay in layers) + calls * FC_OVERHEAD_S
    cpu = [{"name": p.node, "op_type": p.op_type, "reason": p.reason} for p in part.cpu_nodes]
    est = PerfEstimate(name, prof, options, layers, cpu, subgraphs, latency, calls,
                       sum(lay.loaded for lay in layers), sum(lay.stored for lay in layers), memory, budget, notes,
                       plan=chosen, candidates=candidates)
    est.advice = advice_lines(est, options.advice)
    return est


def _time(layers: list[Layer], peak: float, bandwidth: float, overlap: float) -> None:
    for lay in layers:
        lay.compute_s = lay.ops * lay.recompute / peak
        lay.data_s = (lay.loaded + lay.stored) / bandwidth
        lay.time_s = max(lay.compute_s, lay.data_s) + (1 - overlap) * min(lay.compute_s, lay.data_s)
        lay.ideal_s = lay.ideal_ops / peak


def choose(candidates: list[dict[str, Any]], balance_factor: int) -> dict[str, Any]:
    """The plan compile_mode asks for (module docstring): f = balance_factor / 100 weighs latency vs DDR."""
    f = balance_factor / 100.0
    lat_min = min(c["latency (ms)"] for c in candidates) or 1e-30
    ddr_min = max(1, min(c["DDR bytes"] for c in candidates))

    def key(c: dict[str, Any]) -> tuple[float, float]:
        score = f * c["latency (ms)"] / lat_min + (1 - f) * c["DDR bytes"] / ddr_min
        return (round(score, 12), c["DDR bytes"] if f == 1.0 else c["latency (ms)"])

    return min(candidates, key=key)


def advice_lines(est: PerfEstimate, threshold_us: float) -> list[str]:
    """hb's compile advice: layers whose estimate exceeds their exact-work time by more than N µs."""
    if threshold_us <= 0:
        return []
    lines = []
    for lay in est.layers:
        slower = lay.time_s - lay.ideal_s
        if slower * 1e6 <= threshold_us:
            continue
        if lay.bound == "memory":
            why = f"it moves {lay.loaded + lay.stored} bytes through DDR (memory-bound)"
        elif lay.ops > lay.ideal_ops * 1.01:
            why = (f"channels are padded to multiples of {CHANNEL_ALIGN} "
                   f"(+{100 * (lay.ops / max(lay.ideal_ops, 1) - 1):.0f}% work)")
        elif lay.recompute > 1.0:
            why = f"it recomputes {100 * (lay.recompute - 1):.0f}% of its rows for tiling"
        else:
            why = f"its data transfer is not overlapped with compute (compile_mode {est.options.compile_mode})"
        lines.append(f'advice: Layer "{lay.name}" becomes slow ({lay.ideal_s * 1e3:.3f}ms -> '
                     f"{lay.time_s * 1e3:.3f}ms). {why}")
    return lines


# ------------------------------------------------------------------------------------ measure

def measure_latency(program: bytes | onnx.ModelProto, threads: int = 1, runs: int = 20, warmup: int = 1,
                    seed: int = 0, budget_s: float = 0.1, min_runs: int = 3) -> dict[str, Any]:
    """Median latency of up to `runs` onnxruntime runs on seeded inputs: after `min_runs`, it stops
    once `budget_s` is spent (a slow model is measured `min_runs` times, a fast one `runs` times)."""
    import onnxruntime as ort

    from engine.runtime.feeds import random_feeds
    from engine.runtime.session import available_threads, open_session

    if isinstance(program, onnx.ModelProto):
        program = program.SerializeToString()
    threads = available_threads(threads)
    session = open_session(program, threads, "the program")
    feeds = random_feeds(session.get_inputs(), seed)
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"latency (ms)": median * 1e3, "min latency (ms)": min(times) * 1e3, "FPS": 1.0 / median,
            "runs": len(times), "threads": threads, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "onnxruntime": ort.__version__}


LATENCY_MEMO_KEEP = 64


_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64}


def _constant_kind(t: onnx.TensorProto) -> str:
    """A constant as the kernels see it: type and dims, and for an integer tensor whether it is all
    zero (a zero point of 0 can select another kernel) — not its name, values or sharing."""
    from onnx import numpy_helper

    kind = f"c{t.data_type}{list(t.dims)}"
    if t.data_type in _INTEGER_TYPES:  # an integer is 0 when all its bytes are: raw data is read as bytes
        zero = not t.raw_data.strip(b"\0") if t.HasField("raw_data") else not numpy_helper.to_array(t).any()
        kind += "zero" if zero else "nonzero"
    return kind


def _attribute_kind(a: onnx.AttributeProto) -> str:
    if a.type == onnx.AttributeProto.TENSOR:
        return f"{a.name}={_constant_kind(a.t)}"
    return a.SerializeToString().hex()


STRUCTURE_KEEP = 16  # programs whose structure digest is kept, by their bytes' sha256
_structure_memo: Recent[str, str] = Recent(STRUCTURE_KEEP)


def program_structure(program: onnx.ModelProto, digest: str | None = None) -> str:
    """sha256 of what the program's speed depends on: its operators in order (domain, type,
    attributes) and how they are wired, its inputs' and outputs' types, and each constant's kind
    (`_constant_kind`) — not the constants' values, names or sharing, nor node names or metadata.
    A calibration file that moves thresholds changes scales, biases and tables, not the work; O1's
    `dedupe_initializers` / `remove_dead` on constants nothing reads change names and sharing only
    (a digits compile at O0 after one at O1 measures nothing). `digest`: the sha256 of the
    program's bytes, under which the answer is kept in this process."""
    kept = _structure_memo.get(digest) if digest is not None else None
    if kept is not None:
        return kept
    g = program.graph
    constants = {t.name: _constant_kind(t) for t in g.initializer}
    names: dict[str, str] = {}  # value → its place: i<k> graph input, n<k>.<j> output j of node k
    parts: list[Any] = [program.ir_version, sorted([o.domain or "", o.version] for o in program.opset_import)]
    for k, vi in enumerate(i for i in g.input if i.name not in constants):
        names[vi.name] = f"i{k}"
        parts.append(["input", vi.type.SerializeToString().hex()])
    for k, node in enumerate(g.node):
        reads = [(names.get(i) or constants.get(i) or "?") if i else "" for i in node.input]
        parts.append([node.domain or "", node.op_type, [_attribute_kind(a) for a in node.attribute], reads,
                      len(node.output)])
        for j, o in enumerate(node.output):
            if o:
                names[o] = f"n{k}.{j}"
    for vi in g.output:
        parts.append(["output", names.get(vi.name) or constants.get(vi.name) or "?", vi.type.SerializeToString().hex()])
    structure = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return _structure_memo.put(digest, structure) if digest is not None else structure


@dataclass(frozen=True)
class LatencyMemo:
    """Measurements kept in `folder` by (program structure, threads, runs, onnxruntime, machine): a
    program of the same structure (`program_structure`: the same operators, wiring and constant
    kinds, other values) measured under the same conditions is not measured again — the measurement
    is the latency of that work on this machine; its run-to-run spread is far larger than any effect
    of the constants' values. Only an accelerator — a missing or unreadable entry is measured."""

    folder: Path

    def key(self, program: bytes | onnx.ModelProto, threads: int, runs: int, digest: str | None = None) -> str:
        import onnxruntime as ort

        from engine.runtime.session import available_threads

        if isinstance(program, bytes):
            program = onnx.load_from_string(program)

        what = [MEASURE_VERSION, program_structure(program, digest), available_threads(threads), runs,
                ort.__version__, platform.machine(), platform.processor()]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]

    def measure(self, program: bytes | onnx.ModelProto, threads: int = 1, runs: int = 20,
                digest: str | None = None) -> dict[str, Any]:
        """`measure_latency`'s answer, from the memo when there. `digest`: the sha256 of the program's bytes."""
        from engine.pipeline.cache import atomic_write_text

        if isinstance(program, bytes):
            program = onnx.load_from_string(program)
        path = Path(self.folder) / f"{self.key(program, threads, runs, digest)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        measured = measure_latency(program, threads=threads, runs=runs)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(measured))
        self._cap()
        return measured

    def _cap(self) -> None:
        """Keep the newest LATENCY_MEMO_KEEP measurements (keyed by program, not owned by a stage entry)."""
        try:
            files = sorted(Path(self.folder).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:  # a file went away meanwhile: cap next time
            return
        for old in files[LATENCY_MEMO_KEEP:]:
            old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- json

def perf_json(est: PerfEstimate, measured: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`{prefix}.json`: summary (with reference §12.8's DDR access data), march profile, plan,
    subgraphs, CPU nodes, advice, and per-layer details when compiled with `debug`."""
    o = est.options
    summary = {
        "model": est.name, "march": o.march, "board": est.march.board, "compile_mode": o.compile_mode,
        "balance_factor": o.balance_factor, "core_num": o.core_num, "optimize_level": o.optimize_level,
        "latency (ms)": est.latency_s * 1e3, "FPS": est.fps,
        "DDR loaded bytes per frame": est.loaded, "DDR stored bytes per frame": est.stored,
        "DDR bytes per frame": est.ddr_bytes, "DDR (MB per frame)": est.ddr_bytes / 1e6,
        "computation (GOPs per frame)": est.ops / 1e9, "MACs per frame": est.macs,
        "BPU subgraphs": len(est.subgraphs), "function calls": est.function_calls,
        "CPU nodes": len(est.cpu_nodes),
        "DDR access data": dict(est.memory),
    }
    if measured:
        summary["measured on this machine"] = dict(measured)
    out: dict[str, Any] = {
        "summary": summary,
        "march profile": est.march.to_json(),
        "plan": {"objective": {"latency": "lowest latency", "bandwidth": "fewest DDR bytes"}.get(
                     o.compile_mode, f"balance_factor {o.balance_factor}: latency vs DDR bytes"),
                 "on-chip share": est.plan.get("on-chip share"), "on-chip budget (bytes)": est.budget,
                 "tiling": est.plan.get("tiling"), "overlap of data and compute": est.plan.get("overlap"),
                 "channel alignment": CHANNEL_ALIGN, "function call overhead (us)": FC_OVERHEAD_S * 1e6,
                 "notes": est.notes,
                 "model": "engine/compile/perf.py: per-layer roofline, activations on chip within the plan's budget"},
        "plan candidates": est.candidates,
        "subgraphs": est.subgraphs,
        "cpu nodes": est.cpu_nodes,
        "advice": est.advice,
    }
    if o.debug:
        out["layers"] = [_layer_json(lay) for lay in est.layers]
    return out


def _layer_json(lay: Layer) -> dict[str, Any]:
    keep = {"name": lay.name, "type": lay.type, "subgraph": lay.subgraph, "nodes": list(lay.nodes), "macs": lay.macs,
            "weight_bytes": lay.weight_bytes, "inputs": list(lay.inputs), "outputs": list(lay.outputs),
            "onchip_outputs": list(lay.onchip_outputs), "tiled_outputs": list(lay.tiled_outputs)}
    keep.update({"ops": lay.ops * lay.recompute, "recompute": lay.recompute, "DDR loaded bytes": lay.loaded,
                 "DDR stored bytes": lay.stored, "compute time (us)": lay.compute_s * 1e6,
                 "data time (us)": lay.data_s * 1e6, "time (us)": lay.time_s * 1e6,
                 "ideal time (us)": lay.ideal_s * 1e6, "bound": lay.bound})
    return keep


def write_perf_reports(directory, prefix: str, perf: Mapping[str, Any], similarity=(), outputs=(),
                       sensitivity=None, *, quality: str | None = None, atomic: bool = True):
    """`{prefix}.json` and `{prefix}.html` in `directory`, each written atomically (`atomic` False: straight,
    into a folder put in place whole); returns both paths. `sensitivity`: calibrate's ranking
    (`engine.report.culprits.Culprits`), drawn beside the similarity table; `quality`: the page's
    similarity and sensitivity sections already made (`perf_html.quality_sections`)."""
    import json
    from pathlib import Path

    from engine.compile.perf_html import render
    from engine.pipeline.cache import atomic_write_text

    directory = Path(directory)
    paths = []
    for suffix, text in ((".json", json.dumps(perf, indent=1, sort_keys=False, default=str)),
                         (".html", render(perf, similarity, outputs, sensitivity, quality=quality))):
        path = directory / f"{prefix}{suffix}"
        if atomic:
            atomic_write_text(path, text)
        else:
            path.write_bytes(text.encode())  # UTF-8, as atomic_write_text writes
        paths.append(path)
    return paths[0], paths[1]


def perf_report(program: onnx.ModelProto, options: CompileOptions, name: str = "model", measure: bool = True,
                runs: int = 20, memo: LatencyMemo | None = None, *, types: Mapping[str, TensorType] | None = None,
                digest: str | None = None) -> dict[str, Any]:
    """`{prefix}.json`'s content in one call: the estimate, and (with `measure`) the program's latency
    measured here with `options.jobs` onnxruntime threads (through `memo` when given). `types` and
    `digest` (the sha256 of the program's bytes): what the caller already knows of the program."""
    est = estimate(program, options, name, types=types, digest=digest)
    measured = None
    if measure:
        measured = memo.measure(program, options.jobs, runs, digest) if memo is not None else \
            measure_latency(program, threads=options.jobs, runs=runs)
    return perf_json(est, measured)


def perf_log_lines(perf: Mapping[str, Any], html_name: str) -> list[str]:
    """hb's compile summary lines (reference §12.7) for `hb_compile.log` and the console."""
    s = perf["summary"]
    lines = [line for line in perf.get("advice", [])]
    lines.append(f"FPS={s['FPS']:.1f}, latency = {s['latency (ms)'] * 1e3:.1f} us, DDR = {s['DDR bytes per frame']} "
                 f"bytes   (see {html_name})")
    m = s.get("measured on this machine")
    if m:
        lines.append(f"measured on this machine ({m['processor']}, {m['threads']} thread(s), onnxruntime "
                     f"{m['onnxruntime']}): latency = {m['latency (ms)'] * 1e3:.1f} us (median of {m['runs']})")
    return lines
