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
   cost — int16 doubles a tensor's bytes and takes its integer kernels off their fast path, so
   cost grows (as a square root, 0.5–2) with the tensor's size, and every integer Conv / Gemm /
   MatMul the move takes off its fast integer kernel (onnxruntime has no int16 one) adds its
   measured slowdown (`kernel_cost`: a 1x1 conv's int16 input 4x, its int16 output 3.15x, a
   depthwise conv's 1.35x; × its size, 0.5–2). A row whose weights hurt more
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
The result says which rows moved, why (isolated loss, rank, cost, the cosine before and after it
was added), what the real plan gives, and, when the target is not met, why it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from engine.accuracy.sensitivity import Sensitivity, analyse, row_noise
from engine.accuracy.sessions import References, quiet_session, run_outputs
from engine.accuracy.switchable import INPUT_ROW, Row, SwitchableModel, build_switchable
from engine.calibration.stats import MergedStats
from engine.quantize.planner import PER_CHANNEL_WRITERS, Calibration, QuantOptions, make_plan
from engine.quantize.types import ActQuant, QuantPlan

log = logging.getLogger("hbcompile")
Sample = Mapping[str, np.ndarray]
Target = Literal["int16", "CPU"]
CPU_COST = 4.0  # a float island: float compute plus quantize / dequantize at its borders
SCAN_STRIDES = 5  # the prefix scan judges every ⌈n/5⌉-th prefix from the short end, then bisects the crossing
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
# Each kernel a move takes off its fast path adds FLOAT_KERNEL_COST x (slowdown - 1) x its size factor.
# Before the slowdowns every kernel added a flat 0.5 (measured on det 640 at target 0.99, budget 19,
# held-out cosine / .hbm CPU ms vs float, 2 threads: 0 -> 19 moves, 0.9909, 0.89x float; 0.5 -> 17
# moves, 0.9909, 0.86-0.95x; 1.0 -> 18 moves, 0.9898); 1/3 keeps a 1x1 conv's input at 1.0.
FLOAT_KERNEL_COST = 1.0 / 3.0


def kernel_kind(node: onnx.NodeProto, weight_shape: Sequence[int] | None) -> str:
    """"depthwise" for a grouped Conv with one input channel per group (its integer kernel is slow
    anyway, so int16 costs it little), else "pointwise" (1x1 and dense convs, Gemm, MatMul)."""
    if node.op_type != "Conv" or weight_shape is None or len(weight_shape) < 2:
        return "pointwise"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return "depthwise" if group > 1 and weight_shape[1] == 1 else "pointwise"


def kernel_cost(kind: str, side: str, size_factor: float = 1.0) -> float:
    """What an int16 `side` ("input" / "output") adds to a move's cost for one integer kernel."""
    return FLOAT_KERNEL_COST * (KERNEL_SLOWDOWN[(kind, side)] - 1.0) * size_factor


def _size_factor(value: float, median: float) -> float:
    return float(np.clip(np.sqrt(value / max(median, 1.0)), 0.5, 2.0))


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


def _costs(model: onnx.ModelProto, rows: Sequence[Row], plan: QuantPlan | None = None) -> dict[str, float]:
    """int16 cost of a row, two parts.

    Bytes: the square root of its output's size relative to the median row's, in [0.5, 2] — a big
    early tensor costs more bytes and time at 16 bits, but not so much more that a clearly worse
    node is preferred to it. Kernels: every integer Conv / Gemm / MatMul the move takes off its
    fast integer kernel — the row's own, whose output becomes int16, and the integer readers of
    that output — adds `kernel_cost` (its measured slowdown, KERNEL_SLOWDOWN) × the square root of
    its multiply-accumulates relative to the median such node's, in [0.5, 2]: of two equally
    sensitive tensors, the one a LUT, an Add or a depthwise conv reads is raised before the one a
    1x1 convolution reads, and the `.hbm` stays fast.
    """
    sizes: dict[str, int] = {}
    inferred = None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                sizes[vi.name] = int(np.prod([d.dim_value for d in dims]))
    except Exception:  # shapes unknown: every row costs the same
        pass
    known = [sizes[r.tensor] for r in rows if r.tensor in sizes]
    median = float(np.median(known)) if known else 1.0
    macs = _macs(model, inferred) if plan is not None else {}
    median_macs = float(np.median(list(macs.values()))) if macs else 1.0
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            readers.setdefault(i, []).append(n.name)

    nodes = {n.name: n for n in model.graph.node}
    weight_shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}

    def integer_kernel(name: str) -> bool:
        p = plan.nodes.get(name) if plan is not None else None
        return p is not None and p.on == "BPU" and p.op_type in ACCUMULATING and name in nodes

    def priced(name: str, side: str) -> float:
        node = nodes[name]
        kind = kernel_kind(node, weight_shapes.get(node.input[1]) if len(node.input) > 1 else None)
        return kernel_cost(kind, side, _size_factor(macs.get(name, median_macs), median_macs))

    out: dict[str, float] = {}
    for r in rows:
        cost = _size_factor(sizes.get(r.tensor, median), median)
        if plan is not None:
            writers = {n for n in r.nodes if integer_kernel(n)}
            readers_of = {n for n in readers.get(r.tensor, ()) if integer_kernel(n)} - writers
            cost += sum(priced(n, "output") for n in writers) + sum(priced(n, "input") for n in readers_of)
        out[r.name] = cost
    return out


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
    cost16 = _costs(model, movable, plan)
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
    moves_out = []
    for name, to in chosen.items():
        row, s = probe.row(name), sens.get(name)
        cost = cost16[name] * (CPU_COST if to == "CPU" else 1.0)
        was, now = curve.get(name, (float("nan"), float("nan")))
        rank = f"rank {sensitivity.rows.index(s) + 1}" if s is not None else "not ranked"
        why = (f"isolated {'weight' if to == 'CPU' else 'activation'} loss "
               f"{((s.weight if to == 'CPU' else s.activation) or 0.0) if s is not None else 0.0:.5f} ({rank}), "
               f"cost {cost:.1f}; output cosine {was:.5f} -> {now:.5f} when added with the moves ranked beside it")
        moves_out.append(Move(name, row.nodes, to, now - was, cost, why))
    after = 1.0 - loss
    info, thresholds = decisions(model, plan, probe, chosen, ev.wide)
    return MixedPrecision(target, before, after, moves_out, info, thresholds, budget, after >= target,
                          ev.builds, time.perf_counter() - t0, sensitivity, verified=after, notes=notes)


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


__all__ = ["CPU_COST", "FLOAT_KERNEL_COST", "KERNEL_SLOWDOWN", "kernel_cost", "kernel_kind", "RANK_SAMPLES", "Move", "MixedPrecision", "PlanEvaluator", "Searched", "decisions", "mixed_precision",
           "searched_meets", "user_placed",
           "widen_int16", "widened_plan"]
