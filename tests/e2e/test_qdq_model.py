"""Review R1 #6: a QDQ model (onnxruntime's `quantize_static`, as a QAT export would be) given as
`onnx_model`. The optimize stage strips its fake quantization (`engine/passes/strip_qdq.py`), so
`calibration_type: load` takes the thresholds from the pairs' scales and any other calibration_type
calibrates the float model. It used to fail (`no threshold for 'c1_DequantizeLinear_Output'`) with
load, and with max to compile every Q/DQ pair and both Convs as float CPU nodes."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.pipeline import Engine
from engine.quantize.search import load_thresholds
from tests.support.models import Builder
from tests.support.qdq import ort_qdq

SHAPE = (1, 3, 12, 12)


def float_model() -> onnx.ModelProto:
    """x → Conv → Relu → Conv → Sigmoid → Conv = y (onnxruntime folds the Relu into its pair's range)."""
    b = Builder("qat")
    x = b.input("x", list(SHAPE))
    y = b.op("Relu", [b.conv(x, 3, 8)])
    y = b.op("Sigmoid", [b.conv(y, 8, 8)])
    b.output(b.conv(y, 8, 4, out="y"))
    return b.build()


def samples(n: int = 6) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32) for i in range(n)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("qdq")
    onnx.save(float_model(), str(root / "f.onnx"))
    ort_qdq(root / "f.onnx", root / "q.onnx", ({"x": s} for s in samples()))
    (root / "cal").mkdir()
    for i, s in enumerate(samples()):
        np.save(root / "cal" / f"{i}.npy", s)
    return root


def compile_model(root, model: str, kind: str):
    config = root / f"{model}_{kind}.yaml"
    config.write_text(textwrap.dedent(f"""\
        model_parameters:
          onnx_model: {model}.onnx
          march: nash-e
          working_dir: out_{model}_{kind}
          output_model_file_prefix: m
        input_parameters:
          input_type_train: featuremap
          input_type_rt: featuremap
        calibration_parameters:
          cal_data_dir: cal
          calibration_type: {kind}
        """))
    report = Engine().run(config)
    assert report.ok, [p.render() for p in report.problems]
    return report


def placement(report) -> list[tuple[str, str, str]]:
    return [(r["node_type"], r["on"], r["output_dtype"]) for r in report.results["report"]["nodes"]]


def test_max_on_a_qdq_model_is_the_float_model_calibrated(project):
    qdq, fp = compile_model(project, "q", "max"), compile_model(project, "f", "max")
    optimized = onnx.load(str(project / "out_q_max" / "m_optimized_float_model.onnx"))
    assert sorted(n.op_type for n in optimized.graph.node) == ["Conv", "Conv", "Conv", "Relu", "Sigmoid"]
    assert placement(qdq) == placement(fp) == [("Conv+Relu", "BPU", "si8"), ("Conv", "BPU", "si8"),
                                               ("Sigmoid", "BPU", "si8"), ("Conv", "BPU", "si32")]
    keys = ("CPU nodes", "BPU subgraphs", "FPS")
    assert [qdq.results["compile"]["perf"][k] for k in keys] == [fp.results["compile"]["perf"][k] for k in keys]
    (out,) = qdq.results["report"]["outputs"]
    assert out["quantized_cosine"] > 0.999


def test_load_takes_the_thresholds_from_the_qdq_models_scales(project):
    report = compile_model(project, "q", "load")
    qdq = onnx.load(str(project / "q.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    expected = {}  # threshold = scale · (255 − zero point) for onnxruntime's uint8 activations here
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            scale, zp = float(inits[n.input[1]]), int(inits[n.input[2]])
            expected[n.input[0]] = scale * max(255 - zp, zp)
    rows = {r["tensor"]: r["threshold"] for r in report.results["report"]["nodes"] if r["threshold"] is not None}
    assert len(rows) == 3 and all(t in expected for t in rows), (rows, expected)
    for tensor, threshold in rows.items():
        assert threshold == pytest.approx(expected[tensor], rel=1e-6)
    assert load_thresholds(project / "q.onnx").keys() >= rows.keys()
    assert placement(report)[0] == ("Conv+Relu", "BPU", "si8")  # the Relu onnxruntime folded is back
    (out,) = report.results["report"]["outputs"]
    assert out["quantized_cosine"] > 0.999
