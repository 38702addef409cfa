"""The deployable model against the float model it came from (issue #5's numbers).

Per model (the bundled digits model; PP-OCRv4 det at 1x3x640x640 with text-photo calibration):
`.hbm` throughput vs the float model in onnxruntime at the same thread count, `.bc` vs `.hbm`
bit-exactness over 100 inputs, and the static estimate beside the latency measured here.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table  # noqa: E402

THREADS = 2


def median_ms(fn, feeds_list, repeat: int = 3) -> float:
    for feeds in feeds_list[:3]:
        fn(feeds)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for feeds in feeds_list:
            fn(feeds)
        times.append((time.perf_counter() - t) / len(feeds_list))
    return statistics.median(times) * 1e3


def compile_digits(work: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    src = REPO / "examples" / "digits"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("model_output"))
    from engine.pipeline import Engine

    report = Engine().run(work / "digits.hb.yaml")
    assert report.ok, [p.render() for p in report.problems]
    out = work / "model_output"
    images = np.load(work / "heldout.npz")["images"]
    rt = [{"input": images[i:i + 1]} for i in range(100)]
    fl = [{"input": images[i:i + 1].astype(np.float32)} for i in range(100)]
    return out / "digits_original_float_model.onnx", out / "digits.hbm", rt, fl


def compile_det(work: Path) -> tuple[Path, Path, list[dict], list[dict]] | None:
    from bench.images import det_samples, write_npy
    from tests.support.ppocr import ppocr_models

    models = ppocr_models()
    if not models:
        return None
    work.mkdir(parents=True)
    write_npy(det_samples(16, 640, 640), work / "cal")
    (work / "det.hb.yaml").write_text(f"""model_parameters:
  onnx_model: {models['det']}
  march: nash-e
  working_dir: out
  output_model_file_prefix: det
input_parameters:
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: rgb
  input_shape: 1x3x640x640
  mean_value: 127.5
  scale_value: 0.00784313725490196
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
  max_percentile: 0.99995
compiler_parameters:
  optimize_level: O2
  jobs: {THREADS}
""")
    from engine.pipeline import Engine

    report = Engine().run(work / "det.hb.yaml")
    assert report.ok, [p.render() for p in report.problems]
    held = det_samples(8, 640, 640, seed=1)
    rt = [{"x": s.transpose(0, 2, 3, 1).copy()} for s in held]  # rgb runtime view: uint8 NHWC
    fl = [{"x": s.astype(np.float32)} for s in held]
    return work / "out" / "det_original_float_model.onnx", work / "out" / "det.hbm", rt, fl


def measure(name: str, float_path: Path, hbm_path: Path, rt_feeds: list[dict], fl_feeds: list[dict]) -> tuple:
    import onnxruntime as ort

    from engine.runtime import load

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    fsess = ort.InferenceSession(str(float_path), so, providers=["CPUExecutionProvider"])
    fname = fsess.get_inputs()[0].name
    fl_feeds = [{fname: next(iter(f.values()))} for f in fl_feeds]
    hbm = load(hbm_path, threads=THREADS)
    hname = hbm.inputs[0].name
    rt_feeds = [{hname: next(iter(f.values()))} for f in rt_feeds]
    t_float = median_ms(lambda f: fsess.run(None, f), fl_feeds)
    t_hbm = median_ms(hbm.run, rt_feeds)
    bc = load(hbm_path.with_name(hbm_path.name.replace(".hbm", "_quantized_model.bc")), threads=THREADS)
    inputs = (rt_feeds * (100 // len(rt_feeds) + 1))[:100]
    rng = np.random.default_rng(0)
    mismatches = 0
    for i, f in enumerate(inputs):
        if i >= len(rt_feeds):  # beyond the real samples: perturbed copies, still valid pixels
            f = {k: np.clip(v.astype(np.int16) + rng.integers(-8, 9, v.shape), 0, 255).astype(v.dtype)
                 for k, v in f.items()}
        a, b = bc.run(f), hbm.run(f)
        mismatches += any(not np.array_equal(a[k], b[k]) for k in a)
    perf = json.loads(hbm_path.with_suffix(".json").read_text())["summary"]
    est = perf.get("latency (ms)")
    return (name, f"{t_float:.2f}", f"{t_hbm:.2f}", f"{t_float / t_hbm:.2f}x",
            "PASS" if t_float / t_hbm >= 2 else "MISS", f"{100 - mismatches}/100",
            f"{est:.3f}" if est is not None else "--", f"{t_hbm:.2f}")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("digits", *compile_digits(Path(tmp) / "digits")))
        det = compile_det(Path(tmp) / "det")
        if det is None:
            print("bench_compile: PP-OCRv4 det skipped (models cannot be fetched)")
        else:
            rows.append(measure("PP-OCRv4 det 640", *det))
    print_table(f".hbm vs float model, onnxruntime CPU, {THREADS} threads (median ms per inference)", rows,
                ("model", "float ms", ".hbm ms", "speed-up", ">=2x", ".bc==.hbm bits", "estimate ms (march)",
                 "measured ms"))


if __name__ == "__main__":
    main()
