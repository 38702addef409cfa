"""Automatic mixed precision: the fewest nodes raised to int16 (or, failing that, run in float on
the CPU) that bring the output cosine to a target.

    result = mixed_precision(model, plan, samples, stats, target=0.99, budget=33)
    result.node_info     # {"p2o.Add.14": {"OutputType": "int16"}, ...}: what the user can copy
    result.thresholds    # int16 tensors at their max |x| (clipping buys nothing at 16 bits)

How (greedy by sensitivity per unit of cost, every step measured on the real plan):
1. The int8 plan's output loss: the ptq model (the integer program computed in float) on the
   evaluation samples against the float model; done if it meets the target.
2. Candidates: every row (node / fusion group / tensor entering the integer part) with quantized
   activations that the user did not place (node_info, run_on_cpu, run_on_bpu win), ranked by
   sensitivity (`engine.accuracy.sensitivity`, on the switchable model: one run per question, on
   the centre quarter of the first sample when the model runs at a crop) per unit of estimated
   cost (`Pricing.int16`, `_costs`): the milliseconds the move adds to the `.hbm` at 1 thread,
   linear in what the kernels do — every tensor it makes int16 (its own, and every tensor the
   plan ties to its scale, `width_sets`) is requantized, ELEMENT_NS per element, and every integer
   Conv / Gemm / MatMul writing or reading one of them leaves its int8 kernel (onnxruntime has no
   int16 one: `kernel_cost`, its measured slowdown − 1 × its multiply-accumulates × the int8
   kernel's time per MAC); as a cost, 1 + those ms / the median row's. A row whose weights hurt more
   than its activations is a CPU candidate instead (int8 weights are fixed on the BPU; a CPU node
   hands its output to the integer part as int16).
3. Prefix scan: the best-ranked candidates that fit the budget, judged as sets on the real ptq
   model (`PlanEvaluator`: make_plan + build_ptq_model + one onnxruntime run per sample), by
   bisection over the prefix length: the shortest prefix that meets the target (`_prefix_scan`)
   with a margin of one standard error of its mean over the evaluation samples (at most half of
   1 − target), so that the target holds on held-out data too. When the first SCAN_LEAD stride
   points miss, the whole list is judged next, and a list that misses as a whole is not walked.
   Sets, not single moves: quantization errors partly cancel in real models, and along a path of
   clipping tensors raising one only lets the next one clip (measured on PP-OCRv4 det: raising
   the top isolated culprit alone made the output worse; the top nine together met 0.99).
4. When no prefix of the ranking meets the target, the same scan over other lists, each judged
   whole first and kept when it does better: the weight rows that cost most among the int8
   weights (`weight_culprits`, leave-one-out, to the CPU) followed by the ranking; then the rows with noisy activations (local
   noise ≥ GRAPH_ORDER_NOISE) in graph order, int16, after those weight rows (`_in_graph_order`). Isolated losses miss errors that compound from the start of the
   graph (PP-OCRv4 rec: each under 4e-4 where the int8 plan loses 0.03).
5. Float islands: once the target is met, a chain of int16 moves (with at most ISLAND_GAP rows
   between them) runs as one float island on the CPU instead when that is estimated faster
   (`Pricing.float_island`: float kernels inside, requantization only at its borders) and still
   meets the target (`_float_islands`). PP-OCRv4 det 640: its first stage's four int16 tensors at
   320x320 cost more in requantization than the float convs cost (+4.2 ms against +1.7 over int8).
   Then the costliest moves the target does without are dropped (`_prune`).
The result says which rows moved, why (isolated loss, rank, cost, the cosine before and after it
was added), what the real plan gives, and, when the target is not met, why it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from engine.accuracy.sensitivity import Sensitivity, analyse, row_noise
from engine.accuracy.sessions import References, quiet_session, run_outputs
from engine.accuracy.switchable import INPUT_ROW, Row, SwitchableModel, build_switchable
from engine.calibration.stats import MergedStats
from engine.quantize.planner import (
    PER_CHANNEL_WRITERS,
    Calibration,
    MissingThresholdError,
    QuantOptions,
    Sets,
    make_plan,
    width_sets,
)
from engine.quantize.types import ActQuant, QuantPlan

log = logging.getLogger("hbcompile")
Sample = Mapping[str, np.ndarray]
Target = Literal["int16", "CPU"]
CPU_COST = 4.0  # a float island: float compute plus quantize / dequantize at its borders
SCAN_STRIDES = 5  # the prefix scan judges every ⌈n/5⌉-th prefix from the short end, then bisects the crossing
ISLAND_GAP = 1  # unmoved rows a float island takes in to join two int16 moves (`_islands`)
PRUNE_TRIES = 6  # the costliest moves a met target tries to do without (`_prune`)
SCAN_LEAD = 2  # stride points the scan judges before it judges the whole list (`_prefix_scan`)
RANK_CROP = 0.25  # share of the sample's pixels the sensitivity ranking runs on (`sensitivity.cropped`)
# the cropped ranking's top rows measured again on the whole sample (`analyse(refine=)`): off, as
# measured on PP-OCRv4 det at 0.99, 20 rows took 20 → 18 moves for +6 CPU s (a quarter more)
RANK_REFINE = 0
# samples the sensitivity ranking runs on (the first of the evaluation samples). Measured on PP-OCRv4 rec
# 48x320, 256 held-out lines, with bias_correction: 1 sample -> 26 moves, target not met on the samples,
# .bc cosine 0.9810, CER 0.0304, calibrate 19.7 CPU s; 4 samples -> 23 moves, met (0.9938), 0.9911, CER
# 0.0232, 44-48 CPU s (the activation questions are the cost; weights on one sample saved nothing).
# Without bias_correction 1 / 2 / 4 samples gave CER 0.0353 / 0.0412 / 0.0270: one sample ranks on noise,
# but four cost 2.7x the calibrate stage; kept at 1 until the ranking is cheaper.
RANK_SAMPLES = 1
# weight rows the ranking measures (`analyse(weight_limit=)`), the noisiest by relative weight noise. A
# poor proxy (PP-OCRv4 rec's first depthwise 3x3 ranks 43rd by it), but the weights that matter are found
# by `weight_culprits` (leave-one-out) when the ranking misses: with all rows measured (None) rec came out
# the same (CER 0.0180 on 256 held-out lines, same 26 moves, same cosine on the accuracy samples) and det's
# calibrate stage cost 37.2 instead of 35.6 CPU s (2026-11-26, one run each).
RANK_WEIGHTS: int | None = 24
# A weight row whose float weights (every other weight int8, activations float) win back at least this share
# of the weights-only loss, and at least WEIGHT_CULPRIT_FLOOR of the loss the target allows (1 - target), is a
# CPU candidate ahead of both candidate lists (`weight_culprits`)
WEIGHT_CULPRIT_SHARE = 0.1
WEIGHT_CULPRIT_FLOOR = 0.02
GRAPH_ORDER_NOISE = 1e-3  # local noise / signal of a row the graph-order candidates (`_in_graph_order`) take
# The threshold search's own output cosine (`Searched`) stands in for the ptq run when its loss is at most this
# share of the loss the target allows (digits: 1.8e-4 of 0.01; its ptq model loses 2.2e-4 on the same samples)
SEARCHED_SHARE = 0.25


@dataclass(frozen=True)
class Searched:
    """What `calibration_type: default` measured for the thresholds it chose: the calibrated model's mean
    output cosine over the first `samples` calibration samples."""

    cosine: float
    samples: int


def searched_meets(searched: Searched | None, plan: QuantPlan, target: float) -> bool:
    """The int8 plan meets `target` by the search's measurement alone: its loss is within SEARCHED_SHARE of
    the allowed loss, and the plan is the calibrated model's (no shared scale moved a threshold). The ptq
    model differs from the calibrated model then only by its int32 biases and by the si32 outputs it
    leaves unquantized, and a ptq build, session and run are the steps' whole cost on a small model
    (digits: ~12 of ~15 ms)."""
    if searched is None or searched.samples < 1 or not 0.0 < target <= 1.0:
        return False
    if 1.0 - searched.cosine > SEARCHED_SHARE * (1.0 - target):
        return False
    calibrated = plan.calibrated_acts or plan.acts
    return all(t in calibrated and np.array_equal(np.asarray(a.threshold), np.asarray(calibrated[t].threshold))
               for t, a in plan.acts.items())


@dataclass(frozen=True)
class Move:
    row: str  # node or fusion group
    nodes: tuple[str, ...]
    to: Target
    gain: float  # measured output-cosine gain when it was taken
    cost: float
    reason: str

    def line(self) -> str:
        return f"{self.row} -> {self.to}: {self.reason}"


@dataclass
class MixedPrecision:
    target: float
    before: float  # output cosine of the int8 plan (evaluation samples)
    after: float  # with the moves (switchable estimate)
    moves: list[Move]
    node_info: dict[str, dict[str, str]]  # what the planner applies; the user can paste it
    thresholds: dict[str, float]  # int16 tensors: their max |x|
    budget: int  # rows (nodes or fusion groups) that may move
    met: bool
    evaluations: int  # plans built and run
    seconds: float
    sensitivity: Sensitivity | None = None
    verified: float | None = None  # output cosine of the real (ptq) plan with the moves, if checked
    notes: list[str] = field(default_factory=list)

    @property
    def moved_nodes(self) -> int:
        """Rows of the node table moved (a fusion group is one integer op, one row)."""
        return len(self.moves)

    def summary(self) -> str:
        state = "met" if self.met else "not met"
        return (f"mixed precision: output cosine of the integer program (ptq model) {self.before:.6f} -> "
                f"{self.after:.6f} (target {self.target}, {state}); {len(self.moves)} moves, at most {self.budget} "
                f"nodes may move")

    def to_json(self) -> dict:
        return {"target": self.target, "before": self.before, "after": self.after, "verified": self.verified,
                "met": self.met, "budget": self.budget, "moved_nodes": self.moved_nodes,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 2), "notes": self.notes,
                "moves": [{"row": m.row, "nodes": list(m.nodes), "to": m.to, "gain": m.gain, "cost": m.cost,
                           "reason": m.reason} for m in self.moves],
                "node_info": self.node_info, "thresholds": self.thresholds}


def user_placed(options: QuantOptions) -> set[str]:
    return set(options.node_info) | set(options.run_on_cpu) | set(options.run_on_bpu)


ACCUMULATING = PER_CHANNEL_WRITERS  # ops that accumulate int8 products (a float kernel when a reader is int16)
# An integer Conv / Gemm / MatMul that reads or writes an int16 tensor has no int16 kernel in onnxruntime's
# CPU provider: the lowering emulates it as a float kernel (engine.quantize.lower.emulate), except a 1x1 conv
# that only writes int16 (ConvInteger). What that costs depends on the kernel, measured alone at 1 thread
# against the same conv in int8 (docs/formats.md): int16 input of a 1x1 conv 3.5-4.5x, int16 output of a
# 1x1 conv 2.6-3.7x, int16 input of a 3x3 depthwise conv 0.8-1.9x (the uint8 depthwise kernel is slow
# too); an int16 lookup table costs what a uint8 one does per value. KERNEL_SLOWDOWN holds the middles;
# a dense 3x3 / Gemm / MatMul is priced as a 1x1 conv (a float kernel against a fast integer one).
KERNEL_SLOWDOWN = {("pointwise", "input"): 4.0, ("pointwise", "output"): 3.15,
                   ("depthwise", "input"): 1.35, ("depthwise", "output"): 1.35}
# What the int8 kernel takes per multiply-accumulate, 1 thread, this machine (AVX512-VNNI), onnxruntime's
# profiler on the PP-OCRv4 det 640 program (2026-11-26): QLinearConv 1x1 32->48 at 160x160 0.29 ms for
# 39 M MACs (7.5 ps), 3x3 96->24 at 160x160 3.3 ms for 531 M (6.2 ps); depthwise 3x3, 48 channels at
# 160x160, 0.58 ms for 11 M (52 ps: MLAS's uint8 depthwise kernel is slow). A kernel taken off its int8
# path costs (slowdown - 1) x MACs x this.
INT8_PS_PER_MAC = {"pointwise": 7.0, "depthwise": 50.0}
# Per element of a tensor held at 16 bits: its requantization and twice the bytes. QuantizeLinear to
# int16 took 0.83 ms on 32x320x320 (0.25 ns per element), DequantizeLinear of the int32 sums 0.23 ns.
ELEMENT_NS = 0.3


def kernel_kind(node: onnx.NodeProto, weight_shape: Sequence[int] | None) -> str:
    """"depthwise" for a grouped Conv with one input channel per group (its integer kernel is slow
    anyway, so int16 costs it little), else "pointwise" (1x1 and dense convs, Gemm, MatMul)."""
    if node.op_type != "Conv" or weight_shape is None or len(weight_shape) < 2:
        return "pointwise"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return "depthwise" if group > 1 and weight_shape[1] == 1 else "pointwise"


def kernel_cost(kind: str, side: str, macs: float) -> float:
    """Milliseconds an int16 `side` ("input" / "output") adds to one integer kernel of `macs`
    multiply-accumulates: its int8 time (INT8_PS_PER_MAC) × (KERNEL_SLOWDOWN − 1)."""
    return macs * INT8_PS_PER_MAC[kind] * 1e-9 * (KERNEL_SLOWDOWN[(kind, side)] - 1.0)


def _macs(model: onnx.ModelProto, inferred: onnx.ModelProto | None) -> dict[str, float]:
    """Multiply-accumulates per Conv / ConvTranspose / Gemm / MatMul node (output elements × reduction),
    from inferred shapes and constant weights; nodes whose shapes are unknown are left out."""
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*(inferred.graph.value_info if inferred else ()), *model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    out: dict[str, float] = {}
    for n in model.graph.node:
        if n.op_type not in ACCUMULATING or len(n.input) < 2 or not n.output:
            continue
        y, w, x = shapes.get(n.output[0]), shapes.get(n.input[1]), shapes.get(n.input[0])
        if y is None or w is None or x is None:
            continue
        if n.op_type == "Conv":  # W: [C_out, C_in/group, k…]: each output element sums C_in/group · k… products
            reduction = int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":  # each input element scatters into C_out/group · k… outputs
            out[n.name] = float(np.prod(x)) * float(np.prod(w[1:]))
            continue
        else:  # Gemm / MatMul: the reduction is A's last axis (Gemm's transA aside, the same size)
            reduction = int(x[-1]) if x else 1
        out[n.name] = float(np.prod(y)) * reduction
    return out


class Pricing:
    """What moves add to the `.hbm`'s time, in estimated ms at 1 thread (shapes, multiply-accumulates,
    readers and the plan's width sets read once per model).

    Linear in what the kernels do, because that is how they cost (measured on PP-OCRv4 det 640, each
    move alone against the all-int8 program, min CPU of 9 interleaved blocks, noise ±1 ms): every
    tensor a move makes int16 — the row's own and, with the plan, every tensor sharing its scale
    (`width_sets`: a neck Add at 24×40×40 raises the FPN concat at 96×160×160 and the 3x3 conv that
    reads it, measured +10–12 ms, where a square-root size factor priced it as the cheapest move) —
    costs ELEMENT_NS per element, and every integer Conv / Gemm / MatMul writing or reading one of
    them leaves its int8 kernel (`kernel_cost`, × its multiply-accumulates): the 1x1 conv 16->32 at
    320x320 writing int16 ~1.8 ms (measured +2.7), the HardSwish table before it ~1.6 (+2.1), the
    depthwise convs around them ~0.3–1 (measured 0 ± 1: the uint8 depthwise kernel is slow too).
    Without a plan: the row's own tensor, bytes only."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan | None = None, options: QuantOptions | None = None):
        self.plan = plan
        self.sizes: dict[str, int] = {}
        inferred = None
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
                dims = vi.type.tensor_type.shape.dim
                if dims and all(d.HasField("dim_value") for d in dims):
                    self.sizes[vi.name] = int(np.prod([d.dim_value for d in dims]))
        except Exception:  # shapes unknown: every tensor has the median known size (or 1)
            pass
        self.median = float(np.median(list(self.sizes.values()))) if self.sizes else 1.0
        self.macs = _macs(model, inferred) if plan is not None else {}
        self.median_macs = float(np.median(list(self.macs.values()))) if self.macs else 0.0
        self.widest: dict[str, tuple[str, ...]] = {}
        if plan is not None:
            for members in width_sets(model, options):
                for t in members:
                    self.widest[t] = members
        self.readers: dict[str, list[str]] = {}
        self.producer: dict[str, str] = {}
        for n in model.graph.node:
            for i in dict.fromkeys(n.input):
                self.readers.setdefault(i, []).append(n.name)
            for o in n.output:
                self.producer[o] = n.name
        self.nodes = {n.name: n for n in model.graph.node}
        self.weight_shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}

    def size(self, tensor: str) -> float:
        return float(self.sizes.get(tensor, self.median))

    def integer_kernel(self, name: str) -> bool:
        p = self.plan.nodes.get(name) if self.plan is not None else None
        return p is not None and p.on == "BPU" and p.op_type in ACCUMULATING and name in self.nodes

    def kernel(self, name: str, side: str) -> float:
        node = self.nodes[name]
        kind = kernel_kind(node, self.weight_shapes.get(node.input[1]) if len(node.input) > 1 else None)
        return kernel_cost(kind, side, self.macs.get(name, self.median_macs))

    def int16(self, row: Row) -> float:
        """ms the row's int16 move adds: ELEMENT_NS per element of every tensor it raises, and the
        integer kernels writing or reading those tensors off their int8 path."""
        own = [row.tensor, *(s.target for s in row.of_kind("activation"))]
        raised = list(dict.fromkeys(m for t in own for m in self.widest.get(t, (t,))))
        ms = sum(self.size(t) for t in raised) * ELEMENT_NS * 1e-6
        if self.plan is not None:
            writers = {n for n in row.nodes if self.integer_kernel(n)} | \
                {self.producer[t] for t in raised if t in self.producer and self.integer_kernel(self.producer[t])}
            read = {n for t in raised for n in self.readers.get(t, ()) if self.integer_kernel(n)} - writers
            ms += sum(self.kernel(n, "output") for n in writers) + sum(self.kernel(n, "input") for n in read)
        return ms

    def float_island(self, rows: Sequence[Row]) -> float:
        """ms a float island of `rows` (every node on the CPU) adds: its convs as float kernels (their
        int16-input slowdown: the same float kernel), the tensors crossing its border requantized
        (ELEMENT_NS per element) and the integer convs reading its int16 outputs as float kernels; the
        tensors inside it are never quantized at all. On PP-OCRv4 det's
        first stage (Conv.0 … HardSwish at 32x320x320) measured +1.7 ms over int8, where its four
        int16 moves cost +4.2: four requantized 320x320 tensors against two at the borders."""
        inside = {n for r in rows for n in r.nodes}
        made = {o for n in inside for o in self.nodes[n].output}
        ms = sum(self.kernel(n, "input") for n in inside if self.integer_kernel(n))
        entering = {t for n in inside for t in self.nodes[n].input if t not in made and t in self.sizes}
        leaving = {t for t in made if any(r not in inside for r in self.readers.get(t, ()))}
        # the island hands its outputs on at int16: the integer kernels reading them leave their int8 path
        ms += sum(self.kernel(n, "input") for t in leaving for n in self.readers.get(t, ())
                  if n not in inside and self.integer_kernel(n))
        return ms + sum(self.size(t) for t in entering | leaving) * ELEMENT_NS * 1e-6


def _costs(rows: Sequence[Row], pricing: Pricing) -> dict[str, float]:
    """int16 cost of a row in units of the model's typical move: 1 + its estimated milliseconds
    (`Pricing.int16`) / the median row's. The 1 is what every move spends of the node budget; the
    rest is linear in the time it adds, so of two equally sensitive tensors the one that costs a
    tenth of the time is raised first, on a model of any size."""
    ms = {r.name: pricing.int16(r) for r in rows}
    typical = float(np.median(list(ms.values()))) if ms else 0.0
    return {k: 1.0 + v / typical if typical > 0 else 1.0 for k, v in ms.items()}


class PlanEvaluator:
    """The real thing: the ptq model (the integer program, computed in float) of `calibration`
    plus a set of moves, run on the samples against the float model. Each distinct set of moves is
    built and run once."""

    def __init__(self, model: onnx.ModelProto, calibration: Calibration, options: QuantOptions,
                 samples: Sequence[Sample], stats: Mapping[str, MergedStats], probe: SwitchableModel | None,
                 plan: QuantPlan, references: References | None = None):
        self.model, self.calibration, self.options = model, calibration, options
        self.samples = list(samples)
        self.stats, self.probe, self.plan = stats, probe, plan
        self.wide = {t: float(s.absmax) for t, s in stats.items() if s.absmax > 0}
        self.references = references if references is not None else References(model, self.samples)
        self.outputs = [o.name for o in model.graph.output]
        self.cache: dict[tuple[frozenset, int], float] = {}
        self.spread: dict[tuple[frozenset, int], float] = {}  # standard error of the mean cosine
        self.builds = 0

    def calibration_for(self, moves: Mapping[str, Target]) -> Calibration:
        info, thresholds = decisions(self.model, self.plan, self.probe, moves, self.wide)
        out = Calibration({**self.calibration, **{t: ActQuant(t, v, method="max (int16)") for t, v in thresholds.items()
                                                 if t in self.calibration}},
                          {**self.calibration.node_info, **info}, self.calibration.bias_corrections)
        widen_int16(self.model, out, self.options, self.stats)
        return out

    def loss(self, moves: Mapping[str, Target], samples: int | None = None) -> float:
        """1 − mean output cosine of the ptq model with `moves`, on the first `samples` samples (all)."""
        n = len(self.samples) if samples is None else max(1, min(int(samples), len(self.samples)))
        key = (frozenset(moves.items()), n)
        if key not in self.cache:
            from engine.quantize.ptq import build_ptq_model

            plan = self.plan if not moves and not _unwidened(self.plan, self.calibration, self.stats) \
                else make_plan(self.model, self.calibration_for(moves), self.options)
            per = self.cosines(build_ptq_model(self.model, plan), n)
            # each cosine once: the mean over samples and outputs (`mean_output_cosine`) and its spread
            self.cache[key] = 1.0 - (float(np.mean([c for p in per for c in p])) if self.outputs else 1.0)
            each = [float(np.mean(p)) if p else 1.0 for p in per]
            self.spread[key] = float(np.std(each, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
            self.builds += 1
        return self.cache[key]

    def cosines(self, ptq: onnx.ModelProto, n: int) -> list[tuple[float, ...]]:
        """Per sample of the first `n`, the cosine of each output of `ptq` against the float model's. Each
        run is looked up in the per-run memo (`engine.accuracy.runs`) first; a session is opened, and a
        float reference computed, only for the samples whose runs it does not hold."""
        from engine.accuracy import runs
        from engine.similarity import cosine

        data = ptq.SerializeToString(deterministic=True)
        model, refs = runs.digest(data), self.references
        keys = [runs.run_key(model, refs.sample_key(i), self.outputs, refs.model_key) for i in range(n)]

        def compute(missing: list[int]):
            session = quiet_session(data)
            for i, reference in zip(missing, refs.some(missing), strict=True):
                got = run_outputs(session, self.samples[i], self.outputs)
                yield [cosine(reference[o], got[o]) for o in self.outputs]

        return runs.memoised(keys, compute)

    def margin(self, moves: Mapping[str, Target], samples: int | None = None) -> float:
        """The standard error of the mean output cosine of `moves` (measured by `loss`, which runs first):
        how far the mean on other samples of the same kind may plausibly fall below this one."""
        n = len(self.samples) if samples is None else max(1, min(int(samples), len(self.samples)))
        self.loss(moves, samples)
        return self.spread[(frozenset(moves.items()), n)]


def widen_int16(model: onnx.ModelProto, calibration: Calibration, options: QuantOptions,
                stats: Mapping[str, MergedStats]) -> int:
    """Tensors the plan keeps at 16 bits take their max |x| (in place); returns how many changed.
    At 16 bits clipping buys no resolution worth having, it only loses the outliers."""
    return widened_plan(model, calibration, options, stats)[0]


def widened_plan(model: onnx.ModelProto, calibration: Calibration, options: QuantOptions,
                 stats: Mapping[str, MergedStats]) -> tuple[int, QuantPlan]:
    """`widen_int16`, and the plan of the widened `calibration`: planned once when nothing widens
    (the usual case; a plan is the accuracy steps' largest fixed cost on a small model)."""
    plan = make_plan(model, calibration, options)
    wide = _unwidened(plan, calibration, stats)
    for t in wide:
        calibration[t] = ActQuant(t, float(stats[t].absmax), method="max (int16)")
    return len(wide), (make_plan(model, calibration, options) if wide else plan)


def _unwidened(plan: QuantPlan, calibration: Calibration, stats: Mapping[str, MergedStats]) -> list[str]:
    """The 16-bit tensors of `plan` whose threshold is not yet their max |x|."""
    return [t for t, act in plan.acts.items()
            if act.bits == 16 and t in stats and t in calibration and stats[t].absmax > 0
            and getattr(calibration[t], "method", "") != "max (int16)"]


def mixed_precision(model: onnx.ModelProto, calibration: Calibration, samples: Sequence[Sample],
                    stats: Mapping[str, MergedStats], target: float = 0.99, budget: int | None = None,
                    options: QuantOptions | None = None, sensitivity: Sensitivity | None = None,
                    screen: int | None = None, progress: Callable[[str, float], None] | None = None,
                    rank_crop: float | None = RANK_CROP, references: References | None = None,
                    rank_samples: int = RANK_SAMPLES, plan: QuantPlan | None = None,
                    searched: Searched | None = None) -> MixedPrecision:
    """Moves that bring the mean output cosine on `samples` to `target` (module docstring).

    `calibration`: the thresholds (and any node_info / bias corrections) of the plan to improve;
    `budget`: nodes that may move (None: 10 % of the model's nodes; an int16 move changes one
    node's output type, a CPU move places every node of its row); `sensitivity`: a ranking already
    computed on this plan (else one is computed on the first sample); `screen`: rows the
    sensitivity analysis runs, by local noise (None: all — screening by local noise missed
    PP-OCRv4 det's first convolutions, whose error is small locally and large at the output);
    `rank_samples`: the first samples the ranking runs on (RANK_SAMPLES); `plan`: make_plan's plan
    of `calibration` when the caller has it; `searched`: the threshold search's output cosine for these
    thresholds, which decides alone when it clears the target by far (`searched_meets`).
    Every candidate set is judged on the real ptq model, not an estimate.
    """
    t0 = time.perf_counter()
    options = options or QuantOptions()
    budget = max(1, int(0.1 * sum(1 for n in model.graph.node if n.op_type != "Constant"))) \
        if budget is None else int(budget)
    plan = plan if plan is not None else make_plan(model, calibration, options)
    if searched_meets(searched, plan, target):
        return MixedPrecision(target, searched.cosine, searched.cosine, [], {}, {}, budget, True, 0,
                              time.perf_counter() - t0, sensitivity, notes=[
                                  f"mixed precision: the int8 plan meets the target {target}: the threshold search "
                                  f"measured output cosine {searched.cosine:.6f} on {searched.samples} calibration "
                                  f"sample{'s' if searched.samples > 1 else ''} (calibrated model, the plan's thresholds)"])
    ev = PlanEvaluator(model, calibration, options, samples, stats, None, plan, references)
    loss = ev.loss({})
    before = 1.0 - loss
    if meets_target(before, ev.margin({}), target):  # met with the margin `_prefix_scan` asks
        return MixedPrecision(target, before, before, [], {}, {}, budget, True, ev.builds,
                              time.perf_counter() - t0, sensitivity, verified=before)
    # rows and switches (the sensitivity ranking runs on it): built only when a move is needed (digits: 4 of
    # the ~20 ms the steps took when the int8 plan met the target)
    probe = ev.probe = build_switchable(model, plan)
    if sensitivity is None:
        sensitivity = analyse(model, plan, list(samples)[:rank_samples], stats, limit=screen, switchable=probe,
                              progress=progress, crop=rank_crop, refine=RANK_REFINE,
                               weight_limit=RANK_WEIGHTS)
    sens = {r.node: r for r in sensitivity.rows}
    fixed = user_placed(options)
    movable = [r for r in probe.rows if r.switches and not (set(r.nodes) & fixed)
               and (r.op_type == INPUT_ROW or all(plan.nodes[n].on == "BPU" for n in r.nodes if n in plan.nodes))]
    pricing = Pricing(model, plan, options)
    cost16 = _costs(movable, pricing)
    ranked = _candidates(movable, sens, cost16)

    def size(moves: Mapping[str, Target]) -> int:
        return sum(1 if to == "int16" else len(probe.row(n).nodes) or 1 for n, to in moves.items())

    def within_budget(candidates: Sequence[tuple[Row, Target, float]]) -> list[tuple[Row, Target, float]]:
        out: list[tuple[Row, Target, float]] = []
        for cand in candidates:  # what fits the budget, best first
            if size({c[0].name: c[1] for c in [*out, cand]}) <= budget:
                out.append(cand)
        return out

    shortlist = within_budget(ranked)
    notes: list[str] = []
    curve: dict[str, tuple[float, float]] = {}  # move → output cosine before / after its part of the prefix
    chosen: dict[str, Target] = {}
    loss0 = loss
    if shortlist:
        loss, k, curve = _prefix_scan(ev, shortlist, loss0, target, progress, margin=ev.margin)
        chosen = {row.name: to for row, to, _ in shortlist[:k]}
    culprits: list[tuple[Row, Target, float]] = []
    if 1.0 - loss < target:  # weights whose error compounds through the later int8 weights: CPU first
        culprits = weight_culprits(model, plan, probe, movable, list(samples)[:rank_samples], rank_crop, target=target)
    alternatives = []
    if culprits:
        first = {c[0].name for c in culprits}
        alternatives.append((f"the {len(culprits)} weight rows that cost most among the int8 weights, then the ranking",
                             lambda: within_budget([*culprits, *(c for c in ranked if c[0].name not in first)])))
    # errors that compound from the start of the graph, which the isolated ranking does not see
    alternatives.append(("the noisy activations in graph order",
                         lambda: _in_graph_order(model, movable, plan, stats, size, budget, culprits)))
    for what, candidates in alternatives:
        if 1.0 - loss >= target:
            break
        other = candidates()
        if not other:
            continue
        loss2, k2, curve2 = _prefix_scan(ev, other, loss0, target, progress, margin=ev.margin, lead=0)
        met2 = meets_target(1.0 - loss2, ev.margin({row.name: to for row, to, _ in other[:k2]}), target)
        if met2 or loss2 < loss:
            notes.append(f"mixed precision: the {len(chosen)} moves chosen so far reach output cosine {1 - loss:.6f}; "
                         f"the first {k2} of {what} reach {1 - loss2:.6f}, taken")
            loss, shortlist, curve = loss2, other, curve2
            chosen = {row.name: to for row, to, _ in other[:k2]}
    if 1.0 - loss < target:
        why = ("the node budget is spent" if len(shortlist) < len(ranked) or size(chosen) >= budget
               else "no node helps enough" if chosen else "no node helps")
        notes.append(f"mixed precision stops at output cosine {1 - loss:.6f}, below the target {target}: {why}")
    islands: dict[str, str] = {}  # row → why it joined a float island
    if meets_target(1.0 - loss, ev.margin(chosen), target):
        loss, chosen, islands = _float_islands(ev, probe, pricing, chosen, {r.name for r in movable}, loss, target,
                                               size, budget, notes)
        loss, chosen = _prune(ev, probe, pricing, chosen, islands, loss, target, notes)
        islands = {k: v for k, v in islands.items() if k in chosen}
    moves_out = []
    for name, to in chosen.items():
        row, s = probe.row(name), sens.get(name)
        cost = cost16.get(name, 1.0) * (CPU_COST if to == "CPU" and name not in islands else 1.0)
        was, now = curve.get(name, (float("nan"), float("nan")))
        rank = f"rank {sensitivity.rows.index(s) + 1}" if s is not None else "not ranked"
        why = islands.get(name) or (
            f"isolated {'weight' if to == 'CPU' else 'activation'} loss "
            f"{((s.weight if to == 'CPU' else s.activation) or 0.0) if s is not None else 0.0:.5f} ({rank}), "
            f"cost {cost:.1f}; output cosine {was:.5f} -> {now:.5f} when added with the moves ranked beside it")
        gain = now - was if name in curve else 0.0  # a row an island took in has no step of its own (NaN is no JSON)
        moves_out.append(Move(name, row.nodes, to, gain, cost, why))
    after = 1.0 - loss
    info, thresholds = decisions(model, plan, probe, chosen, ev.wide)
    return MixedPrecision(target, before, after, moves_out, info, thresholds, budget, after >= target,
                          ev.builds, time.perf_counter() - t0, sensitivity, verified=after, notes=notes)


def _islands(probe: SwitchableModel, pricing: Pricing, chosen: Mapping[str, Target], movable: Collection[str],
             gap: int = ISLAND_GAP) -> list[list[Row]]:
    """Chains of int16 moves that could run as one float island, graph order: two moved rows join when
    one reads the other's output directly or through at most `gap` unmoved movable rows (which join
    too). Islands of one moved row are left out (a lone float node pays both borders)."""
    row_of = {n: r for r in probe.rows for n in r.nodes}
    moved = [r for r in probe.rows if chosen.get(r.name) == "int16" and r.op_type != INPUT_ROW]
    names = {r.name for r in moved}
    sets = Sets()
    for r in moved:
        sets.find(r.name)

    def next_rows(r: Row) -> list[Row]:
        found = (row_of[n] for n in pricing.readers.get(r.tensor, ()) if n in row_of)
        return list({b.name: b for b in found if b.name != r.name}.values())

    def free(r: Row) -> bool:
        return r.name in movable and r.name not in chosen and r.op_type != INPUT_ROW

    for a in moved:
        frontier: list[tuple[Row, list[str]]] = [(a, [])]
        for _ in range(gap + 1):
            step = []
            for r, path in frontier:
                for b in next_rows(r):
                    if b.name in names:
                        sets.union(a.name, *path, b.name)
                    elif free(b):
                        step.append((b, [*path, b.name]))
            frontier = step
    groups = sets.members(list(sets.parent))
    order = {r.name: i for i, r in enumerate(probe.rows)}
    return [[probe.row(x) for x in sorted(g, key=order.__getitem__)] for g in groups.values()
            if sum(1 for x in g if x in names) >= 2]


def _float_islands(ev: PlanEvaluator, probe: SwitchableModel, pricing: Pricing, chosen: dict[str, Target],
                   movable: Collection[str], loss: float, target: float,
                   size: Callable[[Mapping[str, Target]], int], budget: int, notes: list[str]
                   ) -> tuple[float, dict[str, Target], dict[str, str]]:
    """Chains of int16 moves (`_islands`) run as float islands instead, where that is estimated faster
    (`Pricing.float_island` against the moves' `Pricing.int16`), fits the budget and still meets the
    target on the real plan (a float node hands its output on at int16: it is at least as accurate).

    Measured on PP-OCRv4 det 640 (1 thread, min CPU of 12 interleaved blocks): its first stage's four
    int16 moves (Conv.0, Conv.1, Conv.2 and the HardSwish after it) cost +4.2 ms over the int8
    program, the same rows with the HardSwish between them as one float island +1.7 ms, output
    cosine 0.99239 -> 0.99258 on the evaluation samples: inside an island no tensor is requantized."""
    taken: dict[str, str] = {}
    for island in _islands(probe, pricing, chosen, movable):
        names = [r.name for r in island]
        alt = {**chosen, **dict.fromkeys(names, "CPU")}
        as16 = sum(pricing.int16(r) for r in island if chosen.get(r.name) == "int16")
        as_float = pricing.float_island(island)
        if as_float >= as16 or size(alt) > budget:
            continue
        loss2 = _meeting(ev, alt, target, notes, f"float island {names[0]} … {names[-1]}")
        if loss2 is None:
            continue
        why = (f"float island of {len(island)} rows ({names[0]} … {names[-1]}): estimated +{as_float:.2f} ms "
               f"against +{as16:.2f} ms as int16 moves; output cosine {1 - loss:.5f} -> {1 - loss2:.5f}")
        notes.append(f"mixed precision: {why}, taken")
        taken.update(dict.fromkeys(names, why))
        chosen, loss = alt, loss2
    return loss, chosen, taken


def _meeting(ev: PlanEvaluator, alt: Mapping[str, Target], target: float, notes: list[str], what: str
             ) -> float | None:
    """`alt`'s loss on the real plan when it meets the target, else None; an alternative whose new border is a
    tensor calibrate did not observe (MissingThresholdError) is not tried, with a note naming `what`."""
    try:
        loss = ev.loss(alt)
    except MissingThresholdError as exc:
        notes.append(f"mixed precision: {what} not tried: {str(exc).split(': the calibrate')[0]}")
        return None
    return loss if meets_target(1.0 - loss, ev.margin(alt), target) else None


def _prune(ev: PlanEvaluator, probe: SwitchableModel, pricing: Pricing, chosen: dict[str, Target],
           islands: Mapping[str, str], loss: float, target: float, notes: list[str], tries: int = PRUNE_TRIES
           ) -> tuple[float, dict[str, Target]]:
    """The met target without the moves it does not need: the `tries` costliest moves (a float island
    counts as one, `Pricing`'s estimate), each dropped when the others still meet the target on the
    real plan. The prefix scan's curve is not monotone and an island is more accurate than the int16
    moves it replaced, so a chosen set can hold moves the target no longer needs. PP-OCRv4 det 640:
    the scan took 9 moves (its 8-move prefix missed where the 6-move one met); as islands they met
    with 0.99465, and the first stage's island alone met with 0.99258."""
    groups: dict[str, list[str]] = {}
    for name in chosen:
        groups.setdefault(islands.get(name, name), []).append(name)

    def ms(names: list[str]) -> float:
        rows = [probe.row(n) for n in names]
        return pricing.float_island(rows) if len(rows) > 1 or chosen[names[0]] == "CPU" else pricing.int16(rows[0])

    for group in sorted(groups.values(), key=lambda g: -ms(g))[:tries]:
        if len(group) == len(chosen):
            break  # the int8 plan missed the target
        alt = {k: v for k, v in chosen.items() if k not in group}
        loss2 = _meeting(ev, alt, target, notes, f"dropping {', '.join(group)}")
        if loss2 is not None:
            notes.append(f"mixed precision: {', '.join(group)} dropped (estimated {ms(group):.2f} ms): the other moves "
                         f"meet the target without it, output cosine {1 - loss:.5f} -> {1 - loss2:.5f}")
            chosen, loss = alt, loss2
    return loss, chosen


def _in_graph_order(model: onnx.ModelProto, rows: Sequence[Row], plan: QuantPlan,
                    stats: Mapping[str, MergedStats], size: Callable[[Mapping[str, Target]], int], budget: int,
                    first: Sequence[tuple[Row, Target, float]] = ()) -> list[tuple[Row, Target, float]]:
    """int16 candidates in graph order: the activation rows whose own quantization noise (from the
    histograms) is at least GRAPH_ORDER_NOISE, from the inputs on, as many as the budget holds.

    The second candidate list, for when the isolated ranking's prefixes miss the target: a row's
    isolated loss (only it quantized) misses how errors compound when every row is quantized.
    Measured on PP-OCRv4 rec, default config, 256 held-out lines, `.bc`: every isolated activation
    loss under 4e-4 against the int8 plan's 0.027; the ranking's 12 moves (target missed) gave
    cosine 0.9807, CER 0.0356; the first 6 noisy rows in graph order, which this list took, 0.9810,
    CER 0.0301 — an error made early passes through every later layer (ptq model, 128 lines: the
    first 13 convolution outputs at int16 alone took the cosine 0.964 -> 0.983, the next 13 to 0.955)."""

    position: dict[str, int] = {}
    for i, n in enumerate(model.graph.node):
        position.setdefault(n.name, i)
        for o in n.output:
            position.setdefault(o, i)
    # row_noise reads a row's weight switches only when given the model: activations only here
    noisy = [r for r in rows if r.of_kind("activation") and row_noise(r, plan, stats) >= GRAPH_ORDER_NOISE]
    noisy.sort(key=lambda r: position.get(r.nodes[0] if r.nodes else r.tensor, len(position)))
    taken = {c[0].name for c in first}
    out: list[tuple[Row, Target, float]] = []
    for cand in [*first, *((r, "int16", 0.0) for r in noisy if r.name not in taken)]:
        if size({c[0].name: c[1] for c in [*out, cand]}) > budget:
            break
        out.append(cand)
    return out


def weight_culprits(model: onnx.ModelProto, plan: QuantPlan, probe: SwitchableModel, rows: Sequence[Row],
                    samples: Sequence[Sample], crop: float | None = None, share: float | None = None,
                    target: float = 0.99) -> list[tuple[Row, Target, float]]:
    """CPU candidates: the weight rows whose int8 weights cost the most among all the int8 weights,
    by that gain, measured leave-one-out on the switchable model: every weight quantized and the
    activations float, then every weight but this row's. A row is taken when it wins back at least
    `share` (WEIGHT_CULPRIT_SHARE) of that weights-only loss and WEIGHT_CULPRIT_FLOOR of the loss
    `target` allows (among a few well-rounded weights one always has a large share of nothing); the
    prefix scan then judges it on the real plan like any other move.

    The isolated weight loss (only this row quantized) misses a weight error that compounds through
    the later rounded weights. PP-OCRv4 rec (one sample): weights-only loss 0.0031; leave-one-out,
    p2o.Conv.28 wins back 0.0011, Conv.32 0.0009, Conv.30 0.0007, where their isolated losses were
    3e-4 and less; the isolated ranking's top weight rows ignored them. Leave-one-out from the whole
    int8 plan instead (activations quantized too) swings by ±0.05 on one sample (the activations'
    clipping and the bias rounding interact) and picked 16 CPU moves.
    A CPU move keeps float weights (int8 weights are fixed on the BPU) and hands an int16 output on."""
    from engine.accuracy.sensitivity import Evaluator, crop_references, cropped
    from engine.accuracy.switchable import Setting

    weighted = [r for r in rows if r.of_kind("weight") and r.op_type != INPUT_ROW]
    if not weighted or not samples:
        return []
    small = cropped(model, samples, crop) if crop else None
    sw, run_model, data = (build_switchable(small[0], plan), small[0], small[1]) if small is not None \
        else (probe, model, list(samples))
    ev = Evaluator(sw, run_model, data, crop_references(run_model, data) if small is not None else None)
    share = WEIGHT_CULPRIT_SHARE if share is None else share
    weights = Setting({}, set(sw.weights))
    base = ev.loss(weights)
    if base <= 0:
        return []
    least = max(share * base, WEIGHT_CULPRIT_FLOOR * (1.0 - target))
    out = []
    for r in weighted:
        gain = base - ev.loss(Setting({}, weights.weights - {w.target for w in r.of_kind("weight")}))
        if gain >= least:
            out.append((r, "CPU", gain))
    return sorted(out, key=lambda c: -c[2])


def meets_target(cosine: float, margin: float, target: float) -> bool:
    """A plan meets `target` only with one standard error (`margin`) to spare, at most half the
    distance from the target to 1 (so a noisy estimate cannot ask for the impossible)."""
    return cosine - min(margin, (1.0 - target) / 2) >= target


def _prefix_scan(ev: PlanEvaluator, shortlist: Sequence[tuple[Row, Target, float]], loss0: float, target: float,
                 progress: Callable[[str, float], None] | None = None, samples: int | None = None,
                 margin: Callable[[Mapping[str, Target], int | None], float] | None = None,
                 lead: int = SCAN_LEAD) -> tuple[float, int, dict[str, tuple[float, float]]]:
    """(loss, k, curve): the shortest prefix of the ranked `shortlist` whose real plan meets `target`.

    With `margin` (the standard error of a prefix's mean cosine, `PlanEvaluator.margin`), a prefix
    meets the target when its mean cosine less that margin (at most half the allowed loss 1 − target)
    does: the evaluation samples are few, and a mean that only just meets the target on them falls
    short on held-out data about half the time (measured on PP-OCRv4 det 640: target 0.99 met on the
    calibration samples with 15 moves, held-out cosine 0.9881).

    Each prefix is judged as a set on the real ptq model (~1.5 CPU s on PP-OCRv4 det), so not every
    prefix is: every ⌈n/SCAN_STRIDES⌉-th from the short end until one meets the target, then
    bisection inside that bracket — ~5 + log2(n/5) judgements instead of up to n. The curve is not
    monotone (raising one tensor of a clipping path only lets the next one clip), so plain
    bisection from the whole list landed on later crossings (det: 18 moves where a linear scan
    met the target with 12); walking up from the short end finds the first crossing to within a
    stride. After `lead` stride points have missed, the whole list is judged before the walk goes
    on: when it misses too, no shorter prefix is judged (each is a full ptq run, and a list whose
    every move together misses rarely has a prefix that meets; measured on PP-OCRv4 det from max
    thresholds, where no list meets 0.99: 14 judgements, 19.7 CPU s, became 6 with the same moves;
    on rec and on det from max-percentile the same moves and no more judgements). `lead` 0 judges
    the whole list first (the fallback lists: kept only when they do better than the moves so far).
    When no prefix meets the target, the best judged one. `curve` gives each chosen move
    the cosine before / after the bracket of prefixes it was judged in.
    """
    total = len(shortlist)
    judged: dict[int, float] = {0: loss0}
    expected = max(int(np.ceil(np.log2(max(total, 1)))) + 1, 1)

    def judge(k: int) -> float:
        if k not in judged:
            judged[k] = ev.loss({row.name: to for row, to, _ in shortlist[:k]}, samples)
            if progress is not None:
                progress(f"mixed precision: the {k} best-ranked moves, output cosine {1 - judged[k]:.5f}",
                         min((len(judged) - 1) / expected, 1.0))
        return judged[k]

    def meets(k: int) -> bool:
        cosine = 1.0 - judge(k)
        if margin is None or k == 0:
            return cosine >= target
        return meets_target(cosine, margin({row.name: to for row, to, _ in shortlist[:k]}, samples), target)

    step = max(1, -(-total // SCAN_STRIDES))
    points = [*range(step, total, step), total]
    lo = hi = 0  # the last prefix that missed the target, the first that met it (0: none yet)
    for i, k in enumerate(points):  # from the short end: the first crossing, not a later one
        if i == lead and k != total and not meets(total):
            break  # the whole list misses: its shorter prefixes are not walked
        if meets(k):
            hi = k
            break
        lo = k
    if hi:
        while hi - lo > 1:  # bisect the bracket (lo misses, hi meets)
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid
        best = hi
    else:
        best = min(judged, key=lambda k: (judged[k], k))
    points = sorted(judged)
    curve: dict[str, tuple[float, float]] = {}
    for j, (row, _, _) in enumerate(shortlist[:best], start=1):
        after = next(p for p in points if p >= j)
        before = max(p for p in points if p < j)
        curve[row.name] = (1.0 - judged[before], 1.0 - judged[after])
    return judged[best], best, curve


def _candidates(rows: Sequence[Row], sens: Mapping[str, object], cost16: Mapping[str, float]
                ) -> list[tuple[Row, Target, float]]:
    """(row, int16 | CPU, score) by isolated loss per unit of cost, best first; a row whose weights
    hurt more than its activations is a CPU candidate (int8 weights are fixed on the BPU)."""
    out = []
    for r in rows:
        s = sens.get(r.name)
        if s is None:
            continue
        act, weight = s.activation or 0.0, s.weight or 0.0
        if weight > act and r.op_type != INPUT_ROW:
            out.append((r, "CPU", (act + weight) / (cost16[r.name] * CPU_COST)))
        elif act > 0 and r.of_kind("activation"):
            out.append((r, "int16", act / cost16[r.name]))
    return sorted(out, key=lambda c: -c[2])


def decisions(model: onnx.ModelProto, plan: QuantPlan, sw: SwitchableModel, moves: Mapping[str, Target],
              wide: Mapping[str, float]) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """node_info entries and int16 thresholds for `moves`, in hb_compile's node_info form."""
    info: dict[str, dict[str, str]] = {}
    thresholds: dict[str, float] = {}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for name, to in moves.items():
        row = sw.row(name)
        for s in row.of_kind("activation"):
            if s.target in wide:
                thresholds[s.target] = wide[s.target]
        if row.op_type == INPUT_ROW:  # a tensor entering the integer part: its BPU readers read int16
            for n in readers.get(row.tensor, []):
                p = plan.nodes.get(n.name)
                if p is not None and p.on == "BPU":
                    for i, t in enumerate(n.input):
                        if t == row.tensor:
                            info.setdefault(n.name, {})[f"InputType{i}"] = "int16"
            continue
        if to == "CPU":
            for n in row.nodes:
                info.setdefault(n, {}).update({"ON": "CPU", "OutputType": "int16"})
        else:
            info.setdefault(row.nodes[-1], {})["OutputType"] = "int16"
    return info, thresholds


__all__ = ["CPU_COST", "ELEMENT_NS", "INT8_PS_PER_MAC", "KERNEL_SLOWDOWN", "Pricing", "kernel_cost", "kernel_kind", "RANK_SAMPLES", "Move", "MixedPrecision", "PlanEvaluator", "Searched", "decisions", "mixed_precision",
           "searched_meets", "user_placed",
           "widen_int16", "widened_plan"]
