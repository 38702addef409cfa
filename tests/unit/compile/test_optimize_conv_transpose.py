"""O2 `conv_transpose_as_matmul`: ConvTransposes whose kernel equals their stride (PP-OCRv4 det's DB head) run as
MatMuls in space-to-depth layout with one DepthToSpace at the end — bit-exact to O0 at any input size, and
left alone where the kernel overlaps or the check finds a differing bit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.compile import optimize
from engine.compile.optimize import conv_transpose_as_matmul, optimize_program
from engine.runtime.session import open_session


def db_head(second: bool = True, kernel: int = 2, channels: int = 8, middle: int = 24) -> onnx.ModelProto:
    """uint8 codes → DequantizeLinear → ConvTranspose k×k/2 (+ bias) → Relu → Q → DQ [→ ConvTranspose 2×2/2 to one
    channel → Q → DQ → Sigmoid] → Q → DQ: the emulated float head of the `.bc` (weights and biases as the
    constants O2's folding leaves)."""
    rng = np.random.default_rng(3)
    inits = {"s": np.float32(0.02), "z": np.uint8(128), "w1": rng.normal(0, 0.3, (channels, middle, kernel, kernel)).astype(np.float32),
             "b1": rng.normal(0, 0.5, middle).astype(np.float32), "s1": np.float32(0.013), "z1": np.uint8(0),
             "w2": rng.normal(0, 0.3, (middle, 1, 2, 2)).astype(np.float32), "b2": rng.normal(0, 0.5, 1).astype(np.float32),
             "s2": np.float32(0.05), "s3": np.float32(1 / 255), "z3": np.uint8(0)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], name="dq"),
             helper.make_node("ConvTranspose", ["xf", "w1", "b1"], ["t1"], name="up1", kernel_shape=[kernel, kernel],
                              strides=[2, 2]),
             helper.make_node("Relu", ["t1"], ["r1"], name="relu"),
             helper.make_node("QuantizeLinear", ["r1", "s1", "z1"], ["q1"], name="q1"),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["f1"], name="dq1")]
    last = "f1"
    if second:
        nodes += [helper.make_node("ConvTranspose", [last, "w2", "b2"], ["t2"], name="up2", kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("QuantizeLinear", ["t2", "s2", "z"], ["q2"], name="q2"),
                  helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["f2"], name="dq2"),
                  helper.make_node("Sigmoid", ["f2"], ["g"], name="sigmoid"),
                  helper.make_node("QuantizeLinear", ["g", "s3", "z3"], ["q3"], name="q3"),
                  helper.make_node("DequantizeLinear", ["q3", "s3", "z3"], ["y"], name="dq3")]
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _outputs(model: onnx.ModelProto, seeds: int = 4) -> list[bytes]:
    session = open_session(model.SerializeToString())
    return [session.run(None, {"x": np.random.default_rng(s).integers(0, 256, (1, 8, 5, 7)).astype(np.uint8)})[0].tobytes()
            for s in range(seeds)]


def test_the_head_runs_as_matmuls_and_every_output_bit_stays():
    program = db_head()
    result = optimize_program(program, "O2")
    assert result.rewrites["conv_transpose_as_matmul"] == 1 and not result.fallback
    ops = [n.op_type for n in result.program.graph.node]
    assert "ConvTranspose" not in ops and ops.count("MatMul") == 2 and ops.count("DepthToSpace") == 1
    # the 5×7 input is not the check's 16×24: H and W are read at run time
    assert _outputs(result.program) == _outputs(program)
    shape = open_session(result.program.SerializeToString()).run(None, {"x": np.zeros((1, 8, 5, 7), np.uint8)})[0].shape
    assert shape == (1, 1, 20, 28)


def test_a_lone_conv_transpose_stays():
    """One ConvTranspose → Q: the DepthToSpace would move every value it writes, slower than its col2im."""
    program = db_head(second=False)
    result = optimize_program(program, "O2")
    assert result.rewrites["conv_transpose_as_matmul"] == 0
    assert [n.op_type for n in result.program.graph.node].count("ConvTranspose") == 1


def test_the_depth_to_space_reads_the_last_codes():
    """The pixels are put in place once, on the 8-bit codes after the last ConvTranspose, not on floats."""
    result = optimize_program(db_head(), "O2")
    g = result.program.graph
    d2s = next(n for n in g.node if n.op_type == "DepthToSpace")
    grid = next(n for n in g.node if d2s.input[0] in n.output)
    producer = {o: n for n in g.node for o in n.output}
    codes = producer[grid.input[0]]
    while codes.op_type in ("Reshape", "Transpose"):
        codes = producer[codes.input[0]]
    assert codes.op_type in ("QuantizeLinear", "QLinearSigmoid")


def test_an_overlapping_kernel_is_left_alone():
    model = db_head(second=False, kernel=3)
    assert conv_transpose_as_matmul(model) == 0
    assert [n.op_type for n in model.graph.node].count("ConvTranspose") == 1


def test_a_failing_check_keeps_the_conv_transposes(monkeypatch):
    monkeypatch.setattr(optimize, "_same_bits", lambda *a, **k: False)
    model = db_head()
    assert conv_transpose_as_matmul(model) == 0
    assert [n.op_type for n in model.graph.node].count("ConvTranspose") == 2
