"""`calibration_type: load` from QDQ models made by onnxruntime's `quantize_static`: the tensors of the
float model the QDQ model names differently or leaves unquantized (`engine.quantize.search.find_loaded`).

- a graph output behind its pair: onnxruntime renames the producer's tensor (`y_QuantizeLinear_Input`),
  the DequantizeLinear writes `y`;
- Add → Relu: onnxruntime removes the Relu and quantizes only the Add's output, under the Relu's name;
- the inserted input normalization: the QDQ model's input `x` is the normalized tensor;
- a tensor onnxruntime leaves in float (Div → MaxPool): max on the calibration data, or one error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.calibration.stats import merge_samples
from engine.problems import CalibrationDataError
from engine.quantize.search import find_loaded, load_thresholds, search_load
from tests.support.models import Builder
from tests.support.qdq import ort_qdq

SHAPE = (1, 3, 10, 10)


def residual_relu() -> onnx.ModelProto:
    """x → Conv = a;  Relu(a + Conv(a)) = r;  Conv(r) = y (a graph output)."""
    b = Builder("residual_relu")
    x = b.input("x", list(SHAPE))
    a = b.conv(x, 3, 8, out="a")
    s = b.op("Add", [a, b.conv(a, 8, 8, out="c")], out="s")
    r = b.op("Relu", [s], out="r")
    b.output(b.conv(r, 8, 4, out="y"))
    return b.build()


def div_maxpool() -> onnx.ModelProto:
    """x → Conv → Div(2) = d → MaxPool → Conv = y: onnxruntime quantizes no Div, so not d either."""
    b = Builder("div_maxpool")
    x = b.input("x", list(SHAPE))
    d = b.op("Div", [b.conv(x, 3, 8, out="a"), b.const(np.float32(2.0), "two")], out="d")
    p = b.op("MaxPool", [d], out="p", kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.conv(p, 8, 4, out="y"))
    return b.build()


def samples(n: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32) for i in range(n)]


def quantized(tmp_path, model: onnx.ModelProto, per_channel: bool = False) -> onnx.ModelProto:
    onnx.save(model, str(tmp_path / "f.onnx"))
    ort_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", ({"x": s} for s in samples()), per_channel)
    return onnx.load(str(tmp_path / "q.onnx"))


def pair_threshold(qdq: onnx.ModelProto, tensor: str) -> float:
    """The rule `_qdq_threshold` states, from the QuantizeLinear reading `tensor`: uint8 with zero point
    z: s · max(255 − z, z), or 127 · s when z = 128 (symmetric)."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    s, z = float(inits[q.input[1]]), int(inits[q.input[2]])
    return 127 * s if z == 128 else s * max(255 - z, z)


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_graph_output_behind_its_pair_takes_the_pairs_threshold(tmp_path, per_channel):
    qdq = quantized(tmp_path, residual_relu(), per_channel)
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == "y" for n in qdq.graph.node)
    expected = pair_threshold(qdq, "y_QuantizeLinear_Input")
    assert load_thresholds(qdq, outputs=True)["y"] == pytest.approx(expected, rel=1e-12)
    assert "y" not in load_thresholds(qdq)  # the plain reading keys by QuantizeLinear inputs only
    result = search_load(tmp_path / "q.onnx", ["y"], residual_relu())
    assert result.acts["y"].threshold == pytest.approx(expected, rel=1e-12) and result.acts["y"].method == "load"


def test_a_tensor_read_only_by_a_relu_takes_the_relus_output_threshold(tmp_path, caplog):
    qdq = quantized(tmp_path, residual_relu())
    assert [n.output[0] for n in qdq.graph.node if n.op_type == "Add"] == ["r"]  # onnxruntime removed the Relu
    found = load_thresholds(qdq, outputs=True)
    assert "s" not in found
    with caplog.at_level("DEBUG", logger="hbcompile"):
        loaded = find_loaded(found, ["a", "s", "r"], residual_relu())
    assert loaded.values["s"] == loaded.values["r"] == pytest.approx(pair_threshold(qdq, "r"), rel=1e-12)
    assert loaded.how == {"a": "loaded", "s": "activation", "r": "loaded"}
    assert "'s' is read only by Relu / Clip" in caplog.text
    with pytest.raises(CalibrationDataError, match="no threshold for 's'"):  # without the model, no reader is known
        search_load(qdq, ["s"])


def test_a_tensor_also_read_by_another_node_takes_no_relu_threshold(tmp_path):
    model = residual_relu()
    b = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.node.append(onnx.helper.make_node("Sigmoid", [b.input[0]], ["side"], name="side"))
    loaded = find_loaded({"r": 3.0}, ["s"], model)
    assert "s" not in loaded.values


def normalized_model(mean: float, scale: float) -> onnx.ModelProto:
    """residual_relu with hbcompile's input normalization inserted, as the parse stage does."""
    from engine.preprocess.normalization import Normalization, insert_normalization

    return insert_normalization(residual_relu(), "x", Normalization(np.array([mean] * 3), np.array([scale] * 3)),
                                "NCHW")


def test_the_sources_input_threshold_is_the_normalized_inputs_and_the_raw_input_is_derived():
    mean, scale, t = 127.5, 1 / 127.5, 0.96
    loaded = find_loaded({"x": t, "a": 2.0}, ["x", "HZ_PREPROCESS_FOR_x_minus_mean", "HZ_PREPROCESS_FOR_x_normalized", "a"],
                         normalized_model(mean, scale))
    assert loaded.values["HZ_PREPROCESS_FOR_x_normalized"] == t
    assert loaded.values["HZ_PREPROCESS_FOR_x_minus_mean"] == pytest.approx(t / scale)
    assert loaded.values["x"] == pytest.approx(t / scale + mean)  # not the source's 0.96: x is raw pixels here
    assert loaded.values["a"] == 2.0
    assert {k: v for k, v in loaded.how.items() if k != "a"} == dict.fromkeys(
        ["HZ_PREPROCESS_FOR_x_normalized", "HZ_PREPROCESS_FOR_x_minus_mean", "x"], "normalization")


def test_a_source_naming_the_normalized_tensor_is_taken_as_it_is():
    """hbcompile's own calibrated model keys every tensor of this graph, the raw input too."""
    source = {"x": 250.0, "HZ_PREPROCESS_FOR_x_minus_mean": 120.0, "HZ_PREPROCESS_FOR_x_normalized": 0.9}
    loaded = find_loaded(source, list(source), normalized_model(127.5, 1 / 127.5))
    assert loaded.values == source and set(loaded.how.values()) == {"loaded"}


def test_a_tensor_the_source_leaves_in_float_is_one_error_without_calibration_data(tmp_path):
    qdq = quantized(tmp_path, div_maxpool())
    assert "d" not in load_thresholds(qdq, outputs=True)
    with pytest.raises(CalibrationDataError) as err:
        search_load(tmp_path / "q.onnx", ["x", "d", "p"], div_maxpool())
    message = err.value.problems[0].message
    assert "no threshold for 'd' in the loaded quantization parameters" in message and "q.onnx" in message
    assert "cal_data_dir" in message and "'p'" not in message


def test_a_tensor_the_source_leaves_in_float_takes_max_on_the_calibration_data(tmp_path, caplog):
    from engine.calibration.observer import observe

    quantized(tmp_path, div_maxpool())
    model, asked = div_maxpool(), []

    def stats(missing):
        asked.append(list(missing))
        return merge_samples(list(observe(model, ({"x": s} for s in samples()), list(missing))))

    with caplog.at_level("WARNING", logger="hbcompile"):
        result = search_load(tmp_path / "q.onnx", ["x", "d", "p"], model, stats)
    assert asked == [["d"]]  # only what the source lacks is observed
    import onnxruntime as ort

    probe = onnx.helper.make_tensor_value_info("d", onnx.TensorProto.FLOAT, None)
    model.graph.output.append(probe)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    largest = max(float(np.abs(sess.run(["d"], {"x": s})[0]).max()) for s in samples())
    assert result.acts["d"].method == "max" and result.acts["d"].threshold == pytest.approx(largest, rel=1e-6)
    assert result.acts["p"].method == "load" and result.detail["thresholds"] == {"loaded": 2, "max": 1}
    assert "no threshold for 1 tensor ('d')" in caplog.text
