"""Normalization values and insert_normalization on generated conv models, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.preprocess import Normalization, insert_normalization, normalized_name, remove_normalization
from engine.problems import ConfigError, ModelError
from tests.unit.preprocess.preprocess_support import conv_model, photo, run

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def test_from_values_broadcasts_scalars_and_keeps_per_channel_lists():
    norm = Normalization.from_values(128, [0.5, 0.25, 0.125], None, 3)
    assert norm.mean.tolist() == [128.0] * 3 and norm.scale.tolist() == [0.5, 0.25, 0.125] and norm.std is None
    text = Normalization.from_values("103.94 116.78 123.68", "0.017", None, 3)
    assert text.mean.tolist() == [103.94, 116.78, 123.68] and text.scale.tolist() == [0.017] * 3
    assert Normalization.from_values(None, None, (2.0,), 1).multiplier(1).tolist() == [0.5]
    assert Normalization.from_values(None, None, None, 3).is_identity


@pytest.mark.parametrize("args,code,message", [
    (([1, 2], None, None), "norm-channels",
     "Wrong mean_value format 1 2: the input has 3 channels, so give 1 or 3 values, found 2"),
    ((None, [1, 2, 3, 4], None), "norm-channels",
     "Wrong scale_value format 1 2 3 4: the input has 3 channels, so give 1 or 3 values, found 4"),
    ((None, 0.5, 2.0), "scale-and-std", "Only one of scale_value and std_value can be specified"),
    ((None, None, [1, 0, 1]), "std-zero", "std_value must not contain 0"),
    (("12 abc", None, None), "bad-format", "Wrong mean_value format 12 abc, please refer to user manual: expected "
     "one number, or one per channel separated by spaces, e.g. '103.94 116.78 123.68' (';' between inputs)"),
])
def test_from_values_problems(args, code, message):
    with pytest.raises(ConfigError) as err:
        Normalization.from_values(*args, channels=3)
    (problem,) = err.value.problems
    assert (problem.code, problem.message) == (code, message)
    assert problem.path[0] == "input_parameters"


def _reference(train: np.ndarray, norm: dict, layout: str) -> np.ndarray:
    shape = (1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)
    x = train.astype(np.float64)
    if norm.get("mean") is not None:
        x = x - np.reshape(norm["mean"], shape)
    if norm.get("scale") is not None:
        x = x * np.reshape(norm["scale"], shape)
    if norm.get("std") is not None:
        x = x / np.reshape(norm["std"], shape)
    return x.astype(np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("norm", [
    {"mean": MEAN, "scale": [1 / s for s in STD]},
    {"mean": MEAN, "std": STD},
    {"mean": [128.0]},
    {"scale": [1 / 255]},
    {"mean": 127.5, "std": 127.5},
], ids=["mean+scale", "mean+std", "mean", "scale", "scalars"])
def test_insert_normalization_equals_normalize_then_run(layout, norm):
    img = photo("coffee")[:64, :96]
    shape = (1, 3, 64, 96) if layout == "NCHW" else (1, 64, 96, 3)
    train = (img.transpose(2, 0, 1) if layout == "NCHW" else img)[None].astype(np.float32)
    original = conv_model(shape, layout)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = insert_normalization(model, "images", Normalization.from_values(
        norm.get("mean"), norm.get("scale"), norm.get("std"), 3), layout)
    assert result is model  # in place, as the parse stage relies on
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    assert model.graph.input[0].type.tensor_type.shape == original.graph.input[0].type.tensor_type.shape
    ours = [n for n in model.graph.node if n.name.startswith("HZ_PREPROCESS_FOR_images")]
    assert ours and ours[-1].name == "HZ_PREPROCESS_FOR_images" and ours[-1].output[0] == normalized_name("images")
    wanted = [1, 1, 1, 3] if layout == "NHWC" else [1, 3, 1, 1]
    assert all(list(t.dims) == wanted for t in model.graph.initializer if t.name.startswith("HZ_PREPROCESS"))
    (got,) = run(model, {"images": train})
    (expected,) = run(original, {"images": _reference(train, {k: np.broadcast_to(v, 3) for k, v in norm.items()},
                                                      layout)})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # the model does compute something


def test_insert_normalization_rewires_every_consumer_and_refuses_a_second_time():
    model = conv_model((1, 3, 8, 8))
    extra = onnx.helper.make_node("ReduceMax", ["images"], ["peak"], name="peak", keepdims=0)
    model.graph.node.append(extra)
    model.graph.output.append(onnx.helper.make_tensor_value_info("peak", onnx.TensorProto.FLOAT, []))
    insert_normalization(model, "images", Normalization.from_values(None, 0.5, None, 3), "NCHW")
    readers = [n.name for n in model.graph.node if "images" in n.input]
    assert readers == ["HZ_PREPROCESS_FOR_images"]
    x = np.full((1, 3, 8, 8), 10.0, np.float32)
    assert run(model, {"images": x})[1] == pytest.approx(5.0)
    with pytest.raises(ModelError) as err:
        insert_normalization(model, "images", Normalization.from_values(1.0, None, None, 3), "NCHW")
    assert err.value.problems[0].code == "preprocess-exists"


def test_insert_normalization_unknown_input():
    with pytest.raises(ModelError) as err:
        insert_normalization(conv_model((1, 3, 8, 8)), "data", Normalization.from_values(1.0, None, None, 3), "NCHW")
    assert err.value.problems[0].message == ("The input_name 'data' is not an input of the model; the model's inputs "
                                             "are ['images']")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_remove_normalization_restores_the_model_and_returns_the_values(layout):
    shape = (1, 3, 8, 8) if layout == "NCHW" else (1, 8, 8, 3)
    original = conv_model(shape, layout)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    insert_normalization(model, "images", Normalization.from_values(MEAN, None, STD, 3), layout)
    norm = remove_normalization(model, "images")
    np.testing.assert_allclose(norm.mean, MEAN, rtol=1e-6)
    np.testing.assert_allclose(norm.std, STD, rtol=1e-6)
    assert norm.scale is None
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in original.graph.node]
    assert not [t for t in model.graph.initializer if t.name.startswith("HZ_PREPROCESS")]
    onnx.checker.check_model(model, full_check=True)
    assert remove_normalization(model, "images") is None
