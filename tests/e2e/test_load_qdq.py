"""`calibration_type: load` end to end from a QDQ model made by onnxruntime's `quantize_static`, given as
`onnx_model` (the QAT-model meaning of hb's load) and as `quant_config` beside the float model.

The float model has what onnxruntime quantizes in its own way: a Relu after an Add (removed, the Add's
output quantized under the Relu's name), a graph output behind its pair (renamed `y_QuantizeLinear_Input`;
int8 here with `set_model_output_int8`) and the input normalization hbcompile inserts (mean / scale: the QDQ
model's input is the normalized one).
The compiled thresholds are the pairs' scales by the rule `engine.quantize.search._qdq_threshold` states,
and the `.bc` computes what the QDQ model computes in onnxruntime.
"""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from engine.pipeline import Engine
from engine.similarity import cosine
from tests.support.models import Builder
from tests.support.qdq import ort_qdq

SHAPE = (1, 3, 12, 12)
MEAN, SCALE = 127.5, 1 / 127.5


def residual_relu() -> onnx.ModelProto:
    """x → Conv = a;  Relu(a + Conv(a)) = r;  Conv(r) = y (a graph output)."""
    b = Builder("residual_relu")
    x = b.input("x", list(SHAPE))
    a = b.op("Relu", [b.conv(x, 3, 8)], out="a")
    r = b.op("Relu", [b.op("Add", [a, b.conv(a, 8, 8)], out="s")], out="r")
    b.output(b.conv(r, 8, 4, out="y"))
    return b.build()


def div_maxpool() -> onnx.ModelProto:
    """x → Conv → Div(2) = d → MaxPool → Conv = y: onnxruntime quantizes no Div, so not d either."""
    b = Builder("div_maxpool")
    x = b.input("x", list(SHAPE))
    d = b.op("Div", [b.conv(x, 3, 8), b.const(np.float32(2.0), "two")], out="d")
    b.output(b.conv(b.op("MaxPool", [d], out="p", kernel_shape=[2, 2], strides=[2, 2]), 8, 4, out="y"))
    return b.build()


def pixels(i: int) -> np.ndarray:
    """A train-view sample: BGR pixels 0–255, NCHW float32."""
    return np.random.default_rng(i).uniform(0, 255, SHAPE).astype(np.float32)


def make_project(root, model: onnx.ModelProto, per_channel: bool):
    onnx.save(model, str(root / "f.onnx"))
    # onnxruntime calibrates the float model on the normalized samples it takes
    ort_qdq(root / "f.onnx", root / "q.onnx", ({"x": ((pixels(i) - MEAN) * SCALE).astype(np.float32)}
                                               for i in range(8)), per_channel)
    (root / "cal").mkdir()
    for i in range(8):
        np.save(root / "cal" / f"{i}.npy", pixels(i))
    return root


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def project(request, tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("load_qdq"), residual_relu(), request.param)


def compile_load(root, model: str, quant_config: str | None = None, cal: bool = True, name: str = "run"):
    extra = (f"  quant_config: {quant_config}\n" if quant_config else "") + ("  cal_data_dir: cal\n" if cal else "")
    config = root / f"{name}.yaml"
    config.write_text(textwrap.dedent(f"""\
        model_parameters:
          onnx_model: {model}
          march: nash-e
          working_dir: out_{name}
          output_model_file_prefix: m
        input_parameters:
          input_type_train: bgr
          input_layout_train: NCHW
          input_type_rt: bgr
          mean_value: {MEAN}
          scale_value: {SCALE}
        calibration_parameters:
          calibration_type: load
          optimization: set_model_output_int8
        """) + extra)
    return Engine().run(config)


def pair_thresholds(qdq: onnx.ModelProto) -> dict[str, float]:
    """Each activation pair's threshold by the rule the module uses (onnxruntime's uint8 with zero point z:
    s · max(255 − z, z); 127 · s at z = 128), keyed by the float model's tensor names."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    out = {}
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            s, z = float(inits[n.input[1]]), int(inits[n.input[2]])
            out[n.input[0].removesuffix("_QuantizeLinear_Input")] = 127 * s if z == 128 else s * max(255 - z, z)
    return out


def thresholds(root, name: str) -> dict[str, float]:
    """The thresholds the calibrate stage chose (its thresholds.json), the largest channel's per tensor."""
    import json

    data = json.loads(next((root / f"out_{name}").glob(".hb_cache/calibrate/*/thresholds.json")).read_text())
    return {t: float(np.max(v["threshold"])) for t, v in data.items()}


@pytest.mark.parametrize("how", ["onnx_model", "quant_config"])
def test_load_compiles_with_the_qdq_models_thresholds(project, how):
    name = f"{how}_{project.name}"
    report = compile_load(project, "q.onnx", name=name) if how == "onnx_model" else \
        compile_load(project, "f.onnx", "q.onnx", name=name)
    assert report.ok, [p.render() for p in report.problems]
    expected = pair_thresholds(onnx.load(str(project / "q.onnx")))
    got = thresholds(project, name)
    x = expected["x"]
    assert got.pop("HZ_PREPROCESS_FOR_x_normalized") == pytest.approx(x, rel=1e-9)  # the QDQ model's input
    # raw pixels back through mean / scale (the model holds scale_value as float32)
    assert got.pop("HZ_PREPROCESS_FOR_x_minus_mean") == pytest.approx(x / SCALE, rel=1e-6)
    assert got.pop("x") == pytest.approx(x / SCALE + MEAN, rel=1e-6)
    # the Add's output before the Relu onnxruntime removed (strip_qdq brings the Relu back before 'r')
    before_relu = "r_before_relu" if how == "onnx_model" else "s"
    assert got.pop(before_relu) == pytest.approx(expected["r"], rel=1e-9)
    assert got.pop("y") == pytest.approx(expected["y"], rel=1e-9)  # the graph output behind its pair
    assert set(got) == {"a", "r"} and all(got[t] == pytest.approx(expected[t], rel=1e-9) for t in got), got
    assert report.results["calibrate"]["method"] == "load"


@pytest.mark.parametrize("how", ["onnx_model", "quant_config"])
def test_the_bc_computes_what_the_qdq_model_computes(project, how):
    from engine.runtime import load, to_runtime

    name = f"bc_{how}_{project.name}"
    report = compile_load(project, "q.onnx", name=name) if how == "onnx_model" else \
        compile_load(project, "f.onnx", "q.onnx", name=name)
    assert report.ok, [p.render() for p in report.problems]
    bc = load(project / f"out_{name}" / "m_quantized_model.bc")
    qdq = ort.InferenceSession(str(project / "q.onnx"), providers=["CPUExecutionProvider"])
    fp = ort.InferenceSession(str(project / "f.onnx"), providers=["CPUExecutionProvider"])
    (spec,) = bc.inputs
    for i in range(20, 26):  # held-out pixels
        x = pixels(i)
        ours = bc.run({"x": to_runtime(x, spec.info)})["y"]
        theirs = qdq.run(["y"], {"x": ((x - MEAN) * SCALE).astype(np.float32)})[0]
        float_y = fp.run(["y"], {"x": ((x - MEAN) * SCALE).astype(np.float32)})[0]
        assert cosine(ours, theirs) > 0.999, i
        # as close to the QDQ model as the QDQ model is to the float model (two int8 simulations)
        assert np.abs(ours - theirs).max() <= 2 * np.abs(theirs - float_y).max() + 1e-6, i


def test_load_without_calibration_data_needs_none_for_this_model(project):
    """Every tensor's threshold is loaded or derived: hb's load needs no cal_data_dir."""
    name = f"nocal_{project.name}"
    report = compile_load(project, "q.onnx", cal=False, name=name)
    assert report.ok, [p.render() for p in report.problems]


@pytest.fixture(scope="module")
def float_div(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("load_qdq_div"), div_maxpool(), False)


def test_a_tensor_left_in_float_takes_max_on_the_calibration_data(float_div, caplog):
    with caplog.at_level("WARNING", logger="hbcompile"):
        report = compile_load(float_div, "f.onnx", "q.onnx", name="with_cal")
    assert report.ok, [p.render() for p in report.problems]
    assert "have no threshold for 1 tensor ('d'): they take max on the calibration data" in caplog.text
    probe = div_maxpool()
    probe.graph.output.append(onnx.helper.make_tensor_value_info("d", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    largest = max(float(np.abs(sess.run(["d"], {"x": ((pixels(i) - MEAN) * SCALE).astype(np.float32)})[0]).max())
                  for i in range(8))
    assert thresholds(float_div, "with_cal")["d"] == pytest.approx(largest, rel=1e-5)


def test_a_tensor_left_in_float_is_one_error_without_calibration_data(float_div):
    report = compile_load(float_div, "f.onnx", "q.onnx", cal=False, name="no_cal")
    assert not report.ok
    (problem,) = report.problems
    assert problem.message.startswith("calibration_type load: no threshold for 'd' in the loaded quantization "
                                      f"parameters ({float_div / 'q.onnx'}); give calibration_parameters.cal_data_dir")
    assert not (float_div / "out_no_cal" / "m.hbm").exists()
