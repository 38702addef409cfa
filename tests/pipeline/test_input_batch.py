"""input_batch: the `.bc` takes N samples at once for an `input_shape` with N = 1.

The batch-N program must be the batch-1 program on each sample: N stacked samples give, bit for
bit, the N batch-1 results. A model that cannot keep its samples apart (a Reshape folding the
batch away, a reduction or Softmax over axis 0, a Transpose moving the batch) is refused with the
node named, and nothing is written.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data as skdata
from skimage.transform import resize

from engine.pipeline import Engine
from engine.quantize.integer import session_options
from engine.runtime import color

H, W = 32, 48
FLAT = 8 * (H // 4) * (W // 4)
MEAN, SCALE = "123.675 116.28 103.53", "0.017125 0.017507 0.017429"


def photo(name: str, where: float) -> np.ndarray:
    img = getattr(skdata, name)()
    rh, rw = img.shape[0] // 2, img.shape[0] // 2 * 3 // 2
    y, x = int(where * (img.shape[0] - rh)), int(where * (img.shape[1] - rw))
    return np.clip(np.rint(resize(img[y:y + rh, x:x + rw], (H, W), anti_aliasing=True, preserve_range=True)),
                   0, 255).astype(np.uint8)


HELD_OUT = [photo("rocket", 0.1), photo("rocket", 0.5), photo("immunohistochemistry", 0.4), photo("coffee", 0.9),
            photo("chelsea", 0.7)]


def classifier(tail: str = "flatten") -> onnx.ModelProto:
    """img → Conv s2 → Relu → Conv s2 → Relu → `tail` → Gemm (10): a small classifier.

    tail: "flatten" (Reshape to the constant [1, FLAT]), "minus_one" (Reshape [-1, FLAT]),
    "fold" (Reshape [2, FLAT/2] into a Gemm of FLAT/2: the batch is not the first dim), "softmax0" (Softmax over
    axis 0 after the Gemm), "reduce" (ReduceMean over every axis, added back), "transpose"
    (the batch moved to axis 1 and back to a flat vector).
    """
    rng = np.random.default_rng(11)
    consts = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
              "w2": rng.normal(0, 0.2, (8, 8, 3, 3)), "fc": rng.normal(0, 0.05, (10, FLAT)),
              "fc_b": rng.normal(0, 0.1, 10)}
    nodes = [helper.make_node("Conv", ["img", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    flat_shape = {"flatten": [1, FLAT], "minus_one": [-1, FLAT], "fold": [2, FLAT // 2], "softmax0": [1, FLAT],
                  "reduce": [1, FLAT], "transpose": [1, FLAT]}[tail]
    consts["flat_shape"] = np.array(flat_shape, np.int64)
    x = "r2"
    if tail == "reduce":
        nodes += [helper.make_node("ReduceMean", [x], ["mean_all"], name="mean_all", keepdims=1),
                  helper.make_node("Add", [x, "mean_all"], ["r2_plus"], name="add_mean")]
        x = "r2_plus"
    if tail == "transpose":
        nodes.append(helper.make_node("Transpose", [x], ["moved"], name="batch_to_axis1", perm=[1, 0, 2, 3]))
        x = "moved"
    nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["flat"], name="flatten"))
    if tail == "fold":
        consts["fc"] = consts["fc"][:, :FLAT // 2]
    nodes.append(helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits" if tail == "softmax0" else "out"],
                                  name="fc", transB=1))
    if tail == "softmax0":
        nodes.append(helper.make_node("Softmax", ["logits"], ["out"], name="softmax_batch", axis=0))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("img", TensorProto.FLOAT,
                                                                                  [1, 3, H, W])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                             [2 if tail == "fold" else 1, 10])],
                              [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
                               for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_project(root: Path, model: onnx.ModelProto, batch: int | None, rt: str = "nv12",
                  march: str = "nash-e") -> Path:
    onnx.save(model, str(root / "model.onnx"))
    cal = root / "calibration"
    if not cal.exists():
        cal.mkdir()
        for i, (name, where) in enumerate([("astronaut", 0.1), ("coffee", 0.3), ("chelsea", 0.5),
                                           ("astronaut", 0.8), ("coffee", 0.6), ("chelsea", 0.1)]):
            color.hwc_to_chw(photo(name, where)[None]).tofile(cal / f"{i:02d}.rgb")
    config = root / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        model_parameters:
          onnx_model: model.onnx
          march: {march}
          working_dir: model_output
          output_model_file_prefix: cls
        input_parameters:
          input_type_train: rgb
          input_layout_train: NCHW
          input_type_rt: {rt}
          input_shape: 1x3x{H}x{W}
          mean_value: {MEAN}
          scale_value: {SCALE}
        """) + (f"  input_batch: {batch}\n" if batch is not None else "") + textwrap.dedent("""\
        calibration_parameters:
          cal_data_dir: calibration
          calibration_type: max
        """))
    return config


def run_bc(path: Path, feed: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    return sess.run(["out"], {sess.get_inputs()[0].name: feed})[0]


def input_dims(path: Path) -> list[int]:
    (inp,) = onnx.load(str(path)).graph.input
    return [d.dim_value for d in inp.type.tensor_type.shape.dim]


@pytest.mark.parametrize("rt,tail", [("nv12", "flatten"), ("rgb", "minus_one"), ("yuv444", "flatten")])
def test_batch_n_program_equals_n_batch_one_runs_bit_for_bit(tmp_path, rt, tail):
    engine = Engine()
    config = write_project(tmp_path, classifier(tail), None, rt)
    single = engine.run(config)
    assert single.ok, [p.render() for p in single.problems]
    bc = tmp_path / "model_output" / "cls_quantized_model.bc"
    one = tmp_path / "batch1.bc"
    shutil.copy(bc, one)

    n = len(HELD_OUT)
    write_project(tmp_path, classifier(tail), n, rt)
    batched = engine.run(config, until="quantize")
    assert batched.ok, [p.render() for p in batched.problems]
    assert batched.stage("calibrate").status == "reused"  # input_batch is a runtime-model setting only
    result = batched.results["quantize"]
    assert result["input_batch"] == n
    assert result["batch_rewrites"] == ([{"node": "flatten", "before": [1, FLAT], "after": [0, FLAT]}]
                                        if tail == "flatten" else [])

    frames = {"nv12": lambda imgs: color.rgb_to_nv12(imgs), "rgb": lambda imgs: imgs,
              "yuv444": lambda imgs: color.rgb_to_yuv444(imgs)}[rt](np.stack(HELD_OUT))
    assert input_dims(bc)[0] == n and input_dims(bc)[1:] == list(frames.shape[1:])
    together = run_bc(bc, frames)
    apart = np.concatenate([run_bc(one, frames[i:i + 1]) for i in range(n)])
    assert together.shape == (n, 10)
    np.testing.assert_array_equal(together, apart)
    assert len({tuple(np.argsort(row)[-3:]) for row in together}) > 1  # the samples really differ

    meta = {p.key: p.value for p in onnx.load(str(bc)).metadata_props}
    assert '"input_batch": 5' in meta["hbcompile.inputs"] and '"shape": [5, 3, 32, 48]' in meta["hbcompile.inputs"]


def test_two_inputs_are_batched_together(tmp_path):
    """hb_compile applies input_batch to every input: image (nv12) and featuremap alike."""
    from tests.pipeline.test_multi_input import PER_INPUT, config_text, feature, write_data

    write_data(tmp_path)
    (tmp_path / "config.yaml").write_text(config_text(PER_INPUT))
    engine = Engine()
    assert engine.run(tmp_path / "config.yaml").ok
    one = tmp_path / "batch1.bc"
    shutil.copy(tmp_path / "model_output" / "two_quantized_model.bc", one)
    text = config_text(PER_INPUT).replace("input_parameters:\n", "input_parameters:\n  input_batch: 3\n")
    (tmp_path / "config.yaml").write_text(text)
    report = engine.run(tmp_path / "config.yaml", until="quantize")
    assert report.ok, [p.render() for p in report.problems]
    bc = tmp_path / "model_output" / "two_quantized_model.bc"
    feeds = {"img": color.rgb_to_nv12(np.stack(HELD_OUT[:3])), "feat": np.concatenate([feature(i) for i in range(3)])}
    sess = ort.InferenceSession(str(bc), session_options(), providers=["CPUExecutionProvider"])
    assert {i.name: i.shape[0] for i in sess.get_inputs()} == {"img": 3, "feat": 3}
    together = sess.run(["out"], feeds)[0]
    single = ort.InferenceSession(str(one), session_options(), providers=["CPUExecutionProvider"])
    apart = np.concatenate([single.run(["out"], {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(3)])
    np.testing.assert_array_equal(together, apart)


def test_input_batch_runs_to_the_end_with_the_similarity_table(tmp_path):
    """The table of a batch-N program is the batch-1 table: the same program on the first sample."""
    engine = Engine()
    single = engine.run(write_project(tmp_path, classifier("flatten"), None))
    assert single.ok, [p.render() for p in single.problems]
    batched = engine.run(write_project(tmp_path, classifier("flatten"), 4))
    assert batched.ok, [p.render() for p in batched.problems]
    assert batched.results["report"] == single.results["report"]
    assert input_dims(tmp_path / "model_output" / "cls_quantized_model.bc")[0] == 4


@pytest.mark.parametrize("tail,node,words", [
    ("fold", "flatten", "has the constant shape [2, 384], whose first dimension is not the batch of 1"),
    ("softmax0", "softmax_batch", "(Softmax) mixes the samples of a batch"),
    ("reduce", "mean_all", "(ReduceMean) gives 'mean_all' the shape [1, 1, 1, 1] for 2 samples"),
    ("transpose", "batch_to_axis1", "(Transpose) gives 'moved' the shape [8, 2, 8, 12] for 2 samples"),
])
def test_a_model_that_mixes_samples_is_refused_and_nothing_is_written(tmp_path, tail, node, words):
    config = write_project(tmp_path, classifier(tail), 4)
    report = Engine().run(config)
    assert not report.ok and report.stage("quantize").status == "failed"
    (problem,) = [p for p in report.problems if p.severity.label == "error"]
    assert problem.code == "input-batch-model" and f"'{node}'" in problem.message and words in problem.message
    assert problem.path == ("input_parameters", "input_batch") and problem.span is not None  # on the key
    assert not [p for p in (tmp_path / "model_output").iterdir() if p.is_file()]


def test_the_same_model_without_input_batch_compiles(tmp_path):
    """The refusal is about batching: the softmax-over-axis-0 model itself compiles at batch 1."""
    report = Engine().run(write_project(tmp_path, classifier("softmax0"), None))
    assert report.ok, [p.render() for p in report.problems]


@pytest.mark.parametrize("march,batch,message", [
    ("bernoulli2", 129, "Invalid input_batch: 129, available range for march bernoulli2: 1~128"),
    ("nash-e", 5000, "Invalid input_batch: 5000, available range for march nash-e: 1~4096"),
])
def test_march_ranges(tmp_path, march, batch, message):
    report = Engine().run(write_project(tmp_path, classifier(), batch, march=march))
    assert [p.message for p in report.problems if p.severity.label == "error"] == [message]
    assert not (tmp_path / "model_output").exists()


def test_an_image_input_with_its_own_batch_of_two(tmp_path):
    """input_shape 2x3xHxW (no input_batch): the `.bc` takes both frames, and the run reaches the table
    (the runtime input was built for one frame and the report stage crashed)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["img", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["out"], name="relu1")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 3, H, W])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, H, W])],
                              [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    config = write_project(tmp_path, model, None, "rgb")
    config.write_text(config.read_text().replace(f"input_shape: 1x3x{H}x{W}", f"input_shape: 2x3x{H}x{W}"))
    cal = tmp_path / "calibration"
    for i in range(3):
        color.hwc_to_chw(np.stack([photo("astronaut", 0.2 * i), photo("coffee", 0.3 * i)])).tofile(cal / f"{i:02d}.rgb")
    for old in sorted(cal.iterdir())[3:]:
        old.unlink()
    report = Engine().run(config)
    assert report.ok, [p.render() for p in report.problems]
    bc = tmp_path / "model_output" / "cls_quantized_model.bc"
    assert input_dims(bc) == [2, H, W, 3]
    frames = np.stack(HELD_OUT[:2])
    got = run_bc(bc, frames)
    mean = np.array([float(v) for v in MEAN.split()], np.float32).reshape(1, 3, 1, 1)
    scale = np.array([float(v) for v in SCALE.split()], np.float32).reshape(1, 3, 1, 1)
    x = (color.hwc_to_chw(frames).astype(np.float32) - mean) * scale
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["out"], {"img": x})[0]
    for i in range(2):  # each frame is its own, not the first one twice
        cos = float(np.dot(got[i].ravel(), want[i].ravel()) / np.linalg.norm(got[i]) / np.linalg.norm(want[i]))
        assert cos > 0.99, (i, cos)
