"""The accuracy steps through the pipeline: mixed precision decided in calibrate, applied by every
later stage, visible in the table, reproducible from the node_info it prints."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from engine.pipeline import Engine
from tests.unit.accuracy.acc_models import outlier_chain, samples

CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: chain
{node_info}input_parameters:
  input_name: x
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x16x16
calibration_parameters:
  cal_data_dir: cal
  cal_data_type: float32
  calibration_type: max
  target_output_cosine: {target}
  accuracy_samples: 4
  sensitivity: 3
"""


@pytest.fixture
def chain(project):
    model = outlier_chain()
    onnx.save(model, str(project.root / "model.onnx"))
    cal = project.root / "cal"
    cal.mkdir()
    for i, s in enumerate(samples(model, 8)):
        np.save(cal / f"s{i}.npy", s["x"])
    return project


def rows(report) -> dict[str, dict]:
    return {r["node"]: r for r in report.results["report"]["nodes"]}


def test_mixed_precision_is_decided_in_calibrate_and_shown_in_the_table(chain, hb_log):
    report = Engine().run(chain.config(CONFIG.format(node_info="", target=0.999)), until="report")
    assert report.ok, [p.render() for p in report.problems]
    mixed = report.results["calibrate"]["mixed_precision"]
    assert mixed["met"] and mixed["before"] < 0.7 < 0.999 <= mixed["after"]
    assert mixed["node_info"] == {"relu_b": {"OutputType": "int16"}}
    table = rows(report)
    assert table["conv_b+relu_b"]["output_dtype"] == "si16" and table["conv_a+relu_a"]["output_dtype"] == "si8"
    assert report.results["report"]["outputs"][0]["quantized_cosine"] > 0.999  # the integer program agrees
    messages = [r.getMessage() for r in hb_log]
    assert any(m.startswith("  conv_b+relu_b -> int16: isolated activation loss") for m in messages)
    assert any('node_info: {"relu_b": {"OutputType": "int16"}}' in m for m in messages)
    assert any(m.startswith("Sensitivity of the quantized nodes") and "conv_b+relu_b" in m for m in messages)
    ranking = json.loads((chain.root / "model_output" / "chain_sensitivity.json").read_text())["ranking"]
    assert ranking[0]["node"] == "conv_b+relu_b" and ranking[0]["culprit"] == "activation"


def test_the_printed_node_info_reproduces_the_result_without_the_search(chain):
    first = Engine().run(chain.config(CONFIG.format(node_info="", target=0.999)), until="report")
    info = first.results["calibrate"]["mixed_precision"]["node_info"]
    pasted = f"  node_info: {json.dumps(info)}\n"
    again = Engine().run(chain.config(CONFIG.format(node_info=pasted, target=0)), until="report")
    assert again.ok and again.results["calibrate"]["mixed_precision"] is None  # no search ran
    assert rows(again)["conv_b+relu_b"]["output_dtype"] == "si16"
    a = first.results["report"]["outputs"][0]["quantized_cosine"]
    b = again.results["report"]["outputs"][0]["quantized_cosine"]
    assert b == pytest.approx(a, abs=1e-6)  # int16 tensors take their max |x| either way


def test_without_a_target_nothing_moves(chain):
    report = Engine().run(chain.config(CONFIG.format(node_info="", target=0)), until="report")
    assert report.ok and report.results["calibrate"]["mixed_precision"] is None
    assert rows(report)["conv_b+relu_b"]["output_dtype"] == "si8"
    assert report.results["report"]["outputs"][0]["quantized_cosine"] < 0.7


@pytest.mark.slow
def test_ppocr_det_reaches_the_issue_targets_on_held_out_photos(tmp_path):
    """PP-OCRv4 det 640×640 with text photos: the `.bc` against the float model on photos that
    were not calibration samples (issue #10: output cosine ≥ 0.99 and DB mask IoU ≥ 0.95 are the
    bench's numbers with 32 samples; this run uses 16 and checks a margin below them)."""
    import onnxruntime as ort

    from bench.bench_accuracy import config_text, metrics, sample
    from engine.preprocess.samples import to_runtime
    from engine.quantize.integer import session_options
    from tests.support.ppocr import ppocr_models, why_missing

    models = ppocr_models()
    if not models:
        pytest.skip(why_missing())
    (tmp_path / "cal").mkdir()
    for i in range(16):
        np.save(tmp_path / "cal" / f"s{i:02d}.npy", sample("det", i, seed=0))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text("det", models["det"], tmp_path, "  accuracy_samples: 4\n"))
    report = Engine().run(cfg, until="quantize")
    assert report.ok, [p.render() for p in report.problems]
    mixed = report.results["calibrate"]["mixed_precision"]
    assert mixed["after"] > mixed["before"] and len(mixed["node_info"]) <= 20  # ≤ 10 % of 199 nodes
    out = tmp_path / "out"
    fl = ort.InferenceSession(str(out / "det_original_float_model.onnx"), providers=["CPUExecutionProvider"])
    bc = ort.InferenceSession(str(out / "det_quantized_model.bc"), session_options(2),
                              providers=["CPUExecutionProvider"])
    held = [sample("det", i, seed=1) for i in range(6)]
    refs = [fl.run(None, {"x": x})[0] for x in held]
    outs = [bc.run(None, {"x": to_runtime(x, "bgr", "bgr", "NCHW", "regular", None)})[0] for x in held]
    m = metrics("det", refs, outs)
    assert m["cosine"] > 0.975 and m["IoU"] > 0.94  # pure int8 measured 0.961 / 0.911 on such photos


def test_the_search_cosine_stands_for_the_accuracy_check_only_on_the_same_samples(tmp_path):
    """Review (session 5, R2 §4): `default` measured 4 samples and cleared target 0.9992; the 8 samples the
    accuracy steps judge (5-8 dimmed) missed it on the ptq model, yet nothing moved."""
    import shutil

    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    for f in sorted((work / "calibration_data").iterdir())[4:8]:
        (np.fromfile(f, np.uint8).astype(np.float32) / 255).round().astype(np.uint8).tofile(f)
    cfg = work / "digits.hb.yaml"
    cfg.write_text(cfg.read_text().replace("calibration_parameters:\n", "calibration_parameters:\n"
                                           "  target_output_cosine: 0.9992\n  mixed_precision_budget: 0.5\n", 1))
    report = Engine().run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    mixed = report.results["calibrate"]["mixed_precision"]
    assert mixed["verified"] is not None or mixed["moved_nodes"] > 0, mixed  # judged on the ptq model
    assert mixed["before"] < 0.9992, mixed  # the 8 samples' int8 plan misses the target
