"""calibrate: optimized model + calibration samples → thresholds and `*_calibrated_model.onnx`.

Statistics are computed per sample and kept in a memo keyed by (optimized model, observed
tensors, sample content hash), then merged: after one calibration file changes, only that
sample's forward pass runs again. The thresholds are chosen by `calibration_type` and the
fake-quant model is built from the quantization plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engine.calibration import (
    CalibrationSource,
    Observer,
    SampleStats,
    load_calibration_set,
    merge_samples,
    random_samples,
)
from engine.config import Config
from engine.pipeline.stage import Stage, StageContext
from engine.problems import CalibrationDataError, error
from engine.quantize.planner import QuantOptions, make_plan, plan_tensors
from engine.quantize.types import ActQuant

log = logging.getLogger("hbcompile")
READS = ("calibration_parameters", "model_parameters.node_info")
STATS_VERSION = 1


def calibration_files(config: Config) -> list[Path]:
    """Every file of every cal_data_dir (the stage key hashes their contents)."""
    if config.calibration.calibration_type == "skip":
        return []
    files: list[Path] = []
    for d in config.calibration.cal_data_dir:
        if d is not None and d.is_dir():
            files += sorted((p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")),
                            key=lambda p: p.name)
    return files


def sources(config: Config, specs: list[dict[str, Any]]) -> list[CalibrationSource]:
    out = []
    for i, spec in enumerate(specs):
        d = config.calibration.cal_data_dir[i] if i < len(config.calibration.cal_data_dir) else None
        if d is None:
            raise CalibrationDataError(error("cal-dir-missing", f"cal_data_dir gives no folder for input "
                                             f"'{spec['name']}' (input {i})", ("calibration_parameters",
                                                                                "cal_data_dir")))
        dtype = config.calibration.cal_data_type[i] if i < len(config.calibration.cal_data_type) else None
        out.append(CalibrationSource(spec["name"], d, tuple(spec["shape"]), dtype, spec["input_layout_train"],
                                     config.calibration.preprocess_on, spec["input_type_train"]))
    return out


def _memo_key(optimize_key: str, tensors: list[str]) -> str:
    h = hashlib.sha256(json.dumps([STATS_VERSION, optimize_key, tensors]).encode()).hexdigest()
    return h[:32]


def collect_stats(ctx: StageContext, model: onnx.ModelProto, tensors: list[str],
                  specs: list[dict[str, Any]]) -> tuple[list[SampleStats], dict[str, np.ndarray], dict[str, Any]]:
    """Per-sample statistics (memoised by content hash), the first sample, and what was done."""
    config = ctx.config
    memo = ctx.memo_dir("sample_stats") / _memo_key(ctx.upstream["optimize"].name, tensors)
    memo.mkdir(parents=True, exist_ok=True)
    observer = Observer(model, tensors, batch=1)  # per-sample stats must not depend on batch peers
    cs = load_calibration_set(sources(config, specs))
    for name in cs.input_names:
        log.info(f"input name: {name},  number_of_samples: {len(cs)}")
    log.info(f"There are {len(cs)} samples in the calibration data set.")
    hashes = cs.content_hashes()
    todo = [i for i, h in enumerate(hashes) if not (memo / f"{h}.npz").is_file()]
    t0 = time.perf_counter()
    for done, (i, st) in enumerate(zip(todo, observer.observe(cs.samples(todo))), start=1):
        ctx.check_cancel()
        tmp = memo / f".{hashes[i]}.npz.tmp"
        tmp.write_bytes(st.to_bytes())
        tmp.replace(memo / f"{hashes[i]}.npz")
        rate = done / max(time.perf_counter() - t0, 1e-9)
        ctx.report(f"calibration sample {done}/{len(todo)} ({rate:.1f} samples/s)", done / len(todo))
    stats = []
    for h in hashes:
        try:
            stats.append(SampleStats.from_bytes((memo / f"{h}.npz").read_bytes()))
        except (OSError, ValueError):  # a corrupt memo entry: recompute that sample
            (memo / f"{h}.npz").unlink(missing_ok=True)
            raise
    return stats, cs.load(0), {"samples": len(cs), "computed": len(todo), "reused": len(cs) - len(todo),
                               "batch": observer.batch_used}


def load_source(config: Config) -> Path | None:
    """calibration_type load: a `quant_config` path (QDQ .onnx or JSON thresholds), else the user's model."""
    qc = config.calibration.quant_config
    if isinstance(qc, str) and qc.strip():
        p = Path(qc).expanduser()
        return p if p.is_absolute() else config.base_dir / p
    return config.model.onnx_model


def calibrate_files(config: Config) -> list[Path]:
    """Calibration files, plus the thresholds source for `load`."""
    files = calibration_files(config)
    if config.calibration.calibration_type == "load":
        src = load_source(config)
        if src is not None and src.is_file():
            files.append(src)
    return files


def run(ctx: StageContext) -> dict[str, Any]:
    from engine.quantize.calibrated import build_calibrated_model
    from engine.quantize.search import SearchSettings, choose_thresholds

    config = ctx.config
    model = onnx.load(str(ctx.input("optimize", "model.onnx")))
    specs = json.loads(ctx.input("optimize", "inputs.json").read_text())
    options = QuantOptions.from_config(config)
    settings = SearchSettings.from_config(config)
    tensors = plan_tensors(model, options)
    kind = config.calibration.calibration_type
    if kind in ("skip", "load"):
        if kind == "skip":
            log.warning("calibration_type is skip: thresholds come from random data; the model is only good "
                        "for performance checks")
        result = choose_thresholds(settings, model, None, options=options, tensors=tensors,
                                   load_source=load_source(config) if kind == "load" else None)
        first = next(random_samples({s["name"]: s["shape"] for s in specs}, 1))
        info: dict[str, Any] = {"samples": 0}
    else:
        stats, first, info = collect_stats(ctx, model, tensors, specs)
        result = choose_thresholds(settings, model, merge_samples(stats), [first], options, tensors=tensors)
    plan = make_plan(model, result.acts, options)
    onnx.save(build_calibrated_model(model, plan), str(ctx.out_dir / "model.onnx"))
    save_thresholds(ctx.out_dir / "thresholds.json", result.acts)
    np.savez(ctx.out_dir / "first_sample.npz", **first)
    (ctx.out_dir / "inputs.json").write_text(json.dumps(specs, indent=1))
    return {**info, "method": result.method, "cosines": result.cosines, "tensors": len(tensors),
            "notes": plan.notes}


def save_thresholds(path: Path, found: dict[str, Any]) -> None:
    """{tensor: {threshold, axis, method, detail}}: what later stages re-plan from."""
    from engine.quantize.planner import _threshold_of

    out = {}
    for tensor, value in found.items():
        t, method, axis = _threshold_of(value)
        detail = getattr(value, "detail", None)
        out[tensor] = {"threshold": np.asarray(t).tolist(), "axis": axis, "method": method,
                       "detail": json.loads(json.dumps(detail or {}, default=_jsonable))}
    path.write_text(json.dumps(out, indent=1))


def load_thresholds(path: Path) -> dict[str, ActQuant]:
    out = {}
    for tensor, v in json.loads(path.read_text()).items():
        t = v["threshold"]
        out[tensor] = ActQuant(tensor, np.asarray(t, np.float64) if isinstance(t, list) else float(t),
                               axis=v.get("axis"), method=v.get("method", ""))
    return out


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


STAGE = Stage("calibrate", 1, run, after=("optimize",), reads=READS, files=calibrate_files,
              artefacts={"model.onnx": "{prefix}_calibrated_model.onnx"},
              describe="statistics per calibration sample, thresholds, fake-quant model")
