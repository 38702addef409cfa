"""Calibration + quantization (issue #3): ours vs onnxruntime's `quantize_static` vs a float pass.

On the bundled digits model and on PP-OCRv4 det (1x3x640x640), with the same 32 calibration
samples, every job in its own fresh process (`bench.quantize_jobs`), all in one run:

- ours: a cold `Engine` run; calibrate + ptq + quantize seconds (per-stage split, wall and CPU)
  with `calibration_type` max and default (default tries max / percentile / kl / mix and keeps
  the best by output cosine);
- onnxruntime `quantize_static` (QDQ, per-channel weights) with MinMax and Entropy, each capped at
  8 GB of address space and a time limit ("out of memory" / "timeout" instead of a crash); when
  Entropy runs out of memory (it keeps every sample's activations: ~0.7 GB each on det) it runs
  again with its own `CalibStridedMinMax` option (histograms merged over strides of 8 samples);
- a plain float pass over the samples, and the float pass that also outputs every tensor the
  calibrate stage observes (session build + runs): the least work any calibration must do; the
  issue's "calibration ≤ 1.5x" target compares the calibrate stage's statistics pass with it
  (`collect_stats`, wall and process CPU, timed in the job's process);
- peak RSS (VmHWM) of our run, calibration_type default, at 16 and at 128 samples;
- output cosine against the float model on held-out samples: our calibrated model (fake quant)
  and our `.bc` fed its runtime format (uint8 pixels), ORT's QDQ model as onnxruntime runs it;
  digits top-1 on its 500 held-out images.

Timed jobs run REPEAT (2) times, interleaved, and the fastest run counts: the machine may be
shared, and interleaving gives every tool the same spells of load. Verdicts use wall time.
Below each table: where our calibrate stage spends its time (statistics, threshold search,
accuracy steps), timed by wrapping those functions in the job's process.

Data. digits: the example's 32 calibration files (128 for the RSS run: the same balanced pick from
the training split), the 500 held-out images. det: scikit-image photos with words rendered on them
(`bench.images`), 32 calibration + 8 held-out, RGB NCHW uint8 with `(x/255 - 0.5) / 0.5`
(mean_value 127.5, scale_value 1/127.5) in the config; rgb, not PaddleOCR's BGR, because the photos
are RGB and the benchmark compares tools, not OCR accuracy. ORT gets our parse stage's
`*_original_float_model.onnx` (opset 17, static shape, the same normalization inside, so it reads
the same sample files) after its own `quant_pre_process` (untimed, like our parse + optimize):
DESIGN §5 notes that its per-channel QDQ output of an opset 11/12 model does not load.

Usage: ``python bench/run.py quantize`` (part of ``make bench``); ``python -m bench.bench_quantize
digits`` for one model. Environment: ``HB_BENCH_REPEAT`` (default 2; a job whose first run took
over a minute runs once), ``HB_BENCH_DET_RSS_SIZE`` (default 320: det's input size for the 16 / 128
sample RSS runs, which keeps `make bench` near 15 minutes while calibrate runs the accuracy steps;
640 is the real size).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table, run_child  # noqa: E402
from bench.images import write_npy  # noqa: E402

JOBS = "bench.quantize_jobs"
MEMORY_GB = 8.0
ORT_TIMEOUT = 420.0
OURS_TIMEOUT = 600.0
CALIBRATION = 32
REPEAT = int(os.environ.get("HB_BENCH_REPEAT", "2"))  # timed jobs: best of this many runs
RSS_COUNTS = (16, 128)
ORT_METHODS = ("MinMax", "Entropy")
OURS_TYPES = ("max", "default")  # issue #3's (default also tries mix's per-tensor thresholds)
LONG_RUN = 60.0  # seconds: a job whose first run took longer is not repeated (keeps make bench near 15 min)
ORT_STRIDE = 8  # Entropy keeps every sample's activations (~0.7 GB each on det): its CalibStridedMinMax option
DIGITS = REPO / "examples" / "digits"

# issue #3's targets
TIME_VS_ENTROPY = 0.5
CAL_VS_FLOAT = 1.5
RSS_GROWTH = 1.2
TOP1_DROP = 0.5  # points


@dataclass
class Case:
    """One model of the benchmark: its config, its samples, its held-out set."""

    name: str
    model: Path
    input_name: str
    shape: list[int]
    inputs_yaml: str  # input_parameters apart from input_name / input_shape
    calibration: Callable[[int, list[int]], list[np.ndarray]]  # (count, shape) → train-view uint8 samples
    heldout: list[np.ndarray]
    labels: np.ndarray | None = None
    rss_shape: list[int] | None = None  # input shape of the RSS runs (None: `shape`)

    def config(self, folder: Path, cal_dir: Path, calibration_type: str, shape: list[int] | None = None) -> Path:
        path = folder / f"{self.name}_{calibration_type}_{cal_dir.name}.yaml"
        path.write_text(f"""model_parameters:
  onnx_model: {self.model}
  march: nash-e
  working_dir: {folder / f"out_{calibration_type}_{cal_dir.name}"}
  output_model_file_prefix: {self.name}
input_parameters:
  input_name: {self.input_name}
  input_shape: {'x'.join(map(str, shape or self.shape))}
{self.inputs_yaml}calibration_parameters:
  cal_data_dir: {cal_dir}
  calibration_type: {calibration_type}
""")
        return path


def digits_case() -> Case:
    sys.path.insert(0, str(DIGITS))
    from digits_data import load_split
    from make_calibration import balanced_indices

    split = load_split()

    def calibration(count: int, shape: list[int]) -> list[np.ndarray]:
        """The example's own pick (its first 32 are the bundled calibration files)."""
        chosen = balanced_indices(split.train_labels, count)
        return [split.train_images[i][None].copy() for i in chosen]

    bundled = sorted((DIGITS / "calibration_data").iterdir())
    mine = calibration(CALIBRATION, [1, 1, 32, 32])
    assert all(np.array_equal(np.fromfile(f, np.uint8).reshape(1, 1, 32, 32), s) for f, s in zip(bundled, mine))
    held = np.load(DIGITS / "heldout.npz")
    return Case("digits", DIGITS / "digits.onnx", "input", [1, 1, 32, 32],
                "  input_type_train: gray\n  input_layout_train: NCHW\n  input_type_rt: gray\n"
                "  scale_value: 0.00392156862745098\n",
                calibration, [im[None] for im in held["images"]], held["labels"])


def det_case() -> Case | None:
    from bench.images import det_samples
    from tests.support.ppocr import ppocr_models, why_missing

    models = ppocr_models()
    if not models:
        print(f"bench_quantize: PP-OCRv4 det skipped ({why_missing()})")
        return None
    size = int(os.environ.get("HB_BENCH_DET_RSS_SIZE", "320"))  # 128 samples at 640 take 5.5 min with the accuracy steps
    return Case("det", models["det"], "x", [1, 3, 640, 640],
                "  input_type_train: rgb\n  input_layout_train: NCHW\n  input_type_rt: rgb\n"
                "  mean_value: 127.5\n  scale_value: 0.00784313725490196\n",
                lambda count, shape: det_samples(count, shape[2], shape[3], seed=0),
                det_samples(8, 640, 640, seed=1), rss_shape=[1, 3, size, size])


# ------------------------------------------------------------------------------------ running
@dataclass
class Measured:
    ours: dict[str, dict[str, Any]] = field(default_factory=dict)  # calibration_type → job result
    floats: dict[str, Any] = field(default_factory=dict)
    ort: dict[str, dict[str, Any]] = field(default_factory=dict)  # label → job result
    rss: dict[int, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)  # label → model to evaluate
    float_model: Path | None = None
    rss_shape: list[int] | None = None


def say(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Timed:
    """One timed job, run REPEAT times interleaved with the others (the machine may be shared: the
    fastest run is the least disturbed, and every tool sees the same spells of load)."""

    label: str
    payload: dict[str, Any]
    seconds: Callable[[dict[str, Any]], float]
    fresh: Path | None = None  # a working_dir removed before each run, so every run is cold
    timeout: float = OURS_TIMEOUT
    repeat: int = REPEAT
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None

    def run(self) -> None:
        if self.error is not None or len(self.runs) >= self.repeat:
            return
        if self.runs and self.seconds(self.runs[0]) > LONG_RUN:
            self.repeat = len(self.runs)  # load noise matters little next to a minute; the time budget does
            return
        if self.fresh is not None:
            shutil.rmtree(self.fresh, ignore_errors=True)
        say(f"{self.label} (run {len(self.runs) + 1} of {self.repeat})")
        r = run_child(JOBS, self.payload, MEMORY_GB, self.timeout)
        if "error" in r:
            self.error = r
        else:
            self.runs.append(r)

    @property
    def best(self) -> dict[str, Any]:
        if self.error is not None:
            return self.error
        best = dict(min(self.runs, key=self.seconds))
        best["all_seconds"] = [round(self.seconds(r), 3) for r in self.runs]
        return best


def _ours_total(r: dict[str, Any]) -> float:
    return sum(r["stages"][s] for s in ("calibrate", "ptq", "quantize"))


def measure(case: Case, work: Path) -> Measured:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = Measured()
    say(f"{case.name}: {CALIBRATION} calibration samples")
    cal = write_npy(case.calibration(CALIBRATION, case.shape), work / f"cal{CALIBRATION}")
    ours: dict[str, Timed] = {}
    for kind in OURS_TYPES:
        out = work / f"out_{kind}_{cal.name}"
        ours[kind] = Timed(f"{case.name}: ours, calibration_type {kind}",
                           {"job": "ours", "config": str(case.config(work, cal, kind))}, _ours_total, fresh=out)
        m.models[f"ours {kind} calibrated"] = out / f"{case.name}_calibrated_model.onnx"
        m.models[f"ours {kind} .bc"] = out / f"{case.name}_quantized_model.bc"
    out = work / f"out_{OURS_TYPES[0]}_{cal.name}"  # the first job's parse / optimize artefacts serve the peers
    m.float_model = out / f"{case.name}_original_float_model.onnx"
    floats = Timed(f"{case.name}: float pass, with and without the observed tensors",
                   {"job": "float", "model": str(out / f"{case.name}_optimized_float_model.onnx"), "samples": str(cal),
                    "config": str(case.config(work, cal, OURS_TYPES[0]))}, lambda r: r["aug_total"])
    pre = work / f"{case.name}_ort_input.onnx"
    ort: dict[str, Timed] = {}
    for method in ORT_METHODS:
        dest = work / f"ort_{method}.onnx"
        ort[method] = Timed(f"{case.name}: onnxruntime quantize_static {method} (cap {MEMORY_GB:g} GB, "
                            f"{ORT_TIMEOUT:g} s)", {"job": "ort", "model": str(pre), "output": str(dest),
                                                     "samples": str(cal), "method": method},
                            lambda r: r["seconds"], timeout=ORT_TIMEOUT)
        m.models[f"ORT {method}"] = dest
    for _ in range(REPEAT):
        for job in ours.values():
            job.run()
        if not pre.is_file():
            quant_pre_process(str(m.float_model), str(pre), skip_symbolic_shape=True)
        floats.run()
        for method, job in list(ort.items()):
            job.run()
            if job.error and job.error["error"] == "out of memory" and "stride" not in job.payload:
                label = f"{method}, strides of {ORT_STRIDE}"
                if label not in ort:  # its own option for this: calibrate in strides, merge the histograms
                    dest = work / f"ort_{method}_stride.onnx"
                    ort[label] = Timed(f"{case.name}: onnxruntime {method} ran out of memory; with "
                                       f"CalibStridedMinMax={ORT_STRIDE}", {**job.payload, "output": str(dest),
                                                                             "stride": ORT_STRIDE},
                                       job.seconds, timeout=ORT_TIMEOUT, repeat=1)
                    m.models[f"ORT {label}"] = dest
                    ort[label].run()
    m.ours = {k: j.best for k, j in ours.items()}
    m.floats = floats.best
    m.ort = {k: j.best for k, j in ort.items()}
    m.rss_shape = case.rss_shape or case.shape
    for count in RSS_COUNTS:
        folder = write_npy(case.calibration(count, m.rss_shape), work / f"rss{count}")
        say(f"{case.name}: ours, default, {count} samples at {'x'.join(map(str, m.rss_shape))} (peak RSS)")
        cfg = case.config(work, folder, "default", m.rss_shape)
        m.rss[count] = run_child(JOBS, {"job": "ours", "config": str(cfg)}, MEMORY_GB, OURS_TIMEOUT)
    return m


# --------------------------------------------------------------------------------- evaluation
def evaluate(case: Case, m: Measured) -> dict[str, dict[str, float]]:
    """Mean output cosine vs the float model on the held-out samples (and top-1 with labels)."""
    import onnx
    import onnxruntime as ort

    from engine.calibration.observer import cpu_count
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import session_options
    from engine.similarity import cosine

    def onnx_runner(path: Path, basic: bool) -> Callable[[np.ndarray], list[np.ndarray]]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_count()
        options.log_severity_level = 3
        if basic:  # keep our fake-quant pairs as written (what "Calibrated Cosine" means)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.astype(np.float32)})

    def bc_runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
        """The `.bc` as the quantize stage checks it: its runtime input (uint8 pixels), its session options."""
        bc = onnx.load(str(path))
        spec = json.loads({p.key: p.value for p in bc.metadata_props}["hbcompile.inputs"])[0]
        session = ort.InferenceSession(bc.SerializeToString(), session_options(cpu_count()),
                                       providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {spec["name"]: to_runtime(
            x.astype(np.float32), spec["input_type_rt"], spec["input_type_train"], spec["input_layout_train"],
            spec.get("input_space_and_range") or "regular", spec.get("input_layout_rt"))})

    reference = onnx_runner(m.float_model, False)
    want = [reference(x) for x in case.heldout]
    results: dict[str, dict[str, float]] = {"float": {"cosine": 1.0}}
    if case.labels is not None:
        results["float"]["top1"] = _top1(want, case.labels)
    for label, path in m.models.items():
        if not path.is_file():
            continue
        run = bc_runner(path) if path.suffix == ".bc" else onnx_runner(path, basic=label.startswith("ours"))
        got = [run(x) for x in case.heldout]
        cos = [np.mean([cosine(a, b) for a, b in zip(w, g, strict=True)]) for w, g in zip(want, got, strict=True)]
        results[label] = {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
        if case.labels is not None:
            results[label]["top1"] = _top1(got, case.labels)
    return results


def _top1(outputs: list[list[np.ndarray]], labels: np.ndarray) -> float:
    return 100.0 * float(np.mean([int(np.argmax(o[0])) == int(y) for o, y in zip(outputs, labels, strict=True)]))


# ------------------------------------------------------------------------------------- tables
def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _entropy_peer(m: Measured) -> tuple[str, float | None]:
    """ORT Entropy as quantize_static runs it by default, else with CalibStridedMinMax."""
    for label, r in m.ort.items():
        if label.startswith("Entropy") and "error" not in r:
            return label, r["seconds"]
    return "Entropy", None


def report(case: Case, m: Measured, quality: dict[str, dict[str, float]]) -> list[tuple]:
    """Print the model's table; return its target rows (model, target, measured, limit, PASS/MISS)."""
    f = m.floats
    plain, aug = f.get("plain_run"), f.get("aug_total")
    entropy_label, entropy_s = _entropy_peer(m)
    top1 = case.labels is not None

    def q(label: str, key: str = "cosine", spec: str = ".5f") -> str:
        return _fmt(quality.get(label, {}).get(key), spec)

    def row(method: str, samples: Any, stages: tuple, total: float | None, cpu: float | None, rss: float | None,
            cal: str, quant: str, acc: str) -> tuple:
        return (method, samples, *stages, _fmt(total), _fmt(cpu), _ratio(total, plain), _ratio(total, aug),
                _ratio(total, entropy_s), _fmt(rss, ".0f"), cal, quant) + ((acc,) if top1 else ())

    n = f.get("samples", CALIBRATION)
    rows = [row("float pass", n, ("-", "-", "-"), plain, f.get("plain_cpu"), None, "1", "1", q("float", "top1", ".1f")),
            row(f"float pass + {f.get('tensors', '?')} observed tensors", n, ("-", "-", "-"), aug, f.get("aug_cpu"),
                f.get("peak_rss_mb"), "-", "-", "-")]
    for kind, r in m.ours.items():
        if "error" in r:
            rows.append((f"ours {kind}", n, "-", "-", "-", r["error"][:60], "-", "-", "-", "-", "-", "-", "-")
                        + (("-",) if top1 else ()))
            continue
        st = r["stages"]
        cpu = sum(r["cpu"].get(s, 0.0) for s in ("calibrate", "ptq", "quantize"))
        rows.append(row(f"ours {kind} (chose {r.get('method')})", n, tuple(_fmt(st[s]) for s in
                                                                         ("calibrate", "ptq", "quantize")),
                        _ours_total(r), cpu, r["peak_rss_mb"], q(f"ours {kind} calibrated"), q(f"ours {kind} .bc"),
                        q(f"ours {kind} .bc", "top1", ".1f")))
    for label, r in m.ort.items():
        if "error" in r:
            rss = f">{MEMORY_GB * 1024:.0f}" if r["error"] == "out of memory" else "-"
            rows.append((f"ORT {label}", n, "-", "-", "-", r["error"], "-", "-", "-", "-", rss, "-", "-")
                        + (("-",) if top1 else ()))
            continue
        rows.append(row(f"ORT {label}", r.get("samples", n), ("-", "-", "-"), r["seconds"], r["cpu"],
                        r["peak_rss_mb"], "-", q(f"ORT {label}"), q(f"ORT {label}", "top1", ".1f")))
    shape = "x".join(map(str, case.shape))
    print_table(f"{case.name} {shape}: calibration + quantization; cosine vs float on {len(case.heldout)} held-out "
                f"samples (wall seconds, best of {REPEAT}; ratios against peers of this run)", rows,
                ("method", "samples", "calibrate", "ptq", "quantize", "total s", "CPU s", "x float", "x float+obs",
                 f"x ORT {entropy_label}", "peak RSS MB", "cos calibrated", "cos deployed")
                + (("top-1 %",) if top1 else ()))
    print("  ours total = calibrate + ptq + quantize of a cold engine run (parse / optimize not counted, nor ORT's "
          "quant_pre_process); cos deployed = our .bc on uint8 pixels / ORT's QDQ model in onnxruntime")
    for kind, r in m.ours.items():
        if "error" not in r:
            split = ", ".join(f"{s} {r['stages'][s]:.2f} s ({r['cpu'].get(s, 0):.2f} CPU s)"
                              for s in ("parse", "optimize", "calibrate", "ptq", "quantize"))
            cos = ", ".join(f"{k} {v:.5f}" for k, v in (r.get("search_cosines") or {}).items())
            cpu = r.get("calibrate_split_cpu") or {}
            steps = ", ".join(f"{k} {v:.3f} s ({cpu[k]:.3f} CPU s)" if k in cpu else f"{k} {v:.3f} s"
                              for k, v in (r.get("calibrate_split") or {}).items())
            print(f"  ours {kind}: {split}; runs {r['all_seconds']} s\n    calibrate's steps: {steps}; "
                  f"histogram kernel: {r.get('histogram_kernel', '-')}; search cosines: {cos}")
    if f:
        print(f"  float pass + observed tensors: session {f['aug_session']:.2f} s + runs {f['aug_run']:.2f} s, "
              f"{f['observed_mb_per_sample']:.0f} MB observed per sample; runs {f['all_seconds']} s")
    for label, r in m.ort.items():
        if "error" not in r:
            print(f"  ORT {label}: runs {r['all_seconds']} s")

    targets = []
    best_ort = max((v["cosine"] for k, v in quality.items() if k.startswith("ORT")), default=None)
    for kind in ("max", "default"):  # issue #3's calibration types
        r = m.ours.get(kind, {"error": "not run"})
        if "error" in r:
            continue
        total, cos = _ours_total(r), quality.get(f"ours {kind} .bc", {}).get("cosine")
        if entropy_s is not None:
            ratio = total / entropy_s
            ok = ratio <= TIME_VS_ENTROPY and cos is not None and (best_ort is None or cos >= best_ort)
            targets.append((case.name, f"{kind}: time vs ORT {entropy_label}; cosine vs ORT's best",
                            f"{ratio:.2f}x; {_fmt(cos, '.5f')} vs {_fmt(best_ort, '.5f')}",
                            f"<= {TIME_VS_ENTROPY}x; >=", "PASS" if ok else "MISS"))
        else:
            targets.append((case.name, f"{kind}: time vs ORT Entropy", f"ORT: {m.ort.get('Entropy', {}).get('error')}",
                            f"<= {TIME_VS_ENTROPY}x", "n/a"))
        statistics = (r.get("calibrate_split") or {}).get("statistics")
        if aug and statistics is not None:  # issue #3's calibration: the statistics pass of the calibrate stage
            ratio = statistics / aug
            cpu = (r.get("calibrate_split_cpu") or {}).get("statistics")
            cpu_ratio = f" (CPU {cpu / f['aug_cpu']:.2f}x)" if cpu is not None and f.get("aug_cpu") else ""
            targets.append((case.name, f"{kind}: calibration statistics vs float pass + observed tensors",
                            f"{statistics:.2f} / {aug:.2f} s = {ratio:.2f}x{cpu_ratio}", f"<= {CAL_VS_FLOAT}x",
                            "PASS" if ratio <= CAL_VS_FLOAT else "MISS"))
        if top1 and cos is not None:
            drop = quality["float"]["top1"] - quality[f"ours {kind} .bc"]["top1"]
            targets.append((case.name, f"{kind}: top-1 drop, .bc vs float", f"{drop:.1f} pt", f"<= {TOP1_DROP} pt",
                            "PASS" if drop <= TOP1_DROP else "MISS"))
    small, large = (m.rss.get(c, {}) for c in RSS_COUNTS)
    shape = "x".join(map(str, m.rss_shape or case.shape))
    if "peak_rss_mb" in small and "peak_rss_mb" in large:
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        targets.append((case.name, f"default: peak RSS, {RSS_COUNTS[1]} vs {RSS_COUNTS[0]} samples at {shape}",
                        f"{large['peak_rss_mb']:.0f} / {small['peak_rss_mb']:.0f} MB = {ratio:.2f}x",
                        f"<= {RSS_GROWTH}x", "PASS" if ratio <= RSS_GROWTH else "MISS"))
        for c in RSS_COUNTS:
            r = m.rss[c]
            print(f"  peak RSS run, {c} samples at {shape}: {r['peak_rss_mb']:.0f} MB (after each stage: " +
                  ", ".join(f"{k} {v:.0f}" for k, v in r["stage_rss_mb"].items() if v) +
                  f"), calibrate {r['stages']['calibrate']:.2f} s")
    else:
        targets.append((case.name, "peak RSS 128 vs 16 samples", f"{small.get('error')} / {large.get('error')}",
                        f"<= {RSS_GROWTH}x", "MISS"))
    return targets


def main() -> None:
    only = [a for a in sys.argv[1:] if a in ("digits", "det")]
    t0 = time.perf_counter()
    targets = []
    with tempfile.TemporaryDirectory(prefix="hb_bench_quantize_") as tmp:
        for make in (digits_case, det_case):
            if only and make.__name__.split("_")[0] not in only:
                continue
            case = make()
            if case is None:
                continue
            work = Path(tmp) / case.name
            work.mkdir()
            m = measure(case, work)
            say(f"{case.name}: held-out evaluation")
            quality = evaluate(case, m)
            targets += report(case, m, quality)
    print_table(f"issue #3 targets ({time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s, "
                f"{os.cpu_count()} cores)", targets, ("model", "target", "measured", "limit", "result"))


if __name__ == "__main__":
    main()
