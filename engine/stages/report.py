"""report: the similarity of every node and output — float vs calibrated (Calibrated Cosine) and
float vs the integer `.bc` (Quantized Cosine) on the first calibration sample — as
`*_node_info.csv`, `*_quant_info.json` and the tables the CLI prints and the editor shows.

The work is split by what it depends on, each part memoised by the keys of its inputs (memo
folders beside the stage cache; only accelerators, a missing entry is recomputed):
- the calibrated comparison (`compare`: float vs fake-quant model, per node and output) depends
  on the optimized model and the calibrate stage's output only (its plan options are part of
  calibrate's slice): a change on the runtime side (input_type_rt, input_batch…) reuses it;
- the float reference tensors the Quantized Cosines compare with depend on the optimized model
  and the first sample only: a change of another calibration file, or of the runtime side,
  reuses them (PP-OCRv4 det at 640×640: one float run with every row's tensor, ~2.5 s);
- only the `.bc` runs every time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.pipeline.cache import atomic_write_text
from engine.pipeline.stage import Stage, StageContext
from engine.quantize.planner import QuantOptions, make_plan
from engine.report import tables
from engine.stages.calibrate import load_thresholds
from engine.stages.quantize import READS as QUANTIZE_READS


def quantized_values(bc: onnx.ModelProto, sample: dict[str, np.ndarray], specs: list[dict[str, Any]]
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dequantized intermediates by float tensor name, outputs by name) of the `.bc` on `sample`,
    fed in each input's runtime format."""
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import integer_intermediates
    from engine.runtime.session import open_session

    feeds = {s["name"]: to_runtime(sample[s["name"]], s["input_type_rt"], s["input_type_train"],
                                   s["input_layout_train"], s.get("input_space_and_range") or "regular",
                                   s.get("input_layout_rt")) for s in specs}
    batch = program_batch(bc)
    if batch > 1:  # input_batch: the program takes N samples; every tensor keeps them on axis 0
        feeds = {k: np.repeat(v, batch, axis=0) for k, v in feeds.items()}
    inter = integer_intermediates(bc, feeds)
    sess = open_session(bc, what="the integer program")
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    if batch > 1:
        inter, outs = ({k: v[:1] for k, v in d.items()} for d in (inter, outs))
    return inter, outs


def program_batch(bc: onnx.ModelProto) -> int:
    """The batch the `.bc` takes (`input_batch`, recorded per input by the quantize stage)."""
    stored = next((p.value for p in bc.metadata_props if p.key == "hbcompile.inputs"), "[]")
    return max((int(s.get("input_batch") or 1) for s in json.loads(stored)), default=1)


MEMO_VERSION = 1
# float reference files kept: one (each holds every row's tensor on one sample, PP-OCRv4 det 640×640:
# 247 MB; an older one is only of use if the first sample comes back); bigger ones are not kept
KEEP_REFERENCES = 1
MAX_REFERENCE_BYTES = 1 << 30


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([MEMO_VERSION, *parts], default=str).encode()).hexdigest()[:32]


def sample_digest(sample: dict[str, np.ndarray]) -> str:
    """Content of a sample (names, dtypes, shapes, bytes): what a float run of it depends on."""
    h = hashlib.sha256()
    for name in sorted(sample):
        a = np.ascontiguousarray(sample[name])
        h.update(json.dumps([name, a.dtype.str, a.shape]).encode())
        h.update(a.data)
    return h.hexdigest()


def calibrated_similarity(ctx: StageContext, optimized: onnx.ModelProto, sample: dict[str, np.ndarray],
                          plan: Any) -> Any:
    """`compare(optimized, calibrated model, sample, plan)`, memoised by the optimize and calibrate keys
    (the calibrated model, thresholds, plan options and first sample are all calibrate's output)."""
    from engine.similarity import NodeRow, OutputRow, Similarity, compare

    key = _digest(ctx.upstream["optimize"].name, ctx.upstream["calibrate"].name)
    path = ctx.memo_dir("calibrated_similarity") / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        return Similarity([NodeRow(**{**r, "nodes": tuple(r["nodes"])}) for r in saved["nodes"]],
                          [OutputRow(**o) for o in saved["outputs"]])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sim = compare(optimized, onnx.load(str(ctx.input("calibrate", "model.onnx"))), sample, plan)
    atomic_write_text(path, json.dumps({"nodes": [asdict(r) for r in sim.nodes],
                                        "outputs": [asdict(o) for o in sim.outputs]}))
    return sim


def float_reference(ctx: StageContext, optimized: onnx.ModelProto, sample: dict[str, np.ndarray],
                    tensors: list[str]) -> dict[str, np.ndarray]:
    """The float model's `tensors` on `sample`, memoised by (optimize key, sample content, tensors)."""
    from engine.similarity import run_model

    memo = ctx.memo_dir("float_reference")
    path = memo / f"{_digest(ctx.upstream['optimize'].name, sample_digest(sample), sorted(tensors))}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            names = json.loads(str(z["__names__"]))
            got = {t: z[f"t{i}"] for i, t in enumerate(names)}
        if set(tensors) <= set(got):
            path.touch()  # recency for pruning
            return got
    except (OSError, ValueError, KeyError):
        pass
    ref = run_model(optimized, sample, tensors)
    kept = [t for t in tensors if t in ref]
    if sum(np.asarray(ref[t]).nbytes for t in kept) <= MAX_REFERENCE_BYTES:
        arrays = {"__names__": np.array(json.dumps(kept)), **{f"t{i}": ref[t] for i, t in enumerate(kept)}}
        _write_npz(path, arrays)
        _prune(memo, KEEP_REFERENCES)
    return ref


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Streamed into a temporary file renamed into place: whole or absent, never held twice in memory."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(folder: Path, keep: int) -> None:
    files = sorted((p for p in folder.glob("*.npz")), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.similarity import cosine

    optimized = onnx.load(str(ctx.input("optimize", "model.onnx")))
    bc = onnx.load(str(ctx.input("quantize", "model.bc")))
    specs = json.loads(ctx.input("calibrate", "inputs.json").read_text())
    with np.load(ctx.input("calibrate", "first_sample.npz")) as z:
        sample = {k: z[k] for k in z.files}
    thresholds_path = ctx.input("calibrate", "thresholds.json")
    plan = make_plan(optimized, load_thresholds(thresholds_path), QuantOptions.from_config(ctx.config))
    sim = calibrated_similarity(ctx, optimized, sample, plan)
    inter, bc_outputs = quantized_values(bc, sample, specs)
    rows = sorted({r.tensor for r in sim.nodes if r.tensor} | {o.tensor for o in sim.outputs})
    ref = float_reference(ctx, optimized, sample, rows)
    nodes = [replace(r, quantized_cosine=cosine(ref[r.tensor], inter[r.tensor]) if r.tensor in inter else None)
             for r in sim.nodes]
    outputs = [replace(o, quantized_cosine=cosine(ref[o.tensor], bc_outputs[o.tensor])
                       if o.tensor in bc_outputs else None) for o in sim.outputs]
    calibrated_flag = ctx.config.calibration.calibration_type != "skip"
    (ctx.out_dir / "node_info.csv").write_text(tables.node_info_csv(nodes, calibrated_flag))
    node_io = {n.name: (list(n.input), list(n.output)) for n in optimized.graph.node}
    info = tables.quant_info(nodes, outputs, node_io, json.loads(thresholds_path.read_text()))
    (ctx.out_dir / "quant_info.json").write_text(json.dumps(info, indent=1))
    return {"calibrated": calibrated_flag, "nodes": [asdict(r) for r in nodes],
            "outputs": [asdict(o) for o in outputs]}


# version 2: quantized cosines against a float run exposing every row's tensor (was: those the .bc maps)
STAGE = Stage("report", 2, run, after=("optimize", "calibrate", "quantize"),
              reads=QUANTIZE_READS + ("calibration_parameters.calibration_type",),
              artefacts={"node_info.csv": "{prefix}_node_info.csv", "quant_info.json": "{prefix}_quant_info.json"},
              describe="similarity tables (calibrated and quantized cosine per node and output)")
