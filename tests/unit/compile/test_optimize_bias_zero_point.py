"""O2 `bias_as_zero_point`: a 1×1 int16-output conv's ConvInteger → Add(int32 bias) → DequantizeLinear becomes
ConvInteger → DequantizeLinear(zero point −bias), bit-exact to O0 — and is refused where it would not be."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.compile import optimize
from engine.compile.optimize import bias_as_zero_point, optimize_program
from engine.runtime.session import open_session

CHANNELS_IN, CHANNELS_OUT = 16, 24


def int16_output_conv(bias_scale: int = 4000, dq_zero_point: np.ndarray | None = None) -> onnx.ModelProto:
    """uint8 codes → ConvInteger (weights as uint8 + 128, zero point 128; input zero point 3) → Add int32 bias
    → DequantizeLinear(acc, M_c, axis 1) → com.microsoft QuantizeLinear(1, 0) int16: the lowering's 1×1
    conv with an int16 output."""
    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (CHANNELS_OUT, CHANNELS_IN, 1, 1))
    inits = {"w": (w + 128).astype(np.uint8), "xz": np.uint8(3), "wz": np.uint8(128),
             "b": rng.integers(-bias_scale, bias_scale, (1, CHANNELS_OUT, 1, 1)).astype(np.int32),
             "m": rng.uniform(0.02, 0.3, CHANNELS_OUT).astype(np.float32),
             "mz": np.zeros(CHANNELS_OUT, np.int32) if dq_zero_point is None else dq_zero_point,
             "one": np.float32(1.0), "z16": np.int16(0)}
    nodes = [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc0"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Add", ["acc0", "b"], ["acc"], name="conv_Add"),
             helper.make_node("DequantizeLinear", ["acc", "m", "mz"], ["v"], name="conv_DequantizeLinear", axis=1),
             helper.make_node("QuantizeLinear", ["v", "one", "z16"], ["y"], name="conv_QuantizeLinear",
                              domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, CHANNELS_IN, 6, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.INT16, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _outputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[bytes]:
    session = open_session(model.SerializeToString())
    return [session.run(None, {"x": x})[0].tobytes() for x in inputs]


def _codes(seeds: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(s).integers(0, 256, (1, CHANNELS_IN, 6, 10)).astype(np.uint8) for s in range(seeds)]


def test_bias_moves_into_the_zero_point_and_every_output_bit_stays():
    program = int16_output_conv()
    result = optimize_program(program, "O2")
    assert result.rewrites["bias_as_zero_point"] == 1 and not result.fallback
    ops = [n.op_type for n in result.program.graph.node]
    assert "Add" not in ops and ops.count("DequantizeLinear") == 1
    dq = next(n for n in result.program.graph.node if n.op_type == "DequantizeLinear")
    consts = {t.name: numpy_helper.to_array(t) for t in result.program.graph.initializer}
    bias = numpy_helper.to_array(next(t for t in program.graph.initializer if t.name == "b")).reshape(-1)
    assert np.array_equal(consts[dq.input[2]], -bias)
    codes = _codes()
    assert _outputs(result.program, codes) == _outputs(program, codes)


def test_saturating_accumulators_stay_exact():
    """Biases large enough that (acc + b) · M leaves the int16 range for many outputs: the Q saturates the same."""
    program = int16_output_conv(bias_scale=400_000)
    result = optimize_program(program, "O2")
    assert result.rewrites["bias_as_zero_point"] == 1
    codes = _codes()
    outs = [np.frombuffer(b, np.int16) for b in _outputs(program, codes)]
    assert any(np.any(np.abs(o.astype(np.int32)) == 32767) or np.any(o == -32768) for o in outs)
    assert _outputs(result.program, codes) == _outputs(program, codes)


def test_a_dequantize_with_its_own_zero_point_is_left_alone():
    program = int16_output_conv(dq_zero_point=np.full(CHANNELS_OUT, 7, np.int32))
    model = onnx.ModelProto()
    model.CopyFrom(program)
    assert bias_as_zero_point(model) == 0
    assert [n.op_type for n in model.graph.node].count("Add") == 1


def test_a_failing_check_keeps_the_add(monkeypatch):
    """The rewrite is only as good as its check: a check that sees one differing bit keeps the original nodes."""
    monkeypatch.setattr(optimize, "_same_bits", lambda *a, **k: False)
    model = onnx.ModelProto()
    model.CopyFrom(int16_output_conv())
    assert bias_as_zero_point(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ConvInteger", "Add", "DequantizeLinear", "QuantizeLinear"]
