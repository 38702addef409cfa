"""The measured jobs of `bench_quantize`, each run alone in a fresh process (`bench.common.run_child`).

    python -m bench.quantize_jobs '{"job": "ours", ...}'

- ``ours``: a cold `Engine` over a config up to the quantize stage: wall seconds per stage (from
  `RunReport.stages`), CPU seconds per stage (process user+sys between stage starts), peak RSS.
- ``float``: the peers of calibration: a plain onnxruntime float pass of the optimized model over
  the samples, and the same pass with every tensor the calibrate stage observes
  (`engine.quantize.planner.plan_tensors`) added as an output (session build + runs).
- ``ort``: `onnxruntime.quantization.quantize_static` (QDQ, per-channel weights, MinMax /
  Entropy / Percentile) on the same samples, in seconds and peak RSS.

Every job reports `peak_rss_mb` = this process's peak RSS (VmHWM); the process does nothing else.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import child_result


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, the high-water mark of its own memory map.

    Not `ru_maxrss`: Linux carries that over from the parent through fork + exec, so every job
    started from a 200 MB benchmark process would read at least 200 MB.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_samples(folder: str | Path, count: int | None = None) -> list[np.ndarray]:
    """The calibration folder's `.npy` samples, in file-name order (as the engine reads them)."""
    files = sorted(Path(folder).glob("*.npy"))[:count]
    return [np.load(f, allow_pickle=False).astype(np.float32) for f in files]


def job_ours(p: dict[str, Any]) -> dict[str, Any]:
    """One cold engine run; CPU time per stage from the progress callback's stage starts.

    Every engine module is imported first (`engine.pipeline.preload`), as the ORT job imports
    `onnxruntime.quantization` before its clock starts: both time the work, not Python's imports
    (the stages import what they need lazily: `engine.accuracy` alone was 24-40 ms of digits'
    calibrate stage when it was timed).
    """
    from engine.pipeline import Engine, preload

    preload()

    starts: dict[str, tuple[float, float, float]] = {}

    def progress(stage: str, message: str, fraction: float | None) -> None:
        if stage not in starts:
            starts[stage] = (time.perf_counter(), cpu_seconds(), peak_rss_mb())

    split, split_cpu = _time_calibrate_steps()
    report = Engine().run(p["config"], until=p.get("until", "quantize"), progress=progress)
    end = (time.perf_counter(), cpu_seconds(), peak_rss_mb())
    if not report.ok:
        return {"error": "; ".join(pr.render() for pr in report.problems)[:300] or "run failed"}
    order = [s.name for s in report.stages if s.name in starts]
    cpu, rss = {}, {}
    for i, name in enumerate(order):
        stop = starts[order[i + 1]] if i + 1 < len(order) else end
        cpu[name], rss[name] = stop[1] - starts[name][1], stop[2]
    cal = report.results.get("calibrate", {})
    return {"stages": {s.name: s.seconds for s in report.stages}, "cpu": cpu, "peak_rss_mb": end[2],
            "stage_rss_mb": rss,  # peak RSS at the end of each stage (the engine's own uses ru_maxrss)
            "calibrate_split": split, "calibrate_split_cpu": split_cpu,  # seconds, process CPU seconds
            "histogram_kernel": _kernel_status(),
            "method": cal.get("method"), "search_cosines": cal.get("cosines"), "tensors": cal.get("tensors"),
            "samples": cal.get("samples"), "batch": cal.get("batch")}


def _kernel_status() -> str:
    try:
        from engine.calibration.stats import kernel_status
    except ImportError:
        return "numpy"
    return kernel_status()


def _time_calibrate_steps() -> tuple[dict[str, float], dict[str, float]]:
    """Seconds (wall, and CPU of the whole process) the calibrate stage spends in its steps, by
    wrapping the functions it looks up when it runs: statistics (forward passes + histograms), their
    merge over samples, the threshold search, the accuracy steps (bias correction, sensitivity,
    mixed precision). A step the engine does not have is left out."""
    import importlib

    split: dict[str, float] = {}
    split_cpu: dict[str, float] = {}
    steps = (("engine.stages.calibrate", "collect_stats", "statistics"),
             ("engine.stages.calibrate", "merge_samples", "merge"),
             ("engine.quantize.search", "choose_thresholds", "threshold search"),
             ("engine.stages.calibrate", "collect_channel_means", "bias-correction means"),
             ("engine.accuracy", "improve", "accuracy steps"))
    for module_name, name, label in steps:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        fn = getattr(module, name, None)
        if fn is None:
            continue

        def timed(*args: Any, _fn: Any = fn, _label: str = label, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), cpu_seconds()
            try:
                return _fn(*args, **kwargs)
            finally:
                split[_label] = split.get(_label, 0.0) + time.perf_counter() - t
                split_cpu[_label] = split_cpu.get(_label, 0.0) + cpu_seconds() - c

        setattr(module, name, timed)
    return split, split_cpu


def job_float(p: dict[str, Any]) -> dict[str, Any]:
    """Plain float pass, and float pass + every observed tensor as an output (what calibration needs)."""
    import onnx
    import onnxruntime as ort

    from engine.calibration.observer import cpu_count, with_outputs
    from engine.config import read_config
    from engine.quantize.planner import QuantOptions, plan_tensors

    samples = load_samples(p["samples"], p.get("count"))
    model = onnx.load(p["model"])
    name = model.graph.input[0].name
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_count()
    options.inter_op_num_threads = 1
    out: dict[str, Any] = {"samples": len(samples)}

    plain = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    t, c = time.perf_counter(), cpu_seconds()
    for x in samples:
        plain.run(None, {name: x})
    out["plain_run"], out["plain_cpu"] = time.perf_counter() - t, cpu_seconds() - c
    del plain

    t, c = time.perf_counter(), cpu_seconds()
    tensors = plan_tensors(model, QuantOptions.from_config(read_config(p["config"]).config))
    augmented = with_outputs(model, tensors)
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch = [o.name for o in session.get_outputs()]
    out["aug_session"] = time.perf_counter() - t
    t2 = time.perf_counter()
    nbytes = 0
    for x in samples:
        values = session.run(fetch, {name: x})
        nbytes = sum(v.nbytes for v in values)
        del values
    out["aug_run"] = time.perf_counter() - t2
    out["aug_total"] = time.perf_counter() - t
    out["aug_cpu"] = cpu_seconds() - c
    out["tensors"], out["observed_mb_per_sample"] = len(tensors), nbytes / 1e6
    out["peak_rss_mb"] = peak_rss_mb()
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the sample list, with the `__len__` /
    `set_range` that its `CalibStridedMinMax` option (calibrate in strides of N samples) needs."""

    def __init__(self, name: str, samples: list[np.ndarray]):
        self.name, self.samples = name, samples
        self.set_range(0, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.samples[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def job_ort(p: dict[str, Any]) -> dict[str, Any]:
    """`quantize_static` as onnxruntime documents it for CPU: QDQ, per-channel int8 weights;
    ``stride``: its CalibStridedMinMax option (histograms merged over strides of that many samples)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    samples = load_samples(p["samples"], p.get("count"))
    name = onnx.load(p["model"], load_external_data=False).graph.input[0].name
    method = getattr(CalibrationMethod, p["method"])
    extra = {"CalibStridedMinMax": p["stride"]} if p.get("stride") else {}
    t, c = time.perf_counter(), cpu_seconds()
    try:
        quantize_static(p["model"], p["output"], _Reader(name, samples), quant_format=QuantFormat.QDQ,
                        per_channel=True, calibrate_method=method, extra_options=extra)
    except MemoryError:
        return {"error": "out of memory", "seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    return {"seconds": time.perf_counter() - t, "cpu": cpu_seconds() - c, "peak_rss_mb": peak_rss_mb(),
            "samples": len(samples)}


JOBS = {"ours": job_ours, "float": job_float, "ort": job_ort}


if __name__ == "__main__":
    payload = json.loads(sys.argv[1])
    child_result(JOBS[payload["job"]](payload))
