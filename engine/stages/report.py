"""report: the similarity of every node and output — float vs calibrated (Calibrated Cosine) and
float vs the integer `.bc` (Quantized Cosine) on the first calibration sample — as
`*_node_info.csv`, `*_quant_info.json` and the tables the CLI prints and the editor shows.

The work is split by what it depends on:
- the float model's tensors on the sample (`float_reference`) depend on the optimized model and
  the sample only, so a warm engine keeps them (by the model file's and the sample's content, and
  the tensors asked for; `REFERENCE_BYTES` at most, newest first) and a calibration change that
  leaves the first sample alone does not run the float model again. Kept in memory, not on disk:
  a memo of them on disk was measured and dropped — on PP-OCRv4 det 640×640 it is 247 MB, and
  reading it back cost as much CPU as the float run it saved (2.07 vs 2.18 CPU s);
- the calibrated comparison (`compare`: float vs fake-quant model, per node and output) depends
  on the optimized model and the calibrate stage's output only (its plan options are part of
  calibrate's slice), so it is memoised by those two keys (memo folder `calibrated_similarity`, a
  small JSON; only an accelerator, a missing entry is recomputed) and a change read by quantize
  only (input_batch) reuses it;
- the `.bc` runs once for its intermediates and outputs (`integer_values`), after the
  calibrated run's tensors are freed (one model's tensors beside the reference at a time); only the
  rows the row memo does not know are fetched and dequantized (every mapped tensor stays a graph
  output, so the values are those of a run that reads them all; PP-OCRv4 det after a threshold-moving
  change, 75 / 113 / 101 of 138: 0.22 / 0.61 / 0.23 → 0.17 / 0.35 / 0.16 CPU s for the `.bc` part).
Each row's x·x of the float tensor is summed once and kept with the reference (`Reference`).

Rows are kept too (`engine.similarity.RowMemo`, in the warm engine): a calibration change moves a
few thresholds, and each row whose calibrated or `.bc` value is computed exactly as before
(`tensor_digests`: the graph above it, constants included, is unchanged) takes its cosine from the
memo; a model with no such row left (no threshold moved: the same calibrated model or `.bc`
bytes) does not run at all. PP-OCRv4 det, one of 32 files changed, 4–7 of 134 thresholds moved:
56 % of the compared values keep theirs.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.pipeline.cache import atomic_write_text
from engine.pipeline.stage import Stage, StageContext
from engine.report import tables
from engine.report.culprits import load_culprits
from engine.stages.ptq import stage_plan
from engine.stages.quantize import READS as QUANTIZE_READS


def quantized_values(bc: onnx.ModelProto, sample: dict[str, np.ndarray], specs: list[dict[str, Any]],
                     tensors: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dequantized intermediates by float tensor name, outputs by name) of the `.bc` on `sample`,
    fed in each input's runtime format; `tensors`: only these intermediates (`integer_values`)."""
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import integer_values

    feeds = {s["name"]: to_runtime(sample[s["name"]], s["input_type_rt"], s["input_type_train"],
                                   s["input_layout_train"], s.get("input_space_and_range") or "regular",
                                   s.get("input_layout_rt")) for s in specs}
    batch = program_batch(bc)
    if batch > 1:  # input_batch: the program takes N samples; every tensor keeps them on axis 0
        feeds = {k: np.repeat(v, batch, axis=0) for k, v in feeds.items()}
    inter, outs = integer_values(bc, feeds, tensors=tensors)  # one session and one run for both
    if batch > 1:
        inter, outs = ({k: v[:1] for k, v in d.items()} for d in (inter, outs))
    return inter, outs


def quantized_digests(bc: onnx.ModelProto, specs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """("quantized", float tensor) / ("quantized output", output name) → what `quantized_values` computes
    its value from: the `.bc` graph above its integer tensor (`tensor_digests`), its encoding (the
    dequantization), and the input specs (the runtime-format feeds)."""
    from engine.quantize.integer import read_tensor_map
    from engine.similarity import tensor_digests

    graph = tensor_digests(bc)
    feeds = json.dumps(specs, sort_keys=True)
    digests: dict[tuple[str, str], Any] = {}
    for name, entry in read_tensor_map(bc).items():
        d = graph.get(entry["tensor"])
        digests["quantized", name] = None if d is None else (d, json.dumps(entry, sort_keys=True), feeds)
    for out in bc.graph.output:
        d = graph.get(out.name)
        digests["quantized output", out.name] = None if d is None else (d, feeds)
    return digests


def program_batch(bc: onnx.ModelProto) -> int:
    """The batch the `.bc` takes (`input_batch`, recorded per input by the quantize stage)."""
    stored = next((p.value for p in bc.metadata_props if p.key == "hbcompile.inputs"), "[]")
    return max((int(s.get("input_batch") or 1) for s in json.loads(stored)), default=1)


ROWS_FILE = "similarity.json"  # the rows of the result, for later stages
MEMO_VERSION = 2  # 2: float runs without onnxruntime's WeightBiasQuantization (CPU convs stay float)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([MEMO_VERSION, *parts], default=str).encode()).hexdigest()[:32]


def _similarity_memo(ctx: StageContext) -> Path:
    from engine.pipeline.cache import memo_name

    key = _digest(ctx.upstream["optimize"].name, ctx.upstream["calibrate"].name)
    # owned by the calibrate entry: pruned with it (engine.pipeline.cache.prune_memos)
    return ctx.memo_dir("calibrated_similarity") / memo_name(ctx.upstream["calibrate"].name, f"{key}.json")


def saved_similarity(ctx: StageContext) -> Any:
    """The memoised calibrated comparison of this optimize + calibrate output, None when absent or unreadable
    (the calibrated model, thresholds, plan options and first sample are all calibrate's output)."""
    from engine.similarity import NodeRow, OutputRow, Similarity

    try:
        saved = json.loads(_similarity_memo(ctx).read_text())
        return Similarity([NodeRow(**{**r, "nodes": tuple(r["nodes"])}) for r in saved["nodes"]],
                          [OutputRow(**o) for o in saved["outputs"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


REFERENCE_BYTES = 384 << 20  # float references a warm engine keeps (PP-OCRv4 det 640: 252 MB, one)


def float_reference(ctx: StageContext, optimized: onnx.ModelProto, sample: dict[str, np.ndarray],
                    tensors: list[str]) -> Any:
    """`Reference(run_model(optimized, sample, tensors))`, kept in the engine's warm state by the
    content of the optimized model file and of `sample`, and `tensors`; the newest references
    whose sizes add up to `REFERENCE_BYTES` stay (one larger than that serves this run only and
    evicts none). The arrays are read-only: every later run reads the same ones."""
    from engine.accuracy.sessions import sample_key
    from engine.pipeline.hashing import shared_hashes
    from engine.similarity import Reference, run_model

    key = _digest("float", shared_hashes().file(ctx.input("optimize", "model.onnx")), sample_key(sample), tensors)
    kept: OrderedDict[str, Any] = ctx.engine.warm.setdefault("float_references", OrderedDict())
    reference = kept.pop(key, None)
    if reference is None:
        reference = Reference(run_model(optimized, sample, tensors), key)
        for value in reference.values():
            value.flags.writeable = False
    if reference.nbytes <= REFERENCE_BYTES:
        kept[key] = reference
        while sum(r.nbytes for r in kept.values()) > REFERENCE_BYTES:
            kept.popitem(last=False)
    return reference


def row_memo(ctx: StageContext) -> Any:
    """The warm engine's `RowMemo` (rows compared in earlier runs)."""
    from engine.similarity import RowMemo

    return ctx.engine.warm.setdefault("similarity_rows", RowMemo())


def calibrated_similarity(ctx: StageContext, optimized: onnx.ModelProto, sample: dict[str, np.ndarray],
                          plan: Any, reference: dict[str, np.ndarray] | None = None) -> Any:
    """`compare(optimized, calibrated model, sample, plan, reference, row_memo)`, memoised by the optimize
    and calibrate keys; `reference`: the float run of `compared_tensors` when the caller has it."""
    from engine.similarity import compare

    sim = saved_similarity(ctx)
    if sim is not None:
        return sim
    sim = compare(optimized, onnx.load(str(ctx.input("calibrate", "model.onnx"))), sample, plan, reference,
                  row_memo(ctx))
    atomic_write_text(_similarity_memo(ctx), json.dumps({"nodes": [asdict(r) for r in sim.nodes],
                                                         "outputs": [asdict(o) for o in sim.outputs]}))
    return sim


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.similarity import compared_tensors, quantized_needed, with_quantized

    optimized = onnx.load(str(ctx.input("optimize", "model.onnx")))
    specs = json.loads(ctx.input("calibrate", "inputs.json").read_text())
    with np.load(ctx.input("calibrate", "first_sample.npz")) as z:
        sample = {k: z[k] for k in z.files}
    thresholds_path = ctx.input("calibrate", "thresholds.json")
    plan = stage_plan(ctx, optimized)
    reference = float_reference(ctx, optimized, sample, compared_tensors(optimized, plan))
    sim = calibrated_similarity(ctx, optimized, sample, plan, reference)
    bc = onnx.load(str(ctx.input("quantize", "model.bc")))
    memo, digests = row_memo(ctx), quantized_digests(bc, specs)
    needed = quantized_needed(sim, reference, memo, digests)  # the rows the memo does not know
    inter, bc_outputs = quantized_values(bc, sample, specs, needed) if needed else ({}, {})
    filled = with_quantized(sim, reference, inter, bc_outputs, memo, digests)
    del inter, bc_outputs
    nodes, outputs = filled.nodes, filled.outputs
    calibrated_flag = ctx.config.calibration.calibration_type != "skip"
    (ctx.out_dir / "node_info.csv").write_text(tables.node_info_csv(nodes, calibrated_flag))
    node_io = {n.name: (list(n.input), list(n.output)) for n in optimized.graph.node}
    info = tables.quant_info(nodes, outputs, node_io, json.loads(thresholds_path.read_text()),
                             load_culprits(ctx.upstream["calibrate"]))
    (ctx.out_dir / "quant_info.json").write_text(json.dumps(info, indent=1))
    rows = {"calibrated": calibrated_flag, "nodes": [asdict(r) for r in nodes], "outputs": [asdict(o) for o in outputs]}
    (ctx.out_dir / ROWS_FILE).write_text(json.dumps(rows))  # what compile's perf page reads (a file, see cache)
    return rows


# version 2 (1095d6c, since reverted): compared against a wider float run for a while
# version 4: the rows also in similarity.json (later stages read files only: engine.pipeline.cache)
STAGE = Stage("report", 4, run, after=("optimize", "calibrate", "quantize"),
              reads=QUANTIZE_READS + ("calibration_parameters.calibration_type",),
              artefacts={"node_info.csv": "{prefix}_node_info.csv", "quant_info.json": "{prefix}_quant_info.json"},
              describe="similarity tables (calibrated and quantized cosine per node and output)")
