"""engine.runtime.load: .onnx / .bc / .hbm, runtime-format inputs, and clear errors for bad data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.compile.package import build_hbm
from engine.compile.params import resolve
from engine.config.model import CompilerParameters
from engine.preprocess import Normalization, insert_normalization
from engine.problems import ModelError
from engine.runtime import rgb_to_nv12
from engine.runtime.feeds import to_runtime
from engine.runtime.model import InputDataError, load
from tests.unit.compile.compile_support import conv_net, integer_program, nv12_program


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    float_model = conv_net(cpu_op=None)
    program, spec = nv12_program(float_model)
    onnx.save(program, str(d / "nv12.bc"))
    opts, _ = resolve(CompilerParameters(), "nash-e", [spec])
    build_hbm(program, opts).write(d / "nv12.hbm")
    original = onnx.ModelProto()
    original.CopyFrom(float_model)
    insert_normalization(original, "x", Normalization.from_values((128.0,), (1 / 64,), None, 3), "NCHW")
    onnx.save(original, str(d / "original.onnx"))
    onnx.save(integer_program(conv_net(cpu_op="Abs")), str(d / "featuremap.bc"))
    return d


def test_load_each_format_and_its_view(artefacts):
    onnx_model, bc, hbm = (load(artefacts / n) for n in ("original.onnx", "nv12.bc", "nv12.hbm"))
    assert (onnx_model.format, bc.format, hbm.format) == ("onnx", "bc", "hbm")
    assert onnx_model.view == "train" and bc.view == hbm.view == "runtime"
    assert onnx_model.inputs[0].shape == (1, 3, 16, 16) and onnx_model.inputs[0].dtype == "float32"
    for m in (bc, hbm):
        (spec,) = m.inputs
        assert spec.kind == "nv12" and spec.dtype == "uint8" and spec.shape == (1, 24, 16) and spec.layout is None
        assert "NV12" in spec.describe() and "(N, H*3/2, W)" in spec.describe()
        assert m.output_names == ["y"]
    assert hbm.manifest["march"] == "nash-e"


def test_nv12_frames_from_an_rgb_image_match_the_float_model(artefacts):
    rgb = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    frames = rgb_to_nv12(rgb)
    assert frames.shape == (1, 24, 16)
    hbm, original = load(artefacts / "nv12.hbm"), load(artefacts / "original.onnx")
    got = hbm.run({"x": frames})["y"]
    # the float model on the image the NV12 frames stand for (chroma subsampled): close, not equal
    from engine.runtime import nv12_to_rgb
    seen = nv12_to_rgb(frames).transpose(0, 3, 1, 2).astype(np.float32)
    want = original.run({"x": seen})["y"]
    cos = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.995


def test_train_view_samples_are_converted(artefacts):
    hbm = load(artefacts / "nv12.hbm")
    sample = np.random.default_rng(1).integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
    feeds = hbm.from_train_view({"x": sample})
    np.testing.assert_array_equal(feeds["x"], rgb_to_nv12(sample.transpose(0, 2, 3, 1).astype(np.uint8)))
    np.testing.assert_array_equal(hbm.run(feeds)["y"], hbm.run({"x": feeds["x"]})["y"])


def test_a_flat_camera_buffer_is_accepted_for_nv12(artefacts):
    bc = load(artefacts / "nv12.bc")
    frames = bc.random_inputs(3)["x"]
    np.testing.assert_array_equal(bc.run({"x": frames.reshape(1, -1)})["y"], bc.run({"x": frames})["y"])


def test_one_frame_without_a_batch_axis_is_accepted_for_nv12(artefacts):
    """rgb_to_nv12 of one H×W×3 picture (and OpenCV's NV12) is (H*3/2, W): the frame of a batch of 1."""
    hbm = load(artefacts / "nv12.hbm")
    picture = np.random.default_rng(4).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    frame = rgb_to_nv12(picture)
    assert frame.shape == (24, 16)
    np.testing.assert_array_equal(hbm.run({"x": frame})["y"], hbm.run({"x": frame[None]})["y"])


def test_float64_featuremaps_are_cast(artefacts):
    bc = load(artefacts / "featuremap.bc")
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16))
    np.testing.assert_array_equal(bc.run({"x": x})["y"], bc.run({"x": x.astype(np.float32)})["y"])


@pytest.mark.parametrize("feeds,words", [
    ({}, ["Input 'x' is missing", "NV12 frames"]),
    ({"x": np.zeros((1, 16, 16), np.uint8)}, ["expects NV12 frames", "got shape (1, 16, 16)"]),
    ({"x": np.zeros((1, 24, 16), np.float32)}, ["got dtype float32", "rgb_to_nv12"]),
    ({"x": np.zeros((1, 24, 16), np.uint8), "extra": np.zeros(1)}, ["no input named 'extra'", "inputs are: x"]),
])
def test_bad_inputs_are_one_clear_error(artefacts, feeds, words):
    with pytest.raises(InputDataError) as info:
        load(artefacts / "nv12.hbm").run(feeds)
    text = "; ".join(p.message for p in info.value.problems)
    for w in words:
        assert w in text


def test_featuremap_shape_error_says_what_is_expected(artefacts):
    with pytest.raises(InputDataError, match=r"expects featuremap, float32 \(1, 3, 16, 16\); got shape \(1, 3, 8, 8\)"):
        load(artefacts / "featuremap.bc").run({"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_unknown_output_name(artefacts):
    bc = load(artefacts / "featuremap.bc")
    with pytest.raises(InputDataError, match="no output named 'nope'"):
        bc.run(bc.random_inputs(), outputs=["nope"])


@pytest.mark.parametrize("name,content,match", [
    ("missing.bc", None, "Can not find model file"),
    ("garbage.bc", b"\x01\x02not a protobuf at all" * 10, "not a valid ONNX"),
    ("model.txt", b"hello", "expected a .onnx, .bc or .hbm"),
    ("truncated.hbm", b"\x89HBM\r\n", "truncated"),
])
def test_bad_files_are_model_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load(path)


@pytest.mark.parametrize("rt,layout,want_shape", [("bgr", None, (1, 4, 6, 3)), ("rgb", "NCHW", (1, 3, 4, 6)),
                                                  ("yuv444", None, (1, 4, 6, 3)), ("nv12", None, (1, 6, 6))])
def test_to_runtime_views(rt, layout, want_shape):
    sample = np.random.default_rng(5).integers(0, 256, (1, 3, 4, 6)).astype(np.float32)  # rgb NCHW
    spec = {"name": "img", "input_type_train": "rgb", "input_layout_train": "NCHW", "input_type_rt": rt,
            "input_layout_rt": layout, "input_space_and_range": "regular"}
    out = to_runtime(sample, spec)
    assert out.dtype == np.uint8 and out.shape == want_shape
    if rt == "bgr":
        np.testing.assert_array_equal(out[0, :, :, 0], sample[0, 2].astype(np.uint8))
    if rt == "rgb":
        np.testing.assert_array_equal(out, sample.astype(np.uint8))


def test_to_runtime_keeps_featuremaps():
    x = np.random.default_rng(6).standard_normal((1, 2, 3)).astype(np.float64)
    out = to_runtime(x, {"input_type_train": "featuremap", "input_type_rt": "featuremap"})
    assert out.dtype == np.float32 and np.allclose(out, x)
