"""Caffe frontend: converted ONNX (onnxruntime) against OpenCV's Caffe importer, or against a
numpy transcription of Caffe's layer code where OpenCV does not do what Caffe does; error cases."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from engine.frontend.caffe import SUPPORTED, convert, proto
from engine.problems import ModelError
from tests.support import caffe_models as cm
from tests.support.caffe_models import CaffeFiles, NetWriter

COSINE = 0.99999

# Nets OpenCV converts the way Caffe computes them.
OPENCV_NETS = [n for n in cm.LAYER_NETS if n not in {
    "inner_product_transpose", "scale_two_bottoms", "prelu_shared", "concat_dim", "slice_equal",
    "pool_ave_floor", "pool_max_floor", "upsample", "batch_norm_batch_stats"}]


# ---- helpers ------------------------------------------------------------------------------------------

def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def run_opencv(files: CaffeFiles, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OpenCV names outputs by layer, though it renames some layers to their top blob."""
    net = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    for name, value in feeds.items():
        net.setInput(value, name)
    layers = set(net.getLayerNames())
    names = [layer if layer in layers else blob for blob, layer in files.outputs.items()]
    return dict(zip(files.outputs, net.forward(names), strict=True))


def random_feeds(files: CaffeFiles, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in files.inputs.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert list(ours) == list(theirs)
    for name, want in theirs.items():
        got = ours[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert cosine(got, want) >= COSINE, (name, cosine(got, want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def blobs(files: CaffeFiles, layer: str) -> list[np.ndarray]:
    net = proto.NetParameter.FromString(files.caffemodel.read_bytes())
    (found,) = [lay for lay in list(net.layer) + list(net.layers) if lay.name == layer]
    return [np.asarray(b.data, np.float32).reshape([int(d) for d in b.shape.dim]) for b in found.blobs]


# ---- numpy transcriptions of Caffe's layers (where OpenCV differs from Caffe) ------------------------

def caffe_pool(x: np.ndarray, kernel, stride, pad, is_max: bool, ceil: bool = True) -> np.ndarray:
    """Caffe's PoolingLayer::Forward_cpu, loop for loop."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rnd = np.ceil if ceil else np.floor
    oh = int(rnd((h + 2 * ph - kh) / sh)) + 1
    ow = int(rnd((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        oh -= (oh - 1) * sh >= h + ph
        ow -= (ow - 1) * sw >= w + pw
    y = np.zeros((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.max(axis=(2, 3)) if is_max else win.sum(axis=(2, 3)) / size
    return y


def ref_inner_product_transpose(f: CaffeFiles, x: dict) -> dict:
    """OpenCV ignores `transpose`; Caffe then computes x · W with W stored K x N."""
    (w,) = blobs(f, "fc")
    return {"out": x["data"] @ w}


def ref_scale_two_bottoms(f: CaffeFiles, x: dict) -> dict:
    """Caffe aligns the second bottom (1 x 4) with axes 0..1 for axis 0; OpenCV does not."""
    (bias,) = blobs(f, "scale")
    return {"out": x["data"] * x["factor"][:, :, None, None] + bias[None, :, None, None]}


def ref_prelu_shared(f: CaffeFiles, x: dict) -> dict:
    """Caffe stores a channel-shared slope as a 0-D blob, which OpenCV's importer cannot load."""
    (a,) = blobs(f, "prelu_shared")
    return {"out": np.where(x["data"] > 0, x["data"], a * x["data"])}


def ref_concat_dim(f: CaffeFiles, x: dict) -> dict:
    """OpenCV ignores the legacy `concat_dim` field."""
    return {"out": np.concatenate([x["a"], x["b"]], axis=2)}


def ref_slice_equal(f: CaffeFiles, x: dict) -> dict:
    """OpenCV ignores the legacy `slice_dim` field."""
    s0, s1 = np.split(x["data"], 2, axis=2)
    return {"out": s0 - s1}


def ref_pool_ave_floor(f: CaffeFiles, x: dict) -> dict:
    """OpenCV's caffe.proto has no `round_mode` (BVLC added it in 2018)."""
    return {"out": caffe_pool(x["data"], (3, 3), (2, 2), (1, 1), is_max=False, ceil=False)}


def ref_pool_max_floor(f: CaffeFiles, x: dict) -> dict:
    return {"out": caffe_pool(x["data"], (2, 2), (2, 2), (0, 0), is_max=True, ceil=False)}


def ref_upsample(f: CaffeFiles, x: dict) -> dict:
    """Upsample (YOLOv3 / SegNet forks) is not a layer OpenCV knows: nearest neighbour, scale 2."""
    return {"out": x["data"].repeat(2, axis=2).repeat(2, axis=3)}


def ref_batch_norm_batch_stats(f: CaffeFiles, x: dict) -> dict:
    """use_global_stats: false normalizes with the batch's statistics; OpenCV refuses batch > 1."""
    d = x["data"]
    mean = d.mean(axis=(0, 2, 3), keepdims=True)
    var = ((d - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    return {"out": (d - mean) / np.sqrt(var + 1e-5)}


NUMPY_NETS = {
    "inner_product_transpose": ref_inner_product_transpose,
    "scale_two_bottoms": ref_scale_two_bottoms,
    "prelu_shared": ref_prelu_shared,
    "concat_dim": ref_concat_dim,
    "slice_equal": ref_slice_equal,
    "pool_ave_floor": ref_pool_ave_floor,
    "pool_max_floor": ref_pool_max_floor,
    "upsample": ref_upsample,
    "batch_norm_batch_stats": ref_batch_norm_batch_stats,
}


# ---- numerical equivalence --------------------------------------------------------------------------

def test_every_layer_net_has_a_reference():
    assert sorted(OPENCV_NETS + list(NUMPY_NETS)) == sorted(cm.LAYER_NETS)
    covered = {lay.type for name in cm.LAYER_NETS for lay in cm.LAYER_NETS[name]().net.layer}
    assert SUPPORTED <= covered


@pytest.mark.parametrize("name", OPENCV_NETS)
def test_layer_matches_opencv(name, tmp_path):
    files = cm.write(name, tmp_path)
    feeds = random_feeds(files)
    assert_same(run_onnx(convert(files.prototxt, files.caffemodel), feeds), run_opencv(files, feeds))


@pytest.mark.parametrize("name", list(NUMPY_NETS))
def test_layer_matches_caffe_reference(name, tmp_path):
    files = cm.write(name, tmp_path)
    feeds = random_feeds(files)
    assert_same(run_onnx(convert(files.prototxt, files.caffemodel), feeds), NUMPY_NETS[name](files, feeds))


@pytest.mark.parametrize("name", ["pool_max_ceil", "pool_max_pad", "pool_ave_overhang_pad", "pool_ave_overhang",
                                  "pool_ave_pad", "pool_ave_clipped", "pool_max_clipped"])
def test_pool_reference_agrees_with_opencv(name, tmp_path):
    """The numpy Caffe pooling used for FLOOR rounding is itself checked where OpenCV applies."""
    files = cm.write(name, tmp_path)
    feeds = random_feeds(files)
    p = cm.LAYER_NETS[name]().net.layer[1].pooling_param
    ref = caffe_pool(feeds["data"], (p.kernel_size,) * 2, (p.stride,) * 2, (p.pad,) * 2, is_max=p.pool == 0)
    assert_same({"out": ref}, run_opencv(files, feeds))


@pytest.mark.parametrize("name", ["resnet_style", "legacy_v1"])
def test_whole_net_matches_opencv(name, tmp_path):
    files = cm.write(name, tmp_path)
    model = convert(files.prototxt, files.caffemodel)
    for seed in range(3):
        feeds = random_feeds(files, seed)
        assert_same(run_onnx(model, feeds), run_opencv(files, feeds))


# ---- the model's form --------------------------------------------------------------------------------

def test_resnet_graph_form(tmp_path):
    files = cm.write("resnet_style", tmp_path)
    model = convert(files.prototxt, files.caffemodel)
    g = model.graph
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    onnx.checker.check_model(model, full_check=True)
    # unique names; every tensor float32 with a static shape
    assert len({n.name for n in g.node}) == len(g.node)
    produced = [o for n in g.node for o in n.output]
    assert len(set(produced)) == len(produced)
    assert not set(produced) & ({i.name for i in g.initializer} | {i.name for i in g.input})
    typed = list(g.input) + list(g.output) + list(g.value_info)
    assert {vi.name for vi in typed} >= set(produced)
    for vi in typed:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    assert [i.name for i in g.input] == ["data"] and [o.name for o in g.output] == ["prob"]
    assert [d.dim_value for d in g.output[0].type.tensor_type.shape.dim] == [1, 10]
    ops = Counter(n.op_type for n in g.node)
    # 8 BatchNorm + Scale pairs became 8 BatchNormalization, nothing else
    assert ops == {"Conv": 8, "BatchNormalization": 8, "Relu": 7, "Add": 2, "MaxPool": 1, "AveragePool": 1,
                   "Flatten": 1, "Gemm": 1, "Softmax": 1}
    # in place: the last value of blob conv1 keeps its name, earlier ones name their writer
    by_name = {n.name: n for n in g.node}
    assert by_name["conv1"].output == ["conv1_conv1"]
    assert by_name["bn_conv1"].output == ["conv1_scale_conv1"]
    assert by_name["conv1_relu"].output == ["conv1"]
    assert by_name["pool1"].input == ["conv1"]
    # Caffe's ceil rounding: 16 -> 8 (floor would give 7), 8 -> 4 (floor: 3)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in typed}
    assert shapes["pool1"] == [1, 8, 8, 8] and shapes["pool5"] == [1, 16, 4, 4]


def test_average_pool_overhang_is_padded_then_pooled(tmp_path):
    files = cm.write("pool_ave_overhang_pad", tmp_path)
    g = convert(files.prototxt, files.caffemodel).graph
    assert [n.op_type for n in g.node] == ["Pad", "AveragePool"]
    assert [n.name for n in g.node] == ["pool_ave_overhang_pad_pad", "pool_ave_overhang_pad"]


def test_outputs_are_unread_blobs_in_write_order(tmp_path):
    files = cm.write("split", tmp_path)
    model = convert(files.prototxt, files.caffemodel)
    assert [o.name for o in model.graph.output] == ["b", "a_relu"]
    out = run_onnx(model, feeds := random_feeds(files))
    np.testing.assert_array_equal(out["b"], feeds["data"])
    np.testing.assert_array_equal(out["a_relu"], np.maximum(feeds["data"], 0))


def test_in_place_dropout_output_keeps_blob_name(tmp_path):
    files = cm.write("dropout", tmp_path)
    g = convert(files.prototxt, files.caffemodel).graph
    assert [o.name for o in g.output] == ["conv"]
    assert [(n.op_type, list(n.output)) for n in g.node] == [("Conv", ["conv_conv"]), ("Identity", ["conv"])]


def test_input_shapes_override(tmp_path):
    files = cm.write("conv_basic", tmp_path)
    model = convert(files.prototxt, files.caffemodel, {"data": [2, 3, 15, 13]})
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 4, 15, 13]
    x = np.random.default_rng(3).standard_normal((2, 3, 15, 13)).astype(np.float32)
    assert run_onnx(model, {"data": x})["out"].shape == (2, 4, 15, 13)


def test_train_phase_layers_are_left_out(tmp_path):
    w = cm.LAYER_NETS["relu"]()
    w.layer("Accuracy", "accuracy", ["out", "label"], "accuracy").include.add(phase=proto.Phase["TRAIN"].number)
    files = w.write(tmp_path)
    assert [n.op_type for n in convert(files.prototxt, files.caffemodel).graph.node] == ["Relu"]


def test_schema_field_numbers_match_caffe_proto():
    """The committed descriptor is the compiled caffe.proto (rerun build_descriptor otherwise)."""
    text = (Path(proto.__file__).parent / "caffe.proto").read_text()
    text = re.sub(r"//[^\n]*", "", text)
    declared = {}
    for msg, body in re.findall(r"message (\w+) \{(.*?)\n\}", text, re.S):
        fields = re.findall(r"(?:optional|repeated|required) [\w.]+ (\w+) = (\d+)", body)
        declared[msg] = {name: int(num) for name, num in fields}
    compiled = {m.name: {f.name: f.number for f in m.fields} for m in proto.FILE.message_types_by_name.values()}
    assert declared == compiled
    # spot checks against BVLC's numbers
    assert compiled["NetParameter"]["layer"] == 100 and compiled["NetParameter"]["layers"] == 2
    assert compiled["LayerParameter"]["convolution_param"] == 106
    assert compiled["LayerParameter"]["batch_norm_param"] == 139
    assert compiled["V1LayerParameter"]["blobs"] == 6 and compiled["BlobProto"]["shape"] == 7


# ---- errors -------------------------------------------------------------------------------------------

def model_error(excinfo) -> str:
    problems = excinfo.value.problems
    assert len(problems) == 1 and "\n" not in problems[0].message
    return problems[0].message


def test_missing_file(tmp_path):
    files = cm.write("relu", tmp_path)
    gone = tmp_path / "nope.caffemodel"
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, gone)
    assert model_error(exc) == f"Can not find file specified: {gone},please check the configuration"
    assert exc.value.problems[0].path == ("model_parameters", "caffe_model")
    with pytest.raises(ModelError) as exc:
        convert(tmp_path / "nope.prototxt", files.caffemodel)
    assert exc.value.problems[0].path == ("model_parameters", "prototxt")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_caffemodel(tmp_path, damage):
    files = cm.write("conv_basic", tmp_path)
    data = files.caffemodel.read_bytes()
    files.caffemodel.write_bytes(b"\xff\xfe not a protobuf" if damage == "garbage" else data[: len(data) - 7])
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    msg = model_error(exc)
    assert msg.startswith(f"Caffe model file invalid: {files.caffemodel}: ")
    assert "parsing" in msg.lower() or "truncated" in msg.lower()


def test_prototxt_syntax_error_names_line_and_column(tmp_path):
    files = cm.write("relu", tmp_path)
    lines = files.prototxt.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if "type: \"ReLU\"" in line)
    lines[row] = '  type: "ReLU" oops'
    files.prototxt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    msg = model_error(exc)
    # 1-based, where "oops" starts
    assert msg == (f'Caffe prototxt file invalid: {files.prototxt}:{row + 1}:16: Message type "caffe.LayerParameter" '
                   f'has no field named "oops".')


def test_unknown_field_in_supported_layer_is_a_syntax_error(tmp_path):
    files = cm.write("relu", tmp_path)
    text = files.prototxt.read_text().replace('type: "ReLU"', 'type: "ReLU"\n  relu_param { slope: 2 }')
    files.prototxt.write_text(text)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert 'has no field named "slope"' in model_error(exc)


def test_unsupported_layer_uses_hb_mapper_wording(tmp_path):
    w = cm.LAYER_NETS["relu"]()
    w.layer("AbsVal", "abs1", "out", "abs")
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).startswith("Not support layer name=abs1 type=AbsVal")


def test_unsupported_layer_with_parameters_outside_the_schema(tmp_path):
    """An LRN layer's lrn_param is not in our schema: report the layer, not the field."""
    files = cm.write("relu", tmp_path)
    files.prototxt.write_text(files.prototxt.read_text() + 'layer {\n  name: "norm1"\n  type: "LRN"\n  bottom: "out"\n'
                              '  top: "norm1"\n  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }\n}\n')
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).startswith("Not support layer name=norm1 type=LRN")


def test_unsupported_legacy_layer_gets_its_caffe_type_name(tmp_path):
    w = cm.legacy_v1()
    w.layer("LRN", "norm1", "prob", "norm1")
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).startswith("Not support layer name=norm1 type=LRN")


def test_blob_shape_mismatch_names_layer_expected_and_found(tmp_path):
    files = cm.write("conv_basic", tmp_path)
    net = proto.NetParameter.FromString(files.caffemodel.read_bytes())
    conv = next(lay for lay in net.layer if lay.name == "conv")
    conv.blobs[0].shape.dim[:] = [4, 3, 1, 9]  # same count, wrong shape
    files.caffemodel.write_bytes(net.SerializeToString())
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc) == (f"Caffe model file {files.caffemodel}: layer 'conv' blob 0 (weights) has shape "
                                f"[4, 3, 1, 9], expected [4, 3, 3, 3]")


def test_blob_count_mismatch(tmp_path):
    files = cm.write("conv_basic", tmp_path)
    net = proto.NetParameter.FromString(files.caffemodel.read_bytes())
    del next(lay for lay in net.layer if lay.name == "conv").blobs[1]
    files.caffemodel.write_bytes(net.SerializeToString())
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert "layer 'conv' (type Convolution) has 1 blobs, expected 2" in model_error(exc)


def test_missing_input_shape_uses_hb_mapper_wording(tmp_path):
    w = NetWriter("noshape")
    w.net.input.append("data")
    w.layer("ReLU", "relu", "data", "out")
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc) == ("The shape of model input:data is [] which has dimensions of 0. "
                                "Please specify input-shape parameter.")
    model = convert(files.prototxt, files.caffemodel, {"data": [1, 2, 3, 3]})
    assert [i.name for i in model.graph.input] == ["data"]


def test_input_shape_for_unknown_input(tmp_path):
    files = cm.write("relu", tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel, {"image": [1, 3, 6, 6]})
    assert "input_shape given for 'image'" in model_error(exc)
    assert exc.value.problems[0].path == ("input_parameters", "input_shape")


def test_bottom_without_producer(tmp_path):
    w = cm.LAYER_NETS["relu"]()
    w.layer("Sigmoid", "sig", "nothing", "sig")
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert "layer 'sig' (type Sigmoid) reads blob 'nothing', which no earlier layer or input produces" in \
        model_error(exc)


def test_layer_parameter_error_names_layer(tmp_path):
    w = NetWriter("badslice")
    w.input("data", [1, 4, 3, 3])
    w.layer("Slice", "slice", "data", ["a", "b"], slice_param=dict(slice_point=[5]))
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc) == (f"Caffe layer 'slice' (type Slice) in {files.prototxt}: slice_point [5] must "
                                f"increase within (0, 4)")


def test_prototxt_round_trips_through_text_format(tmp_path):
    """The generated prototxt is plain Caffe text (no blobs) and parses back to the same net."""
    files = cm.write("resnet_style", tmp_path)
    text = files.prototxt.read_text()
    assert "blobs" not in text
    again = text_format.Parse(text, proto.NetParameter())
    full = proto.NetParameter.FromString(files.caffemodel.read_bytes())
    for layer in full.layer:
        del layer.blobs[:]
    assert again == full


def test_train_only_layer_with_fields_outside_the_schema_is_skipped(tmp_path):
    """A train_val prototxt: the TRAIN Data layer's data_param / transform_param are not in our
    schema, and that layer is not part of the TEST net anyway."""
    files = cm.write("relu", tmp_path)
    data_layer = ('layer {\n  name: "train_data"  # { a brace in a comment }\n  type: "Data"\n  top: "data"\n'
                  '  include { phase: TRAIN }\n  transform_param { mirror: true crop_size: 227 }\n'
                  '  data_param { source: "examples/{train}_lmdb" batch_size: 64 backend: LMDB }\n}\n')
    files.prototxt.write_text(data_layer + files.prototxt.read_text())
    model = convert(files.prototxt, files.caffemodel)
    assert [n.op_type for n in model.graph.node] == ["Relu"]


def test_unknown_field_in_supported_layer_wins_over_unsupported_layer_elsewhere(tmp_path):
    files = cm.write("relu", tmp_path)
    text = files.prototxt.read_text().replace('type: "ReLU"', 'type: "ReLU"\n  relu_param { slope: 2 }')
    files.prototxt.write_text(text + 'layer {\n  name: "norm1"\n  type: "LRN"\n  bottom: "out"\n  top: "norm1"\n'
                              '  lrn_param { local_size: 5 }\n}\n')
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert 'has no field named "slope"' in model_error(exc)


def _two_input_net(tmp_path, type_: str, a, b, **params) -> CaffeFiles:
    w = NetWriter("two")
    w.inputs_layer({"a": a, "b": b})
    w.layer(type_, "join", ["a", "b"], "out", **params)
    return w.write(tmp_path)


def test_eltwise_does_not_broadcast(tmp_path):
    files = _two_input_net(tmp_path, "Eltwise", [1, 3, 4, 4], [1, 3, 1, 1])
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).endswith("bottoms must have one shape (Caffe does not broadcast), got "
                                     "[[1, 3, 4, 4], [1, 3, 1, 1]]")


def test_concat_shapes_must_agree_off_axis(tmp_path):
    files = _two_input_net(tmp_path, "Concat", [1, 3, 4, 4], [1, 2, 5, 4])
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).endswith("bottoms may differ only in axis 1, got [[1, 3, 4, 4], [1, 2, 5, 4]]")


def test_shape_inference_failure_names_layer(tmp_path):
    files = _two_input_net(tmp_path, "Concat", [1, 3, 4, 4], [1, 3])
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).startswith(f"Caffe layer 'join' (type Concat) in {files.prototxt}: its inputs do not "
                                       f"fit (ONNX shape inference: ")


def test_kernel_larger_than_input(tmp_path):
    w = NetWriter("bigkernel")
    w.input("data", [1, 3, 4, 4])
    w.conv("conv", "data", "out", 3, 2, k=7)
    files = w.write(tmp_path)
    with pytest.raises(ModelError) as exc:
        convert(files.prototxt, files.caffemodel)
    assert model_error(exc).endswith("gives an empty or unknown output shape [1, 2, -2, -2] for inputs [[1, 3, 4, 4]]")
