"""Node removal: each allowed type at its border, numerics preserved, parameters recorded, refusals named."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.program import REMOVED_NODES, io_specs, json_metadata
from engine.compile.remove_nodes import remove_nodes
from engine.problems import ConfigError
from engine.runtime.session import open_session
from tests.unit.compile.compile_support import tail_program

S_IN, Z_IN, S_OUT, Z_OUT = 0.05, 128, 0.1, 128


def _init(name, value, dtype):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def border_model() -> onnx.ModelProto:
    """x (NHWC float) → Transpose → Quantize → QLinearConv → Dequantize → Reshape → Softmax → y."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="head_transpose", perm=[0, 3, 1, 2]),
        helper.make_node("QuantizeLinear", ["xt", "s_in", "z_in"], ["xq"], name="head_quantize"),
        helper.make_node("QLinearConv", ["xq", "s_in", "z_in", "w", "ws", "wz", "s_out", "z_out"], ["cq"],
                         name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["cq", "s_out", "z_out"], ["conv_y"], name="conv_dequantize"),
        helper.make_node("Reshape", ["conv_y", "flat"], ["r"], name="tail_reshape"),
        helper.make_node("Softmax", ["r"], ["y"], name="tail_softmax", axis=-1),
    ]
    inits = [_init("s_in", S_IN, np.float32), _init("z_in", Z_IN, np.uint8),
             _init("w", rng.integers(-100, 100, (4, 3, 3, 3)), np.int8), _init("ws", [0.01, 0.02, 0.015, 0.01],
                                                                                np.float32),
             _init("wz", np.zeros(4), np.int8), _init("s_out", S_OUT, np.float32), _init("z_out", Z_OUT, np.uint8),
             _init("flat", [1, 256], np.int64)]
    graph = helper.make_graph(nodes, "border", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (("hbcompile.tensor_map", {"conv_y": {"tensor": "cq", "scale": S_OUT, "zero_point": Z_OUT,
                                                            "dtype": "uint8"}}),
                       ("hbcompile.node_map", {"Conv_0": ["conv"]})):
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    return model


def cast_model() -> onnx.ModelProto:
    """x float16 → Cast → Quantize → QLinearConv → Dequantize → Cast float16 → y."""
    m = border_model()
    g = m.graph
    keep = [n for n in g.node if n.name in ("head_quantize", "conv", "conv_dequantize")]
    keep[0].input[0] = "x32"
    nodes = [helper.make_node("Cast", ["x"], ["x32"], name="head_cast", to=TensorProto.FLOAT), *keep,
             helper.make_node("Cast", ["conv_y"], ["y"], name="tail_cast", to=TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 8, 8])],
                              [t for t in g.initializer if t.name != "flat"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, feeds: dict, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in extra:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = open_session(probe.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture
def deleted_log():
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("hbcompile")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


X = np.random.default_rng(1).uniform(-5, 5, (1, 8, 8, 3)).astype(np.float32)


def test_head_transpose_then_quantize(deleted_log):
    model = border_model()
    before = run(model, {"x": X}, ("xq",))
    out, removed = remove_nodes(model, ["Transpose", "Quantize"], [])
    assert [r.name for r in removed] == ["head_transpose", "head_quantize"]
    assert [r.position for r in removed] == ["input", "input"] and {r.tensor for r in removed} == {"x"}
    assert removed[0].params["perm"] == [0, 3, 1, 2]
    q = removed[1].params
    assert q["scale"] == pytest.approx(S_IN) and q["zero_point"] == Z_IN and q["dtype"] == "uint8"
    (x,) = out.graph.input
    assert x.name == "x" and x.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in x.type.tensor_type.shape.dim] == [1, 3, 8, 8]
    after = run(out, {"x": before["xq"]})
    np.testing.assert_array_equal(after["y"], before["y"])  # the application's own Q(transpose(x)) feeds it
    assert "deleted nodes: head_transpose" in deleted_log and "deleted nodes: head_quantize" in deleted_log
    recorded = json_metadata(out, REMOVED_NODES)
    assert [r["name"] for r in recorded] == ["head_transpose", "head_quantize"]
    inputs, _ = io_specs(out)
    assert inputs[0]["quantization"]["zero_point"] == Z_IN


def test_tail_softmax_reshape_dequantize_in_order():
    model = border_model()
    before = run(model, {"x": X}, ("cq",))
    out, removed = remove_nodes(model, ["Softmax", "Reshape", "Dequantize"], [])
    assert [r.name for r in removed] == ["tail_softmax", "tail_reshape", "conv_dequantize"]
    assert all(r.position == "output" and r.tensor == "y" for r in removed)
    assert removed[0].params["axis"] == -1
    assert removed[1].params["output_shape"] == [1, 256] and removed[1].params["input_shape"] == [1, 4, 8, 8]
    (y,) = out.graph.output
    assert y.name == "y" and y.type.tensor_type.elem_type == TensorProto.UINT8
    codes = run(out, {"x": X})["y"]
    np.testing.assert_array_equal(codes, before["cq"])
    # the recorded parameters are enough to finish the job in the application
    dq = removed[2].params
    values = (codes.astype(np.float32) - dq["zero_point"]) * np.float32(dq["scale"])
    flat = values.reshape(removed[1].params["output_shape"])
    e = np.exp(flat - flat.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=-1, keepdims=True), before["y"], rtol=1e-5, atol=1e-7)
    _, outputs = io_specs(out)
    assert outputs[0]["quantization"] == {"scale": pytest.approx(S_OUT), "zero_point": Z_OUT, "dtype": "uint8"}


def test_a_type_is_removed_only_where_it_is_on_a_border(deleted_log):
    out, removed = remove_nodes(border_model(), ["Dequantize", "Quantize"], [])
    assert removed == []  # the Dequantize is behind Reshape/Softmax, the Quantize behind the Transpose
    assert len(out.graph.node) == 6
    assert any("no Dequantize node" in line for line in deleted_log)


def test_head_and_tail_casts():
    model = cast_model()
    x = np.random.default_rng(2).uniform(-3, 3, (1, 3, 8, 8)).astype(np.float16)
    before = run(model, {"x": x}, ("x32", "conv_y"))
    out, removed = remove_nodes(model, ["Cast"], [])
    assert {(r.name, r.position) for r in removed} == {("head_cast", "input"), ("tail_cast", "output")}
    params = {r.name: r.params for r in removed}
    assert params["head_cast"]["from"] == "float16" and params["head_cast"]["to"] == "float32"
    assert params["tail_cast"]["from"] == "float32" and params["tail_cast"]["to"] == "float16"
    after = run(out, {"x": before["x32"]})
    np.testing.assert_array_equal(after["y"], before["conv_y"])


def test_quantized_softmax_behind_a_dequantize():
    model = tail_program("Softmax")  # … Flatten → Quantize → QLinearSoftmax → Dequantize → y
    assert [n.op_type for n in model.graph.node][-2:] == ["QLinearSoftmax", "DequantizeLinear"]
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    softmax_in = next(n for n in model.graph.node if n.op_type == "QLinearSoftmax").input[0]
    before = run(model, feeds, (softmax_in,))
    out, removed = remove_nodes(model, ["Dequantize", "Softmax"], [])
    assert [r.op_type for r in removed] == ["DequantizeLinear", "QLinearSoftmax"]
    assert {"input_scale", "input_zero_point", "output_scale", "output_zero_point", "axis"} <= set(removed[1].params)
    np.testing.assert_array_equal(run(out, feeds)["y"], before[softmax_in])
    # the output now holds the softmax's *input* codes: the spec says how to read them (not the removed
    # Dequantize's softmax-output scale, which read them ~7x too small)
    (spec,) = io_specs(out)[1]
    q = removed[1].params
    assert spec["quantization"]["scale"] == q["input_scale"] != removed[0].params["scale"]
    assert spec["quantization"]["zero_point"] == q["input_zero_point"]
    assert spec["quantization"]["dtype"] == "uint8"


@pytest.mark.parametrize("name", ["conv", "Conv_0", "conv_y_HzCalibration", "conv_dequantize"])
def test_a_name_can_designate_the_tail_dequantize(name):
    model, _ = remove_nodes(border_model(), ["Softmax", "Reshape"], [])
    out, removed = remove_nodes(model, [], [name])
    assert [r.name for r in removed] == ["conv_dequantize"]
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert [r["name"] for r in json_metadata(out, REMOVED_NODES)] == ["tail_softmax", "tail_reshape",
                                                                      "conv_dequantize"]


@pytest.mark.parametrize("name,words", [
    ("conv", ["'conv'", "QLinearConv", "cannot be removed"]),
    ("tail_reshape", ["'tail_reshape'", "not on a border", "tail_softmax"]),
    ("head_quantize", ["'head_quantize'", "head_transpose"]),
    ("no_such_node", ["'no_such_node'", "not in the model"]),
])
def test_refusals_name_the_node_and_why(name, words):
    with pytest.raises(ConfigError) as info:
        remove_nodes(border_model(), [], [name])
    (problem,) = info.value.problems
    assert problem.path == ("model_parameters", "remove_node_name")
    for w in words:
        assert w in problem.message


def test_a_shared_model_input_is_not_removable():
    model = border_model()
    model.graph.node.append(helper.make_node("Transpose", ["x"], ["x_copy"], name="second_reader", perm=[0, 1, 2, 3]))
    model.graph.output.append(helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, [1, 8, 8, 3]))
    with pytest.raises(ConfigError, match="also read by node 'second_reader'"):
        remove_nodes(model, [], ["head_transpose"])


def test_unknown_type_uses_hb_wording():
    with pytest.raises(ConfigError, match=r"Unsupport removing \['Conv'\] now"):
        remove_nodes(border_model(), ["Conv"], [])
