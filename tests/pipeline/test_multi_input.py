"""Issue #4: a model with an image input and a featuremap input, end to end, and the bad inputs.

Every per-input key is a `;` list in `input_name` order, one `cal_data_dir` per input; listing the
inputs in the other order (every list reversed with them) must build the same program. Illegal
train→rt pairs, an odd NV12 size, a mean count that does not fit the channels and mean/scale on a
featuremap input stop the run with hb_compile's message, and nothing is written to working_dir.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data as skdata
from skimage.transform import resize

from engine import schema
from engine.pipeline import Engine
from engine.preprocess import legal_conversions
from engine.quantize.integer import session_options
from engine.runtime import color
from engine.similarity import cosine

H, W = 32, 48
FEATURE = (1, 8, H // 2, W // 2)
MEAN, SCALE = np.array([123.675, 116.28, 103.53]), np.array([0.017125, 0.017507, 0.017429])
PHOTOS = [("astronaut", 0.1), ("coffee", 0.3), ("chelsea", 0.5), ("astronaut", 0.7), ("coffee", 0.8),
          ("chelsea", 0.05)]


def photo(name: str, where: float) -> np.ndarray:
    """A 32×48 RGB uint8 view of a bundled photo."""
    img = getattr(skdata, name)()
    rh, rw = img.shape[0] // 2, img.shape[0] // 2 * 3 // 2
    y, x = int(where * (img.shape[0] - rh)), int(where * (img.shape[1] - rw))
    return np.clip(np.rint(resize(img[y:y + rh, x:x + rw], (H, W), anti_aliasing=True, preserve_range=True)),
                   0, 255).astype(np.uint8)


def two_input_model(channels: int = 3, h: int = H, w: int = W) -> onnx.ModelProto:
    """img (normalized) → Conv 3×3 s2 → Relu, plus feat → Conv 1×1, added, → Conv 3×3 (4): the user's model."""
    rng = np.random.default_rng(3)
    consts = {"w_img": rng.normal(0, 0.4, (8, channels, 3, 3)), "b_img": rng.normal(0, 0.1, 8),
              "w_feat": rng.normal(0, 0.4, (8, 8, 1, 1)), "w_out": rng.normal(0, 0.2, (4, 8, 3, 3))}
    nodes = [helper.make_node("Conv", ["img", "w_img", "b_img"], ["c_img"], name="conv_img", pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c_img"], ["r_img"], name="relu_img"),
             helper.make_node("Conv", ["feat", "w_feat"], ["c_feat"], name="conv_feat"),
             helper.make_node("Add", ["r_img", "c_feat"], ["both"], name="add"),
             helper.make_node("Conv", ["both", "w_out"], ["out"], name="conv_out", pads=[1, 1, 1, 1])]
    fh, fw = (h + 1) // 2, (w + 1) // 2
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, channels, h, w]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8, fh, fw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, fh, fw])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feature(i: int) -> np.ndarray:
    return np.random.default_rng(100 + i).normal(0, 1.5, FEATURE).astype(np.float32)


def write_data(root: Path) -> None:
    onnx.save(two_input_model(), str(root / "model.onnx"))
    (root / "cal_img").mkdir()
    (root / "cal_feat_f32").mkdir()
    for i, (name, where) in enumerate(PHOTOS):
        color.hwc_to_chw(photo(name, where)[None]).tofile(root / "cal_img" / f"{i:02d}.rgb")
        feature(i).tofile(root / "cal_feat_f32" / f"{i:02d}.bin")


PER_INPUT = {  # key → (img value, feat value); None leaves the position unset
    "input_name": ("img", "feat"),
    "input_type_train": ("rgb", "featuremap"),
    "input_layout_train": ("NCHW", "NCHW"),
    "input_type_rt": ("nv12", "featuremap"),
    "input_shape": (f"1x3x{H}x{W}", "x".join(map(str, FEATURE))),
    "mean_value": (" ".join(map(str, MEAN)), None),
    "scale_value": (" ".join(map(str, SCALE)), None),
}


def config_text(per_input: dict[str, tuple], reverse: bool = False, cal: tuple[str, str] = ("cal_img",
                                                                                             "cal_feat_f32")) -> str:
    def joined(values: tuple) -> str:
        items = list(reversed(values)) if reverse else list(values)
        return "; ".join("None" if v is None else str(v) for v in items)

    lines = "\n".join(f"  {k}: '{joined(v)}'" for k, v in per_input.items())
    return textwrap.dedent("""\
        model_parameters:
          onnx_model: model.onnx
          march: nash-e
          working_dir: model_output
          output_model_file_prefix: two
        input_parameters:
        """) + lines + "\n" + textwrap.dedent(f"""\
        calibration_parameters:
          cal_data_dir: '{joined(cal)}'
          calibration_type: max
        """)


def run_bc(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    return sess.run(["out"], feeds)[0]


def float_out(root: Path, rgb: np.ndarray, feat: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    img = color.hwc_to_chw(((rgb.astype(np.float64) - MEAN) * SCALE).astype(np.float32)[None])
    return sess.run(["out"], {"img": img, "feat": feat})[0]


@pytest.fixture
def compiled(tmp_path):
    write_data(tmp_path)
    (tmp_path / "config.yaml").write_text(config_text(PER_INPUT))
    report = Engine().run(tmp_path / "config.yaml")
    assert report.ok, [p.render() for p in report.problems]
    return tmp_path, report


def test_image_and_featuremap_end_to_end(compiled):
    root, report = compiled
    bc_path = root / "model_output" / "two_quantized_model.bc"
    bc = onnx.load(str(bc_path))
    inputs = {i.name: (i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in bc.graph.input}
    assert inputs == {"img": (TensorProto.UINT8, [1, H * 3 // 2, W]), "feat": (TensorProto.FLOAT, list(FEATURE))}
    assert report.results["quantize"]["runtime_conversion"] == {"img": "integer", "feat": "none"}
    assert {n.name: n.op_type for n in bc.graph.node}["HZ_PREPROCESS_FOR_img"] == "QLinearConv"

    rgb, feat = photo("rocket", 0.4), feature(99)  # held out
    got = run_bc(bc_path, {"img": color.rgb_to_nv12(rgb[None]), "feat": feat})
    assert cosine(got, float_out(root, rgb, feat)) >= 0.99

    rows = report.results["report"]["nodes"]
    (pre,) = [r for r in rows if "HZ_PREPROCESS_FOR_img" in r["nodes"]]
    assert pre["quantized_cosine"] >= 0.99
    assert not any(r["node"].startswith("HZ_PREPROCESS_FOR_feat") for r in rows)  # no mean/scale on it
    (output,) = report.results["report"]["outputs"]
    assert output["quantized_cosine"] >= 0.999 and output["cosine"] >= 0.999  # int8: 0.99934; 5-bit weights 0.9976
    assert report.results["calibrate"]["samples"] == len(PHOTOS)


def test_reversed_input_name_order_builds_the_same_program(compiled, tmp_path_factory):
    root, report = compiled
    other = tmp_path_factory.mktemp("reversed")
    write_data(other)
    (other / "config.yaml").write_text(config_text(PER_INPUT, reverse=True))
    again = Engine().run(other / "config.yaml")
    assert again.ok, [p.render() for p in again.problems]
    rgb, feat = photo("rocket", 0.4), feature(99)
    feeds = {"img": color.rgb_to_nv12(rgb[None]), "feat": feat}
    first = run_bc(root / "model_output" / "two_quantized_model.bc", feeds)
    second = run_bc(other / "model_output" / "two_quantized_model.bc", feeds)
    np.testing.assert_array_equal(first, second)
    assert again.results["report"]["outputs"] == report.results["report"]["outputs"]


def test_swapped_cal_dirs_are_caught(tmp_path):
    """The `;` positions matter: the feature folder given for the image input is a wrong-size sample."""
    write_data(tmp_path)
    (tmp_path / "config.yaml").write_text(config_text(PER_INPUT, cal=("cal_feat_f32", "cal_img")))
    report = Engine().run(tmp_path / "config.yaml")
    assert not report.ok
    assert any("cannot reshape array" in p.message and "cal_feat_f32" in p.message for p in report.problems)
    assert not (tmp_path / "model_output").exists() or not [
        p for p in (tmp_path / "model_output").iterdir() if p.is_file()]


# ------------------------------------------------------------------ bad inputs: hb_compile's words, nothing written

def _fails_with(root: Path, per_input: dict[str, tuple], model: onnx.ModelProto | None = None) -> list[str]:
    write_data(root)
    if model is not None:
        onnx.save(model, str(root / "model.onnx"))
    (root / "config.yaml").write_text(config_text(per_input))
    report = Engine().run(root / "config.yaml")
    assert not report.ok
    wd = root / "model_output"
    assert not wd.exists() or not [p for p in wd.iterdir() if p.is_file()], "nothing may be written"
    return [p.message for p in report.problems if p.severity.label == "error"]


def _illegal_pairs() -> list[tuple[str, str]]:
    rts = set(schema.item_enum("input_parameters", "input_type_rt"))
    trains = set(schema.item_enum("input_parameters", "input_type_train"))
    legal = legal_conversions()
    return [(t, r) for t in sorted(trains) for r in sorted(rts - legal[t])]


def test_illegal_pairs_cover_the_documented_matrix():
    pairs = set(_illegal_pairs())
    assert {("gray", "nv12"), ("rgb", "gray"), ("yuv444", "rgb"), ("yuv444", "bgr"), ("featuremap", "nv12"),
            ("rgb", "featuremap"), ("gray", "rgb")} <= pairs
    assert not pairs & {("rgb", "nv12"), ("bgr", "yuv444"), ("yuv444", "nv12"), ("gray", "gray")}


@pytest.mark.parametrize("train,rt", _illegal_pairs())
def test_illegal_pair_is_refused(tmp_path, train, rt):
    channels = 1 if train == "gray" else 3
    per_input = {**PER_INPUT, "input_type_train": (train, "featuremap"), "input_type_rt": (rt, "featuremap"),
                 "input_shape": (f"1x{channels}x{H}x{W}", PER_INPUT["input_shape"][1])}
    del per_input["mean_value"], per_input["scale_value"]
    messages = _fails_with(tmp_path, per_input, two_input_model(channels))
    assert messages == [f"The input_type_train '{train}' of the input img is not supported to be transformed to "
                        f"input_type_rt '{rt}' now"]


@pytest.mark.parametrize("shape", [(1, 3, H - 1, W), (1, 3, H, W - 3)])
def test_odd_nv12_size_is_refused(tmp_path, shape):
    shown = "x".join(map(str, shape))
    messages = _fails_with(tmp_path, {**PER_INPUT, "input_shape": (shown, PER_INPUT["input_shape"][1])},
                           two_input_model(3, shape[2], shape[3]))
    assert messages == [f"The input shape: {shown} is invalid, nv12 type does not support odd number input size"]


@pytest.mark.parametrize("key,value,found", [("mean_value", "123.675 116.28", "123.675 116.28"),
                                             ("scale_value", "0.1 0.2 0.3 0.4", "0.1 0.2 0.3 0.4")])
def test_wrong_mean_or_scale_count_is_refused(tmp_path, key, value, found):
    count = len(value.split())
    messages = _fails_with(tmp_path, {**PER_INPUT, key: (value, None)})
    assert messages == [f"Wrong {key} format {found}: input 0 has 3 channels, so give 1 or 3 values, found {count}"]


@pytest.mark.parametrize("key", ["mean_value", "scale_value", "std_value"])
def test_norm_on_featuremap_is_refused(tmp_path, key):
    per_input = {**PER_INPUT, key: (PER_INPUT.get(key, (None,))[0], "0.5")}
    if key == "std_value":
        per_input["std_value"] = (None, "2")
    messages = _fails_with(tmp_path, per_input)
    assert len(messages) == 1
    assert re.fullmatch(r"Input_type_rt \S+ is featuremap, this input only support norm_type no_preprocess",
                        messages[0])


def test_list_count_must_match_the_inputs(tmp_path):
    per_input = {**PER_INPUT, "input_type_rt": ("nv12",)}
    messages = _fails_with(tmp_path, per_input)
    assert "Wrong input_type_rt num received. Num of input_type_rt given: 1 is not equal to input num 2" in messages
