"""O2 `round_instead_of_requantize`: QuantizeLinear(v, 1, z) → DequantizeLinear(·, 1, z) in front of a float
conv becomes Round(v) where v, computed from one code tensor, can never saturate; a chain that can is
left alone. Every case gives the program's outputs bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import optimize_program, round_instead_of_requantize
from engine.runtime.session import open_session

SHAPE = [1, 1, 16, 16]


def image_program(scale: float = 0.49804068, addend: float | None = None) -> onnx.ModelProto:
    """uint8 pixels → DequantizeLinear(·, scale) [→ Add addend] → QuantizeLinear(1, 128) →
    DequantizeLinear(1, 128) → float Conv 3×3 → Relu: the digits model's input conversion meeting its
    first conv as O2 writes them."""
    rng = np.random.default_rng(3)
    inits = {"s": np.float32(scale), "z0": np.uint8(0), "one": np.float32(1.0), "z": np.uint8(128),
             "w": rng.integers(-100, 100, (4, 1, 3, 3)).astype(np.float32),
             "b": rng.integers(-500, 500, 4).astype(np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z0"], ["v"], name="scaled")]
    v = "v"
    if addend is not None:
        inits["a"] = np.float32(addend)
        nodes.append(helper.make_node("Add", ["v", "a"], ["va"], name="addend"))
        v = "va"
    nodes += [helper.make_node("QuantizeLinear", [v, "one", "z"], ["q"], name="HZ_PREPROCESS_FOR_x"),
              helper.make_node("DequantizeLinear", ["q", "one", "z"], ["c"], name="conv_centered"),
              helper.make_node("Conv", ["c", "w", "b"], ["acc"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["acc"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(val), k) for k, val in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def outputs(model: onnx.ModelProto) -> list[bytes]:
    session = open_session(model.SerializeToString())
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, SHAPE).astype(np.uint8) for _ in range(3)]
    images.append(np.arange(256, dtype=np.uint8).reshape(SHAPE))  # every pixel value once
    return [session.run(None, {"x": x})[0].tobytes() for x in images]


def test_a_pair_that_cannot_saturate_becomes_round():
    model = image_program()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert round_instead_of_requantize(rewritten) == 1
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["DequantizeLinear", "Round", "Conv", "Relu"]
    assert next(n for n in rewritten.graph.node if n.op_type == "Round").name == "HZ_PREPROCESS_FOR_x"
    assert outputs(rewritten) == outputs(model)


@pytest.mark.parametrize("scale,addend", [(1.0367943, -132.19534), (0.9, None)])
def test_a_pair_that_can_saturate_stays(scale, addend):
    """PP-OCR's BGR conversion (x·1.037 − 132.2 reaches ±132) and 0.9·x (up to 229.5 > 127): Q clips."""
    model = image_program(scale, addend)
    assert round_instead_of_requantize(model) == 0
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 1


def test_o2_program_rounds_and_stays_bit_identical():
    model = image_program(addend=-0.25)  # through an Add too: v ∈ [−0.25, 126.75]
    result = optimize_program(model, "O2")
    assert result.fallback == "" and result.checked
    assert result.rewrites["round_instead_of_requantize"] == 1
    assert "QuantizeLinear" not in [n.op_type for n in result.program.graph.node]
    assert outputs(result.program) == outputs(model)
