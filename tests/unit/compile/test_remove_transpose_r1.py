"""R1 #11: a removed boundary Transpose changes the tensor's layout, and the specs say so.

An rgb NHWC input of an NCHW model gets a layout Transpose inside the `.bc`; `remove_node_type:
Transpose` removes it, and the application then feeds NCHW pixels. The spec kept saying NHWC with the
NCHW shape, so `from_train_view` made NHWC arrays that `run` refused (and hb_verifier -i failed). Now
hb_model_info, `from_train_view`, `run` and hb_verifier agree; a per-axis quantization recorded by a
Quantize / Dequantize removed outside a Transpose follows the axis through it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.program import io_specs
from engine.compile.remove_nodes import remove_nodes
from engine.pipeline import Engine
from engine.runtime import load
from engine.tools.model_info import describe
from engine.tools.verifier import verify
from tests.support.models import Builder

CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: rm
  remove_node_type: Transpose
input_parameters:
  input_type_train: rgb
  input_layout_train: NHWC
  input_type_rt: rgb
  scale_value: 0.0039215686
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
"""


def nhwc_image_model() -> onnx.ModelProto:
    """x (1, 16, 16, 3) NHWC → Transpose → Conv → Relu → GlobalAveragePool → y (1, 6, 1, 1)."""
    b = Builder("rm", seed=2)
    x = b.op("Transpose", [b.input("x", [1, 16, 16, 3])], perm=[0, 3, 1, 2])
    b.output(b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 3, 6)])], out="y"))
    return b.build()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("transpose")
    onnx.save(nhwc_image_model(), str(root / "model.onnx"))
    rng = np.random.default_rng(2)
    (root / "cal").mkdir()
    for i in range(4):
        np.save(root / "cal" / f"{i}.npy", rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32))
    (root / "config.yaml").write_text(CONFIG)
    report = Engine().run(root / "config.yaml")
    assert report.ok, [p.render() for p in report.problems]
    return root / "model_output", np.load(root / "cal" / "0.npy")


def test_the_removed_head_transpose_makes_the_input_nchw(built):
    out, _ = built
    hbm = load(out / "rm.hbm")
    (spec,) = hbm.inputs
    (removed,) = spec.info["removed_nodes"]
    assert removed["op_type"] == "Transpose" and removed["params"]["perm"] == [0, 3, 1, 2]
    assert spec.shape == (1, 3, 16, 16) and spec.dtype == "uint8"
    assert spec.layout == spec.info["input_layout_rt"] == "NCHW"
    assert spec.describe() == "rgb image NCHW, uint8 (1, 3, 16, 16)"
    assert spec.info["input_layout_train"] == "NHWC" and spec.info["train_shape"] == [1, 16, 16, 3]
    (bc,) = load(out / "rm_quantized_removed_model.bc").inputs
    assert (bc.shape, bc.layout, bc.describe()) == (spec.shape, spec.layout, spec.describe())


def test_model_info_says_what_the_model_takes(built):
    out, _ = built
    lines = describe(out / "rm.hbm")
    block = lines[lines.index("---------input info : x ---------"):]
    assert "input_layout_rt: NCHW" in block and "input_layout_train: NHWC" in block
    assert "tensor: rgb image NCHW, uint8 (1, 3, 16, 16)" in block
    assert "input_shape: 1x16x16x3" in block  # the train view the config gave
    assert "deleted nodes: HZ_PREPROCESS_FOR_x_to_nchw" in lines


def test_a_train_view_sample_runs_and_gives_what_the_full_bc_gives(built):
    out, sample = built
    hbm, full = load(out / "rm.hbm"), load(out / "rm_quantized_model.bc")
    feeds = hbm.from_train_view({"x": sample})
    assert feeds["x"].shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(feeds["x"], full.from_train_view({"x": sample})["x"].transpose(0, 3, 1, 2))
    # the application's own transpose, then the same integer program: the same bytes out
    np.testing.assert_array_equal(hbm.run(feeds)["y"], full.run(full.from_train_view({"x": sample}))["y"])


def test_hb_verifier_takes_the_train_view_sample(built, tmp_path):
    out, sample = built
    np.save(tmp_path / "x.npy", sample)
    float_model = str(out / "rm_optimized_float_model.onnx")
    code, lines = verify([float_model, str(out / "rm.hbm")], [str(tmp_path / "x.npy")])
    code_full, lines_full = verify([float_model, str(out / "rm_quantized_model.bc")], [str(tmp_path / "x.npy")])
    assert code == code_full == 0
    assert lines[-1].split()[1:] == lines_full[-1].split()[1:]  # same cosine and distances
    assert float(lines[-1].split()[1]) > 0.99
    code, lines = verify([str(out / "rm_quantized_removed_model.bc"), str(out / "rm.hbm")], [str(tmp_path / "x.npy")])
    assert code == 0 and lines[-1] == "consistency check passed: outputs are bit-identical"


# ------------------------------------------------------------ per-axis codes through a removed Transpose

def _init(name, value, dtype):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def per_axis_program(head: bool) -> onnx.ModelProto:
    """Per-channel codes crossing a Transpose at the border.
    head: x (1, 4, 6, 3) → Quantize (axis 3) → Transpose [0, 3, 1, 2] → Dequantize (axis 1) → y (1, 3, 4, 6)
    tail: x (1, 3, 4, 6) → Quantize (axis 1) → Transpose [0, 2, 3, 1] → Dequantize (axis 3) → y (1, 4, 6, 3)"""
    scales, zps = [0.02, 0.05, 0.1], [100, 128, 140]
    shape, perm, (qa, da) = ([1, 4, 6, 3], [0, 3, 1, 2], (3, 1)) if head else ([1, 3, 4, 6], [0, 2, 3, 1], (1, 3))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quantize", axis=qa),
             helper.make_node("Transpose", ["xq"], ["tq"], name="transpose", perm=perm),
             helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["y"], name="dequantize", axis=da)]
    out_shape = [shape[p] for p in perm]
    graph = helper.make_graph(nodes, "per_axis", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [_init("s", scales, np.float32), _init("z", zps, np.uint8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _codes(x: np.ndarray, q: dict) -> np.ndarray:
    shape = [1] * x.ndim
    shape[q["axis"]] = -1
    scale, zp = np.reshape(q["scale"], shape).astype(np.float32), np.reshape(q["zero_point"], shape)
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)


def _values(codes: np.ndarray, q: dict) -> np.ndarray:
    shape = [1] * codes.ndim
    shape[q["axis"]] = -1
    scale, zp = (np.reshape(q[k], shape).astype(np.float32) for k in ("scale", "zero_point"))
    return (codes.astype(np.float32) - zp) * scale


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_input_codes_quantized_on_the_recorded_axis_feed_the_program():
    model = per_axis_program(head=True)
    out, removed = remove_nodes(model, ["Quantize", "Transpose"], [])
    assert [r.op_type for r in removed] == ["QuantizeLinear", "Transpose"]
    (spec,), _ = io_specs(out)
    assert spec["shape"] == [1, 3, 4, 6] and spec["quantization"]["axis"] == 1  # was 3, before the Transpose
    x = np.random.default_rng(0).uniform(-10, 10, (1, 4, 6, 3)).astype(np.float32)
    # the application quantizes its own (transposed) values as the spec says: the program's output is unchanged
    fed = _codes(x.transpose(0, 3, 1, 2), spec["quantization"])
    np.testing.assert_array_equal(_run(out, fed), _run(model, x))


def test_output_codes_dequantized_on_the_recorded_axis_give_the_output():
    model = per_axis_program(head=False)
    out, removed = remove_nodes(model, ["Dequantize", "Transpose"], [])
    assert [r.op_type for r in removed] == ["DequantizeLinear", "Transpose"]
    _, (spec,) = io_specs(out)
    assert spec["shape"] == [1, 3, 4, 6] and spec["quantization"]["axis"] == 1  # was 3, after the Transpose
    x = np.random.default_rng(1).uniform(-10, 10, (1, 3, 4, 6)).astype(np.float32)
    values = _values(_run(out, x), spec["quantization"])
    np.testing.assert_array_equal(values.transpose(removed[1].params["perm"]), _run(model, x))


TAIL_CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tail
  remove_node_type: Dequantize;Transpose
input_parameters:
  input_type_train: featuremap
  input_layout_train: NCHW
  input_type_rt: featuremap
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
"""


def test_hb_verifier_puts_a_removed_tail_transpose_back(tmp_path):
    """`Dequantize; Transpose` removed at the output: the .hbm gives the pre-transpose codes; hb_verifier
    compared them with the float output in the wrong order (cosine 0.35 where the full .bc gives 0.9999)."""
    b = Builder("tail", seed=3)
    b.output(b.op("Transpose", [b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 4)])], out="y", perm=[0, 2, 3, 1]))
    onnx.save(b.build(), str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(3)
    (tmp_path / "cal").mkdir()
    for i in range(4):
        np.save(tmp_path / "cal" / f"{i}.npy", rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    (tmp_path / "config.yaml").write_text(TAIL_CONFIG)
    report = Engine().run(tmp_path / "config.yaml")
    assert report.ok, [p.render() for p in report.problems]
    out = tmp_path / "model_output"
    assert [r["op_type"] for r in load(out / "tail.hbm").spec("y").info["removed_nodes"]] == \
        ["DequantizeLinear", "Transpose"]
    np.save(tmp_path / "x.npy", np.load(tmp_path / "cal" / "0.npy"))
    float_model = str(out / "tail_optimized_float_model.onnx")
    code, lines = verify([float_model, str(out / "tail.hbm")], [str(tmp_path / "x.npy")])
    code_full, lines_full = verify([float_model, str(out / "tail_quantized_model.bc")], [str(tmp_path / "x.npy")])
    assert code == code_full == 0
    assert float(lines[-1].split()[1]) > 0.99
    assert lines[-1].split()[1:] == lines_full[-1].split()[1:]
