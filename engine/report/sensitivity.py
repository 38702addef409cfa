"""`hb_compile --sensitivity [N]`: the ranked culprits of a finished run, reused or computed once.

Reused when the calibrate stage already ranked the nodes (`sensitivity: N` in the config, or
automatic mixed precision needed a ranking) and measured at least the top N. Otherwise computed
on the run's own artefacts — the optimized float model, calibrate's thresholds and bias
corrections (the int8 plan: what calibrate ranks) and the first calibration sample, the one
calibrate ranks on — and memoised under `.hb_cache/memo/sensitivity/`, keyed by the calibrate
stage key, so asking again is free. Computing here rather than turning `sensitivity` on in the
config keeps calibrate's key, which would re-run the threshold search and the accuracy steps
(minutes on PP-OCRv4 det) to answer a question about the same thresholds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.pipeline.cache import StageCache, atomic_write_text, memo_name
from engine.pipeline.hashing import sha256_json
from engine.problems import HbError, error
from engine.report.culprits import Culprits, load_culprits

log = logging.getLogger("hbcompile")
VERSION = 1  # bump when the computed ranking changes for the same calibrate output
SENSITIVITY_FILE = "sensitivity.json"  # calibrate's output name (engine.stages.calibrate)
Progress = Callable[[str, float], None]


@dataclass
class RunSensitivity:
    culprits: Culprits
    source: str  # "calibrate" (its own ranking), "memo" (computed by an earlier request) or "computed"
    seconds: float  # wall-clock seconds spent computing now (0 when reused)
    path: Path  # `{prefix}_sensitivity.json` in working_dir
    cpu_seconds: float = 0.0  # CPU seconds of this process (onnxruntime's threads included)


def run_sensitivity(report: Any, engine: Any, n: int, progress: Progress | None = None) -> RunSensitivity:
    """The ranking for a finished, successful `RunReport` of `engine` (see the module docstring)."""
    config = report.config
    stage = report.stage("calibrate")
    if stage is None or not stage.key:
        raise HbError(error("sensitivity-needs-calibration", "--sensitivity needs the calibrate stage, which this "
                            "run did not reach (check mode stops after optimize; use -c with a config)"))
    cache = StageCache(engine.cache_root(config))
    calibrate_dir, optimize_dir = cache.lookup("calibrate", stage.key), _entry(cache, report, "optimize")
    if calibrate_dir is None or optimize_dir is None:
        raise HbError(error("sensitivity-cache-missing", f"--sensitivity: the calibrate stage's output is no longer "
                            f"in {cache.root}; run hb_compile again"))
    public = config.working_dir / f"{config.prefix}_{SENSITIVITY_FILE}"
    accuracy = _json(calibrate_dir / "accuracy.json")
    own = load_culprits(calibrate_dir)
    if own is not None and own.covers(n):
        return RunSensitivity(own, "calibrate", 0.0, public)
    memo = (engine.cache_root(config) / "memo" / "sensitivity"  # pruned with its calibrate entry
            / memo_name(stage.key, f"{sha256_json([VERSION, stage.key])[:32]}.json"))
    stored = _json(memo)
    if stored is not None:
        atomic_write_text(public, json.dumps(stored, indent=1))
        return RunSensitivity(Culprits.from_json(stored, accuracy), "memo", 0.0, public)
    if config.calibration.calibration_type in ("skip", "load"):
        log.warning(f"--sensitivity: calibration_type is {config.calibration.calibration_type}, so the ranking is "
                    "measured on random data, not on calibration samples")
    t0, c0 = time.perf_counter(), time.process_time()
    data = compute(optimize_dir / "model.onnx", calibrate_dir, config, progress)
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo, json.dumps(data))
    atomic_write_text(public, json.dumps(data, indent=1))
    return RunSensitivity(Culprits.from_json(data, accuracy), "computed", time.perf_counter() - t0, public,
                          time.process_time() - c0)


def compute(model_path: Path, calibrate_dir: Path, config: Any, progress: Progress | None = None) -> dict[str, Any]:
    """`Sensitivity.to_json()` of the int8 plan calibrate's thresholds give, on its first sample."""
    import numpy as np
    import onnx

    from engine.accuracy.sensitivity import analyse
    from engine.quantize.planner import Calibration, QuantOptions, make_plan
    from engine.stages.calibrate import load_thresholds

    model = onnx.load(str(model_path))
    found = load_thresholds(calibrate_dir / "thresholds.json")
    # without mixed precision's node_info: the ranking is of the int8 plan, as calibrate ranks it
    calibration = Calibration(found, {}, found.bias_corrections)
    plan = make_plan(model, calibration, QuantOptions.from_config(config))
    with np.load(calibrate_dir / "first_sample.npz") as z:
        sample = {k: z[k] for k in z.files}
    return analyse(model, plan, [sample], None, progress=progress).to_json()


def _entry(cache: StageCache, report: Any, name: str) -> Path | None:
    stage = report.stage(name)
    return cache.lookup(name, stage.key) if stage is not None and stage.key else None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["RunSensitivity", "compute", "run_sensitivity"]
