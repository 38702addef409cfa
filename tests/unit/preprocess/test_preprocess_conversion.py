"""Runtime input conversion subgraphs: every legal train→rt pair on real photos, and every refusal."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest

from engine import schema
from engine.preprocess import (
    Normalization,
    attach_input_conversion,
    build_input_conversion,
    insert_normalization,
    legal_conversions,
    normalized_name,
    remove_normalization,
    runtime_input,
)
from engine.problems import ConfigError, ModelError
from engine.runtime import hwc_to_chw, rgb_to_nv12, rgb_to_yuv444
from tests.unit.preprocess.preprocess_support import PHOTOS, conv_model, cosine, photo, run

NV12_TYPES = {"nv12", "yuv420sp_bt601_video"}
DATA_MOVEMENT = {"Slice", "Reshape", "Transpose", "Resize", "Concat", "Cast"}
IMAGE_NORM = Normalization.from_values([123.675, 116.28, 103.53], [1 / 58.395, 1 / 57.12, 1 / 57.375], None, 3)
YUV_NORM = Normalization.from_values(128.0, None, 64.0, 3)
GRAY_NORM = Normalization.from_values(128.0, None, 64.0, 1)
FEATURE_NORM = Normalization.from_values([0.5, -1.0, 2.0, 0.0, 1.0], 0.5, None, 5)
FEATURE_SHAPE = (1, 5, 6, 7)


# ------------------------------------------------------------------ the photo in each view

def train_view(img: np.ndarray, train_type: str) -> np.ndarray:
    """The photo as the float model was trained on it: HWC float values of `train_type`, un-normalized."""
    yuv = {"yuv444": True, "yuv_bt601_full": True, "yuv444_128": True, "yuv_bt601_video": False}
    if train_type == "rgb":
        out = img
    elif train_type == "bgr":
        out = img[..., ::-1]
    elif train_type == "gray":
        out = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    else:
        out = rgb_to_yuv444(img, full_range=yuv[train_type])
    out = out.astype(np.float32)
    return out - 128.0 if train_type == "yuv444_128" else out


def runtime_view(img: np.ndarray, rt_type: str, space: str) -> np.ndarray:
    """The photo as a device delivers it for `rt_type` (one image, HWC or NV12 2-D)."""
    if rt_type in NV12_TYPES:
        return rgb_to_nv12(img, full_range=space == "regular" and rt_type == "nv12")
    values = train_view(img, rt_type)
    return values.astype(np.int8 if rt_type == "yuv444_128" else np.uint8)


def to_layout(hwc: np.ndarray, layout: str | None) -> np.ndarray:
    return hwc[None] if layout == "NHWC" else hwc_to_chw(hwc[None])


def norm_for(train_type: str) -> Normalization:
    if train_type == "gray":
        return GRAY_NORM
    if train_type in ("rgb", "bgr"):
        return IMAGE_NORM
    return YUV_NORM


def reference_normalized(train: np.ndarray, norm: Normalization) -> np.ndarray:
    c = train.shape[-1]
    return ((train.astype(np.float64) - norm.mean_or_zero(c)) * norm.multiplier(c)).astype(np.float32)


# ------------------------------------------------------------------ runtime tensor specs

@pytest.mark.parametrize("rt,train,layout,shape,rt_layout,expected", [
    ("nv12", "rgb", "NCHW", (1, 3, 480, 640), None, ((1, 720, 640), np.uint8, None)),
    ("nv12", "bgr", "NHWC", (2, 480, 640, 3), None, ((2, 720, 640), np.uint8, None)),
    ("yuv420sp_bt601_video", "rgb", "NCHW", (1, 3, 6, 8), None, ((1, 9, 8), np.uint8, None)),
    ("rgb", "bgr", "NCHW", (1, 3, 6, 8), None, ((1, 6, 8, 3), np.uint8, "NHWC")),
    ("bgr", "rgb", "NHWC", (1, 6, 8, 3), None, ((1, 6, 8, 3), np.uint8, "NHWC")),
    ("yuv444", "yuv444", "NCHW", (1, 3, 6, 8), None, ((1, 6, 8, 3), np.uint8, "NHWC")),
    ("yuv444_128", "rgb", "NCHW", (1, 3, 6, 8), None, ((1, 6, 8, 3), np.int8, "NHWC")),
    ("rgb", "rgb", "NCHW", (1, 3, 6, 8), "NCHW", ((1, 3, 6, 8), np.uint8, "NCHW")),
    ("gray", "gray", "NHWC", (1, 6, 8, 1), None, ((1, 1, 6, 8), np.uint8, "NCHW")),
    ("gray", "gray", "NCHW", (1, 1, 6, 8), "NHWC", ((1, 6, 8, 1), np.uint8, "NHWC")),
    ("featuremap", "featuremap", None, (1, 5, 6, 7), None, ((1, 5, 6, 7), np.float32, None)),
    ("featuremap", "featuremap", None, (4, 10), None, ((4, 10), np.float32, None)),
])
def test_runtime_input_shape_and_dtype(rt, train, layout, shape, rt_layout, expected):
    spec = runtime_input(rt, shape, layout, rt_layout)
    assert (spec.shape, spec.dtype, spec.layout) == (expected[0], np.dtype(expected[1]), expected[2])
    vi = build_input_conversion(rt, train, layout, shape, norm=None, rt_layout=rt_layout).rt_input
    assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == list(expected[0])
    assert vi.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(expected[1]))


# ------------------------------------------------------------------ every legal pair, end to end

def _legal_cases() -> list[tuple[str, str, str | None, str]]:
    cases = []
    for train, rts in sorted(legal_conversions().items()):
        for rt in sorted(rts):
            layouts = [None] if train == "featuremap" else ["NCHW", "NHWC"]
            spaces = ["regular", "bt601_video"] if rt == "nv12" else ["regular"]
            cases += [(train, rt, layout, space) for layout in layouts for space in spaces]
    return cases


@pytest.mark.parametrize("train,rt,layout,space", _legal_cases())
def test_legal_pair_runtime_model_matches_float_model(train, rt, layout, space):
    if train == "featuremap":
        feature = np.random.default_rng(1).normal(0, 3, FEATURE_SHAPE).astype(np.float32)
        shape, norm, rt_data = FEATURE_SHAPE, FEATURE_NORM, feature
        normalized = ((feature - FEATURE_NORM.mean.reshape(1, -1, 1, 1)) * 0.5).astype(np.float32)
    else:
        img = photo("chelsea")
        h, w, _ = img.shape
        c = 1 if train == "gray" else 3
        shape = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
        norm = norm_for(train)
        normalized = to_layout(reference_normalized(train_view(img, train), norm), layout)
        spec = runtime_input(rt, shape, layout)
        rt_hwc = runtime_view(img, rt, space)
        rt_data = rt_hwc[None] if spec.layout in (None, "NHWC") else hwc_to_chw(rt_hwc[None])

    conversion = build_input_conversion(rt, train, layout, shape, space, norm, input_name="images")
    (converted,) = run(conversion.as_model(), {"images": rt_data})
    assert converted.shape == normalized.shape and converted.dtype == np.float32
    scale = float(np.abs(norm.multiplier(shape[1] if layout != "NHWC" else shape[-1])).max())
    if rt in NV12_TYPES:  # 4:2:0 chroma loses detail; everything else is rounding at most
        assert cosine(converted, normalized) >= 0.999
    elif rt == train:
        np.testing.assert_allclose(converted, normalized, rtol=1e-5, atol=1e-4)
    else:
        assert np.abs(converted - normalized).max() <= 2.5 * scale

    float_model = conv_model(shape, layout or "NCHW")
    (expected,) = run(float_model, {"images": normalized})
    deployed = attach_input_conversion(float_model, "images", conversion)
    onnx.checker.check_model(deployed, full_check=True)
    assert [i.name for i in deployed.graph.input] == ["images"]
    (got,) = run(deployed, {"images": rt_data})
    assert cosine(got, expected) >= 0.999
    (via_converted,) = run(conv_model(shape, layout or "NCHW"), {"images": converted})
    np.testing.assert_allclose(got, via_converted, rtol=1e-5, atol=1e-5)  # the wiring adds nothing of its own


@pytest.mark.parametrize("space", ["regular", "bt601_video"])
@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_nv12_conversion_cosine_on_every_photo(name, space):
    img = photo(name)
    h, w, _ = img.shape
    conversion = build_input_conversion("nv12", "rgb", "NCHW", (1, 3, h, w), space, IMAGE_NORM)
    (converted,) = run(conversion.as_model(), {"input": rgb_to_nv12(img[None], full_range=space == "regular")})
    assert cosine(converted, to_layout(reference_normalized(img, IMAGE_NORM), "NCHW")) >= 0.999


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_nv12_video_range_conversion_matches_opencv(name):
    img = photo(name)
    h, w, _ = img.shape
    i420 = cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420)
    u, v = i420[h:h + h // 4].reshape(h // 2, w // 2), i420[h + h // 4:].reshape(h // 2, w // 2)
    nv12 = np.concatenate([i420[:h], np.stack([u, v], -1).reshape(h // 2, w)])
    for rt_type, train, order in (("nv12", "rgb", cv2.COLOR_YUV2RGB_NV12), ("nv12", "bgr", cv2.COLOR_YUV2BGR_NV12),
                                  ("yuv420sp_bt601_video", "rgb", cv2.COLOR_YUV2RGB_NV12)):
        conversion = build_input_conversion(rt_type, train, "NHWC", (1, h, w, 3), "bt601_video"
                                            if rt_type == "nv12" else "regular")
        (ours,) = run(conversion.as_model(), {"input": nv12[None]})
        cv = cv2.cvtColor(nv12, order).astype(np.float32)
        inside = np.all((cv > 0) & (cv < 255), axis=-1)  # the model does not clamp: compare in-gamut pixels
        assert inside.mean() > 0.8
        assert np.abs(ours[0][inside] - cv[inside]).max() <= 2.0


def test_batch_of_two_nv12_frames():
    a, b = photo("coffee")[:96, :128], photo("astronaut")[:96, :128]
    conversion = build_input_conversion("nv12", "rgb", "NCHW", (2, 3, 96, 128), "regular", IMAGE_NORM)
    (both,) = run(conversion.as_model(), {"input": rgb_to_nv12(np.stack([a, b]))})
    (second,) = run(build_input_conversion("nv12", "rgb", "NCHW", (1, 3, 96, 128), "regular", IMAGE_NORM)
                    .as_model(), {"input": rgb_to_nv12(b[None])})
    np.testing.assert_array_equal(both[1], second[0])


# ------------------------------------------------------------------ the shape of the subgraph

@pytest.mark.parametrize("rt,train,layout", [("nv12", "rgb", "NCHW"), ("nv12", "yuv444", "NHWC"),
                                             ("bgr", "rgb", "NCHW"), ("yuv444_128", "bgr", "NHWC"),
                                             ("gray", "gray", "NCHW")])
def test_data_movement_then_one_affine_conv(rt, train, layout):
    c = 1 if train == "gray" else 3
    shape = (1, c, 8, 8) if layout == "NCHW" else (1, 8, 8, c)
    conversion = build_input_conversion(rt, train, layout, shape, "regular", norm_for(train), input_name="images")
    ops = [n.op_type for n in conversion.nodes]
    affine = ops.index("Conv")
    assert ops.count("Conv") == 1 and set(ops[:affine]) <= DATA_MOVEMENT
    assert ops[affine + 1:] == (["Transpose"] if layout == "NHWC" else [])
    assert conversion.nodes[affine].name == "HZ_PREPROCESS_FOR_images"
    assert all(n.name.startswith("HZ_PREPROCESS_FOR_images") for n in conversion.nodes)
    assert all(t.name.startswith("HZ_PREPROCESS_FOR_images") for t in conversion.initializers)
    assert conversion.output_name == normalized_name("images")
    if rt == "nv12":
        assert "Resize" in ops


def test_featuremap_is_identity_or_normalization_only():
    plain = build_input_conversion("featuremap", "featuremap", None, FEATURE_SHAPE, norm=None)
    assert [n.op_type for n in plain.nodes] == ["Identity"]
    normed = build_input_conversion("featuremap", "featuremap", "NCHW", FEATURE_SHAPE, norm=FEATURE_NORM)
    assert [n.op_type for n in normed.nodes] == ["Sub", "Mul"]


# ------------------------------------------------------------------ refusals in hb_compile's wording

def _illegal_cases() -> list[tuple[str, str]]:
    rts = set(schema.item_enum("input_parameters", "input_type_rt")) | NV12_TYPES
    legal = legal_conversions()
    return [(train, rt) for train in sorted(legal) for rt in sorted(rts - legal[train])]


@pytest.mark.parametrize("train,rt", _illegal_cases())
def test_illegal_pair_is_refused(train, rt):
    c = 1 if train == "gray" else 3
    with pytest.raises(ConfigError) as err:
        build_input_conversion(rt, train, "NCHW", (1, c, 8, 8), input_name="images")
    (problem,) = err.value.problems
    assert problem.code == "input-illegal-conversion"
    assert problem.message == (f"The input_type_train '{train}' of the input images is not supported to be "
                               f"transformed to input_type_rt '{rt}' now")


def test_illegal_cases_cover_the_documented_refusals():
    cases = set(_illegal_cases())
    assert {("gray", "nv12"), ("rgb", "gray"), ("yuv444", "rgb"), ("featuremap", "nv12"), ("rgb", "featuremap")} <= cases


@pytest.mark.parametrize("rt,layout,shape,shown", [
    ("nv12", "NCHW", (1, 3, 223, 224), "1x3x223x224"),
    ("nv12", "NHWC", (1, 224, 223, 3), "1x224x223x3"),
    ("yuv420sp_bt601_video", "NCHW", (1, 3, 8, 7), "1x3x8x7"),
])
def test_odd_nv12_size_is_refused(rt, layout, shape, shown):
    with pytest.raises(ConfigError) as err:
        build_input_conversion(rt, "rgb", layout, shape)
    (problem,) = err.value.problems
    assert problem.code == "input-nv12-odd-size"
    assert problem.message == f"The input shape: {shown} is invalid, nv12 type does not support odd number input size"


@pytest.mark.parametrize("train,shape,norm,key", [
    ("rgb", (1, 3, 8, 8), Normalization(mean=np.array([1.0, 2.0])), "mean_value"),
    ("gray", (1, 1, 8, 8), Normalization(scale=np.array([1.0, 2.0, 3.0])), "scale_value"),
])
def test_norm_count_must_fit_the_channels(train, shape, norm, key):
    with pytest.raises(ConfigError) as err:
        build_input_conversion(train, train, "NCHW", shape, norm=norm, input_name="images")
    (problem,) = err.value.problems
    c = shape[1]
    assert problem.code == "norm-channels" and problem.path == ("input_parameters", key)
    assert problem.message == (f"Wrong {key} format: the input images has {c} channels, so give 1 or {c} values, "
                               f"found {norm.channels}")


@pytest.mark.parametrize("args,code,message", [
    (("rgb", "rgb", "NCHW", (1, 3, 8, 8), "bt601_video"), "input-space-not-nv12",
     "input_space_and_range 'bt601_video' is only valid with input_type_rt 'nv12', but input input has 'rgb'"),
    (("nv12", "rgb", "NCHW", (1, 3, 8)), "input-not-4d",
     "The specified input_type_rt is nv12, but the input_shape is not four-dimensional, please set the "
     "input_type_rt and input_type_train to featuremap"),
    (("rgb", "rgb", "NCHW", (1, 1, 8, 8)), "input-layout-shape",
     "Input_type_train rgb input_layout_train NCHW and input_shape 1x1x8x8 does not seem right. Please double check."),
    (("rgb", "rgb", None, (1, 3, 8, 8)), "missing-key",
     "Key 'input_parameters' error: Missing keys: 'input_layout_train'"),
])
def test_other_refusals(args, code, message):
    with pytest.raises(ConfigError) as err:
        build_input_conversion(*args)
    assert [(p.code, p.message) for p in err.value.problems] == [(code, message)]


# ------------------------------------------------------------------ attaching to models

def _two_input_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8])
    feat = helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["img", "feat"], ["sum"], name="add")], "two",
                              [feat, img], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_attach_keeps_input_order_names_and_the_other_inputs():
    model = attach_input_conversion(_two_input_model(), "img",
                                    build_input_conversion("nv12", "rgb", "NCHW", (1, 3, 8, 8), norm=IMAGE_NORM))
    onnx.checker.check_model(model, full_check=True)
    inputs = [(i.name, i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in model.graph.input]
    assert inputs == [("feat", onnx.TensorProto.FLOAT, [1, 3, 8, 8]), ("img", onnx.TensorProto.UINT8, [1, 12, 8])]
    assert all(n.name.startswith("HZ_PREPROCESS_FOR_img") for n in model.graph.node[:-1])
    img = photo("astronaut")[200:208, 200:208]
    feat = np.ones((1, 3, 8, 8), np.float32)
    (got,) = run(model, {"img": rgb_to_nv12(img[None]), "feat": feat})
    want = to_layout(reference_normalized(img, IMAGE_NORM), "NCHW") + 1.0
    assert cosine(got, want) > 0.99


def test_attach_refuses_a_conversion_of_another_shape():
    with pytest.raises(ModelError) as err:
        attach_input_conversion(conv_model((1, 3, 8, 8)), "images",
                                build_input_conversion("rgb", "rgb", "NCHW", (1, 3, 16, 16)))
    assert err.value.problems[0].code == "preprocess-shape"
    assert err.value.problems[0].message == ("Input 'images' of the model has shape [1, 3, 8, 8], but the input "
                                             "conversion produces [1, 3, 16, 16]")


def test_attach_upgrades_an_opset_11_model():
    img = photo("coffee")[100:132, 200:248]
    model = conv_model((1, 3, 32, 48), opset=11)
    (want,) = run(model, {"images": to_layout(reference_normalized(img[..., ::-1], IMAGE_NORM), "NCHW")})
    attach_input_conversion(model, "images", build_input_conversion("rgb", "bgr", "NCHW", (1, 3, 32, 48), "regular",
                                                                    IMAGE_NORM))
    assert next(o.version for o in model.opset_import if o.domain == "") >= 13
    (got,) = run(model, {"images": img[None]})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_normalization_moves_from_the_float_model_into_the_conversion():
    """The flow a later stage uses: the float model's own normalization becomes part of the one affine Conv."""
    img = photo("chelsea")
    h, w, _ = img.shape
    model = conv_model((1, 3, h, w))
    insert_normalization(model, "images", IMAGE_NORM, "NCHW")
    (want,) = run(model, {"images": to_layout(img.astype(np.float32), "NCHW")})
    norm = remove_normalization(model, "images")
    attach_input_conversion(model, "images", build_input_conversion("nv12", "rgb", "NCHW", (1, 3, h, w),
                                                                    "regular", norm))
    assert [n.op_type for n in model.graph.node].count("Sub") == 0
    (got,) = run(model, {"images": rgb_to_nv12(img[None])})
    assert cosine(got, want) >= 0.999
