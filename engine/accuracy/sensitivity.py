"""Sensitivity analysis: which quantized nodes cost the model output its accuracy.

The accuracy-debug step a user runs after a poor similarity table (hmct's
`get_sensitivity_of_nodes` / `plot_acc_error`), computed on one switchable fake-quant model
(`engine.accuracy.switchable`) so each question is one onnxruntime run, not one model build:

- **activation** — the output-cosine loss (1 − mean output cosine against the float model) when
  only this node's activations are quantized, everything else float;
- **weight** — the same with only its weights (and constant operands) quantized;
- **accumulated** — the loss at the node's own output with every node quantized: how much error
  has piled up along the graph by the time it gets there (the table's Calibrated Cosine, on the
  plan's shared scales);
- **local** — the node's own quantization noise-to-signal ratio E[(q(x) − x)²] / E[x²], from the
  merged calibration histograms (no run at all). Used to screen: with `limit`, only the rows with
  the largest local noise get the two model runs (mixed precision needs the likely culprits, not
  a full table); the others keep `activation` / `weight` None.

Rows are ranked by activation + weight loss, the local noise breaking ties. Statistics are the
calibrate stage's cached merged histograms, so nothing here observes the model again.

Cost (PP-OCRv4 det 640×640, 140 rows, 164 questions; CPU seconds on 2 shared cores): a question
cost a whole fake-quant pass (0.47 s: Where switches computed every Q/DQ pair whether on or
not), 77 s in all. Now activation questions run on a model whose weights stay constant
(`build_switchable(weights=False)`: prepacked convolutions) with If switches (only the taken
branch runs), and mixed precision asks them on the centre quarter of the sample (`cropped`):
42 ms a question, ~8 s in all. Of the full-size ranking's top 20, 15 are in the crop's top 20
(11 of its top 12): mixed precision then needs more moves to meet a target (det at 0.99: 20
instead of 18 with bisection; held-out cosine 0.9912 instead of 0.9920).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from engine.accuracy.sessions import References
from engine.accuracy.switchable import Row, Setting, SwitchableModel, build_switchable
from engine.calibration.stats import MergedStats
from engine.quantize.types import QuantPlan

log = logging.getLogger("hbcompile")
Sample = Mapping[str, np.ndarray]
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class NodeSensitivity:
    node: str  # row name: node, fusion group ("Conv_0+Relu_1") or an entry tensor
    node_type: str
    tensor: str
    activation: float | None  # output-cosine loss, only this node's activations quantized
    weight: float | None  # output-cosine loss, only its weights quantized
    accumulated: float | None  # 1 − cosine at its own output, every node quantized
    local: float  # its own quantization noise / signal power (from the histograms)
    nodes: tuple[str, ...] = ()

    @property
    def loss(self) -> float:
        return (self.activation or 0.0) + (self.weight or 0.0)

    @property
    def culprit(self) -> str:
        """Which part of its quantization hurts more."""
        if self.activation is None and self.weight is None:
            return "-"
        return "weight" if (self.weight or 0.0) > (self.activation or 0.0) else "activation"


@dataclass
class Sensitivity:
    rows: list[NodeSensitivity]  # ranked, worst first
    output_cosine: float  # every node quantized (int8 plan), mean over samples and outputs
    samples: int
    seconds: float
    measured: int  # rows that got model runs
    notes: list[str] = field(default_factory=list)

    def top(self, n: int) -> list[NodeSensitivity]:
        return self.rows[:n]

    def to_json(self) -> dict:
        return {"output_cosine": self.output_cosine, "samples": self.samples, "seconds": round(self.seconds, 2),
                "measured": self.measured, "notes": self.notes,
                "ranking": [{**asdict(r), "nodes": list(r.nodes), "culprit": r.culprit} for r in self.rows]}

    @classmethod
    def from_json(cls, data: Mapping) -> Sensitivity:
        rows = [NodeSensitivity(r["node"], r["node_type"], r["tensor"], r["activation"], r["weight"],
                                r["accumulated"], r["local"], tuple(r.get("nodes", ()))) for r in data["ranking"]]
        return cls(rows, data["output_cosine"], data["samples"], data["seconds"], data["measured"],
                   list(data.get("notes", [])))

    def table_text(self, n: int = 10) -> str:
        """The top `n` culprits as the plain table the log shows."""
        from engine.report.tables import plain_table

        def num(v: float | None) -> str:
            return "--" if v is None else f"{v:.6f}"

        rows = [[str(i + 1), r.node, r.node_type, num(r.activation), num(r.weight), num(r.accumulated),
                 f"{r.local:.2e}", r.culprit] for i, r in enumerate(self.top(n))]
        return plain_table(["Rank", "Node", "NodeType", "Activation Loss", "Weight Loss", "Accumulated Loss",
                            "Local Noise", "Culprit"], rows)


def output_loss(reference: Sequence[Mapping[str, np.ndarray]], got: Sequence[Mapping[str, np.ndarray]],
                names: Sequence[str]) -> float:
    from engine.similarity import mean_output_cosine

    return 1.0 - mean_output_cosine(reference, got, names)


def local_noise(stats: MergedStats | None, threshold: float, bits: int = 8) -> float:
    """The quantization noise / signal power of one tensor at `threshold`, from its statistics.

    The larger of: E[(q(x) − x)²] / E[x²] over the whole tensor (its |x| histogram), and the mean
    over channels of the rounding noise step²/12 against each channel's own power, taken as
    (its max |x| / 4)² and capped at 1. The second sees what the first hides: a tensor whose few
    large channels carry the power while the small ones round to nothing (measured: a 400× channel
    scores 1e-4 on the first, 0.5 on the second).
    """
    from engine.quantize.search import fake_quant_mse

    if stats is None or stats.absmax <= 0:
        return 0.0
    h = np.asarray(stats.hist, np.float64)
    c = (np.arange(h.shape[0]) + 0.5) * (stats.absmax / h.shape[0])
    power = float((h * c * c).sum() / max(h.sum(), 1.0))
    whole = float(fake_quant_mse(stats, np.array([threshold]), (1 << (bits - 1)) - 1)[0]) / power if power > 0 else 0.0
    channels = stats.channel_absmax
    if channels is None or np.size(channels) < 2:
        return whole
    step = float(threshold) / ((1 << (bits - 1)) - 1)
    own = np.maximum(np.asarray(channels, np.float64) / 4.0, 1e-12) ** 2
    return max(whole, float(np.mean(np.minimum(step * step / 12.0 / own, 1.0))))


def weight_noise(w: np.ndarray, wq) -> float:
    """||q(W) − W||² / ||W||² of the plan's per-channel int8 weight quantization."""
    from engine.quantize.planner import quantize_weight, weight_scale_array

    w64 = np.asarray(w, np.float64)
    power = float((w64 * w64).sum())
    if power <= 0:
        return 0.0
    err = quantize_weight(w, wq) * weight_scale_array(wq, w.shape) - w64
    return float((err * err).sum()) / power


def row_noise(row: Row, plan: QuantPlan, stats: Mapping[str, MergedStats], model: onnx.ModelProto | None = None
              ) -> float:
    """The largest local noise among a row's switches (activations from the histograms, weights
    from their values)."""
    values = [local_noise(stats.get(s.target), float(np.max(plan.acts[s.target].threshold)), plan.acts[s.target].bits)
              for s in row.of_kind("activation") if s.target in plan.acts]
    if model is not None:
        inits = {t.name: t for t in model.graph.initializer}
        for s in row.of_kind("weight"):
            if s.target in inits and s.target in plan.weights:
                values.append(weight_noise(onnx.numpy_helper.to_array(inits[s.target]), plan.weights[s.target]))
    return max(values, default=0.0)


class Evaluator:
    """Runs a switchable model on fixed samples against the float model's outputs. Each run's output
    cosines are looked up first in the per-run memo (`engine.accuracy.runs`): a run of the same model
    and switches on the same sample is not repeated, and a sample's float reference is computed only
    when one of its runs is. `runs` counts the onnxruntime runs made."""

    def __init__(self, switchable: SwitchableModel, model: onnx.ModelProto, samples: Sequence[Sample],
                 references: References | None = None):
        self.sw = switchable
        self.samples = list(samples)
        self.references = references if references is not None else References(model, self.samples)
        self.runs = 0

    def cosines(self, setting: Setting) -> list[tuple[float, ...]]:
        """Per sample, the cosine of each output under `setting` against the float model's."""
        from engine.accuracy import runs
        from engine.similarity import cosine

        model, switches, refs = self.sw.digest(), self.sw.setting_key(setting), self.references
        keys = [runs.run_key(model, refs.sample_key(i), self.sw.outputs, refs.model_key, switches)
                for i in range(len(self.samples))]

        def compute(missing: list[int]):
            for i, reference in zip(missing, refs.some(missing), strict=True):
                got = self.sw.run(self.samples[i], setting)
                self.runs += 1
                yield [cosine(reference[o], got[o]) for o in self.sw.outputs]

        return runs.memoised(keys, compute)

    def loss(self, setting: Setting) -> float:
        """`output_loss` of the runs under `setting`: 1 − the mean output cosine over samples and outputs."""
        from engine.accuracy.runs import mean_loss

        return mean_loss(self.cosines(setting))


MIN_CROP_SIDE = 96  # pixels: a crop smaller than this says little about a real image


def cropped(model: onnx.ModelProto, samples: Sequence[Sample], share: float, min_side: int | None = None
            ) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]], str] | None:
    """`model` with a smaller spatial input and the centre crops of `samples` (each input's H and W
    times sqrt(`share`)), or None when the model is not a convolutional one that runs at the crop.

    For a ranking, not a measurement: "which row hurts most when only it is quantized" needs the
    same kind of content, not the whole image, and a fully convolutional model (PP-OCR det) costs
    in proportion to its pixels. Text and edges keep their size in a crop (a downscaled image
    would shrink them). Inputs must be 4-D NCHW or NHWC whose crop is at least `min_side`
    (default `MIN_CROP_SIDE`) on each side;
    a model with a fixed-size Reshape / Gemm after the convolutions fails to run or changes
    output rank at the crop, and gets None.
    """
    from engine.accuracy.sessions import quiet_session

    side = float(np.sqrt(share))
    min_side = MIN_CROP_SIDE if min_side is None else min_side
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not samples or not inputs or side >= 1.0:
        return None
    sizes: dict[str, tuple[int, int, int, int]] = {}  # input → (h axis, w axis, new h, new w)
    for i in inputs:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in i.type.tensor_type.shape.dim]
        if len(dims) != 4 or 0 in dims:
            return None
        axes = (2, 3) if dims[1] <= 4 else (1, 2) if dims[3] <= 4 else None
        if axes is None:
            return None
        h, w = dims[axes[0]], dims[axes[1]]
        nh, nw = int(round(h * side)), int(round(w * side))
        if min(nh, nw) < min_side:
            return None
        sizes[i.name] = (*axes, nh, nw)
    small = onnx.ModelProto()
    small.CopyFrom(model)
    del small.graph.value_info[:]
    for i in small.graph.input:
        if i.name in sizes:
            ha, wa, nh, nw = sizes[i.name]
            i.type.tensor_type.shape.dim[ha].dim_value = nh
            i.type.tensor_type.shape.dim[wa].dim_value = nw
    for o in small.graph.output:
        o.type.tensor_type.ClearField("shape")

    def crop(sample: Sample) -> dict[str, np.ndarray]:
        out = {}
        for k, v in sample.items():
            if k in sizes:
                ha, wa, nh, nw = sizes[k]
                y0, x0 = (v.shape[ha] - nh) // 2, (v.shape[wa] - nw) // 2
                index = [slice(None)] * v.ndim
                index[ha], index[wa] = slice(y0, y0 + nh), slice(x0, x0 + nw)
                v = np.ascontiguousarray(v[tuple(index)])
            out[k] = v
        return out

    crops = [crop(s) for s in samples]
    try:
        got = quiet_session(small).run(None, {k: v for k, v in crops[0].items() if k in sizes})
    except Exception:  # a fixed-size op after the convolutions
        return None
    ranks = [len(o.type.tensor_type.shape.dim) for o in model.graph.output]
    if (all(ranks) and [np.ndim(g) for g in got] != ranks) or not all(np.all(np.isfinite(g)) for g in got):
        return None
    shown = ", ".join(f"{v[2]}x{v[3]}" for v in sizes.values())
    return small, crops, shown


def crop_references(model: onnx.ModelProto, crops: Sequence[Sample]) -> References:
    """The float outputs of a cropped model (`cropped`), kept apart from the whole model's (`CROP_OUTPUTS`)."""
    from engine.accuracy import sessions

    return References(model, crops, sessions.CROP_OUTPUTS)


def _all_quantized(ev: Evaluator, model: onnx.ModelProto, exposed: Sequence[str]
                   ) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per sample of `ev`, every switch of its model on: (the cosine of each output against the float
    model's, the cosine of each `exposed` tensor against its float value). Memoised per run like
    `Evaluator.cosines` (the float tensors come from a run of `model` exposing them)."""
    from engine.accuracy import runs
    from engine.similarity import cosine, run_model

    sw, refs = ev.sw, ev.references
    everything = sw.all_on()
    switches = sw.setting_key(everything)
    keys = [runs.run_key(sw.digest(), refs.sample_key(i), [*sw.outputs, *exposed], refs.model_key, switches,
                         kind="output and exposed tensor cosines") for i in range(len(ev.samples))]

    def compute(missing: list[int]):
        for i, reference in zip(missing, refs.some(missing), strict=True):
            sample = ev.samples[i]
            got = sw.run(sample, everything, exposed)
            ev.runs += 1
            floats = run_model(model, sample, exposed)
            yield (tuple(cosine(reference[o], got[o]) for o in sw.outputs),
                   tuple(cosine(floats[t], got[t]) for t in exposed))

    return runs.memoised(keys, compute)


def _refined(ranked: list[NodeSensitivity], model: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Sample],
             count: int, sw: SwitchableModel) -> list[NodeSensitivity]:
    """`ranked` (from crops) with its top `count` activation rows re-measured on the whole samples
    and put first in their new order: a crop finds the likely culprits cheaply, the whole image
    orders them."""
    from dataclasses import replace

    top = [r for r in ranked if r.activation is not None][:count]
    if not top:
        return ranked
    ev = Evaluator(build_switchable(model, plan, weights=False), model, samples)
    head = [replace(r, activation=ev.loss(ev.sw.rows_on([sw.row(r.node)], ("activation",)))) for r in top]
    done = {r.node for r in head}
    return sorted(head, key=lambda r: (-r.loss, -r.local)) + [r for r in ranked if r.node not in done]


def analyse(model: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Sample],
            stats: Mapping[str, MergedStats] | None = None, limit: int | None = None,
            switchable: SwitchableModel | None = None, progress: Progress | None = None,
            weight_limit: int | None = 24, crop: float | None = None, refine: int = 0) -> Sensitivity:
    """Sensitivity of every quantized row of `model` (the optimized float model) under `plan`.

    `samples`: calibration samples to compare on (one is usually enough for a ranking);
    `crop`: run on the centre crops of the samples holding this share of their pixels, when the
    model runs at the crop (`cropped`; mixed precision ranks with 0.25: the ranking's runs are
    most of its cost, and a fully convolutional model costs in proportion to its pixels);
    `refine`: after a cropped ranking, the activation loss of its top `refine` rows is measured
    again on the whole samples, and those rows lead the ranking in that order;
    `limit`: measure only the `limit` rows with the largest local noise (None: all);
    `weight_limit`: the same for the weight-only runs (None: all) — int8 weights per output channel
    rarely matter (PP-OCRv4 det: the largest weight loss 0.0023 against 0.0100 for activations),
    so by default only the 24 with the largest weight noise are run.
    """
    from engine.accuracy.runs import mean_loss

    t0 = time.perf_counter()
    stats = stats or {}
    notes = []
    whole_model, whole_samples = model, list(samples)
    small = cropped(model, samples, crop) if crop else None
    if small is not None:  # the same rows and switches, at the crop's size
        model, samples, shown = small[0], small[1], small[2]
        sw = build_switchable(model, plan)
        notes.append(f"ranked on the centre {shown} crop of the sample{'s' if len(samples) > 1 else ''}")
    else:
        sw = switchable or build_switchable(model, plan)
    rows = [r for r in sw.rows if r.switches]
    noise = {r.name: row_noise(r, plan, stats, model) for r in rows}
    measured = rows
    if limit is not None and limit < len(rows):
        keep = {r.name for r in sorted(rows, key=lambda r: -noise[r.name])[:limit]}
        measured = [r for r in rows if r.name in keep]
    # weights: int8 per output channel rarely matters; only the noisiest get their run
    weighted = [r for r in rows if r.of_kind("weight")]
    w_noise = {r.name: row_noise(Row(r.name, r.op_type, r.nodes, r.tensor, r.of_kind("weight")), plan, stats, model)
               for r in weighted}
    weight_runs = {r.name for r in sorted(weighted, key=lambda r: -w_noise[r.name])[:weight_limit]} \
        if weight_limit is not None else {r.name for r in weighted}
    ev = Evaluator(sw, model, samples, crop_references(model, samples) if small is not None else None)
    # activation-only questions on a model whose weights stay constant (prepacked kernels: ~2x faster)
    act_ev = Evaluator(build_switchable(model, plan, weights=False), model, samples, ev.references)
    exposed = [r.tensor for r in rows if r.tensor and r.tensor in sw.mapping]
    accumulated: dict[str, float] = {}
    full_loss = []
    for outputs, tensors in _all_quantized(ev, model, exposed):
        full_loss.append(mean_loss([outputs]))
        for t, c in zip(exposed, tensors, strict=True):
            accumulated[t] = accumulated.get(t, 0.0) + (1.0 - c) / len(ev.samples)
    result: list[NodeSensitivity] = []
    todo = {r.name for r in measured}
    done = 0
    for row in rows:
        act = weight = None
        if row.name in todo:
            if row.of_kind("activation"):
                act = act_ev.loss(act_ev.sw.rows_on([row], ("activation",)))
            if row.of_kind("weight") and row.name in weight_runs:
                weight = ev.loss(sw.rows_on([row], ("weight",)))
            done += 1
            if progress is not None:
                progress(f"sensitivity {done}/{len(todo)}: {row.name}", done / max(len(todo), 1))
        result.append(NodeSensitivity(row.name, row.op_type, row.tensor, act, weight,
                                      accumulated.get(row.tensor), noise[row.name], row.nodes))
    result.sort(key=lambda r: (-r.loss, -r.local))
    if small is not None and refine > 0:
        result = _refined(result, whole_model, plan, whole_samples, refine, sw)
        notes.append(f"the top {min(refine, len(result))} rows re-measured on the whole sample")
    if len(todo) < len(rows):
        notes.append(f"{len(rows) - len(todo)} of {len(rows)} rows with the least local quantization noise were "
                     f"not run (screened out)")
    return Sensitivity(result, 1.0 - float(np.mean(full_loss)), len(ev.samples), time.perf_counter() - t0,
                       len(todo), notes)


__all__ = ["MIN_CROP_SIDE", "Evaluator", "NodeSensitivity", "Sensitivity", "analyse", "crop_references", "cropped",
           "local_noise", "output_loss", "row_noise"]
