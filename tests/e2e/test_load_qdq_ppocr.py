"""`calibration_type: load` from onnxruntime's QDQ of the real PP-OCR cls model (F3's finding: the inserted
`HZ_PREPROCESS_FOR_x_*` tensors had no threshold, since the QDQ model quantized the normalized input `x`,
nor had `hardswish_17.tmp_0`, a Div output onnxruntime leaves in float before a MaxPool)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from engine.pipeline import Engine
from tests.support.qdq import ort_qdq

MEAN, SCALE = 127.5, 1 / 127.5


@pytest.fixture(scope="module")
def cls_project(tmp_path_factory):
    from bench.bench_accuracy import sample
    from tests.support.ppocr import ppocr_model, ppocr_models, why_missing

    models = ppocr_models()
    if not models:
        pytest.skip(why_missing())
    root = tmp_path_factory.mktemp("load_qdq_cls")
    onnx.save(ppocr_model("cls", models["cls"]), str(root / "f.onnx"))
    (root / "cal").mkdir()
    xs = [sample("cls", i, 0) for i in range(8)]
    for i, x in enumerate(xs):
        np.save(root / "cal" / f"{i}.npy", x)

    ort_qdq(root / "f.onnx", root / "q.onnx", ({"x": ((x - MEAN) * SCALE).astype(np.float32)} for x in xs), True)
    return root


def compile_cls(root, model: str, extra: str, name: str):
    (root / f"{name}.yaml").write_text(f"""model_parameters:
  onnx_model: {model}
  march: nash-e
  working_dir: out_{name}
  output_model_file_prefix: cls
input_parameters:
  input_name: x
  input_type_train: bgr
  input_layout_train: NCHW
  input_type_rt: bgr
  input_shape: 1x3x48x192
  mean_value: {MEAN}
  scale_value: {SCALE}
calibration_parameters:
  calibration_type: load
{extra}""")
    return Engine().run(root / f"{name}.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["onnx_model", "quant_config"])
def test_load_from_the_qdq_cls_model(cls_project, how, caplog):
    from bench.bench_accuracy import sample
    from engine.runtime import load, to_runtime
    from engine.similarity import cosine

    model, extra = ("q.onnx", "") if how == "onnx_model" else ("f.onnx", "  quant_config: q.onnx\n")
    with caplog.at_level("WARNING", logger="hbcompile"):
        report = compile_cls(cls_project, model, extra + "  cal_data_dir: cal\n", f"{how}_cal")
    assert report.ok, [p.render() for p in report.problems]
    assert "no threshold for 1 tensor ('hardswish_17.tmp_0'): they take max" in caplog.text
    qdq = onnx.load(str(cls_project / "q.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    s, z = float(inits[q.input[1]]), int(inits[q.input[2]])
    x_threshold = 127 * s if z == 128 else s * max(255 - z, z)
    data = json.loads(next((cls_project / f"out_{how}_cal").glob(".hb_cache/calibrate/*/thresholds.json")).read_text())
    assert data["HZ_PREPROCESS_FOR_x_normalized"]["threshold"] == pytest.approx(x_threshold, rel=1e-9)
    assert data["x"]["threshold"] == pytest.approx(x_threshold / SCALE + MEAN, rel=1e-6)
    assert data["hardswish_17.tmp_0"]["method"] == "max"
    assert sum(v["method"] == "load" for v in data.values()) == len(data) - 1
    # the .bc against onnxruntime's run of the QDQ model on held-out lines
    bc = load(cls_project / f"out_{how}_cal" / "cls_quantized_model.bc")
    sess = ort.InferenceSession(str(cls_project / "q.onnx"), providers=["CPUExecutionProvider"])
    (spec,) = bc.inputs
    cos = []
    for i in range(8):
        x = sample("cls", i, 1)
        ours = next(iter(bc.run({"x": to_runtime(x, spec.info)}).values()))
        theirs = sess.run(None, {"x": ((x - MEAN) * SCALE).astype(np.float32)})[0]
        assert ours.argmax() == theirs.argmax(), i
        cos.append(cosine(ours, theirs))
    assert np.mean(cos) > 0.999, cos


@pytest.mark.slow
def test_load_from_the_qdq_cls_model_without_calibration_data_names_the_float_tensor(cls_project):
    report = compile_cls(cls_project, "q.onnx", "", "no_cal")
    assert not report.ok
    (problem,) = report.problems
    assert problem.message.startswith("calibration_type load: no threshold for 'hardswish_17.tmp_0' in the loaded "
                                      "quantization parameters"), problem.message
