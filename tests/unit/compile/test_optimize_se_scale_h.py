"""O2's `full_size_se_scale`: a squeeze-excitation QLinearMul multiplies by its [1, C, 1, 1] scale
expanded (in NHWC) to the full map — bit-exact to the broadcast form on integer SE blocks as the
lowering writes them (PP-LCNetV3's x · hardsigmoid(conv(relu(conv(avgpool(x)))))), refused where the
scale is not a pooling of the tensor it multiplies."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import bit_identical, full_size_se_scale, optimize_program

C = 24


def se_program(pool_of: str = "c", residual: bool = True) -> onnx.ModelProto:
    """uint8 codes x [1, 24, 10, 14] → 1×1 QLinearConv → SE block (QLinearGlobalAveragePool of `pool_of`,
    1×1 conv 24→6, Clip, 1×1 conv 6→24, DequantizeLinear → HardSigmoid → QuantizeLinear) → QLinearMul
    (conv output, scale) [→ QLinearAdd with the conv output, as PP-OCRv4 det's neck] → 1×1 QLinearConv."""
    rng = np.random.default_rng(3)
    inits = {"s": np.float32(0.03), "z": np.uint8(128), "zero": np.uint8(0), "ys": np.float32(0.05),
             "w0": rng.integers(-127, 128, (C, C, 1, 1)).astype(np.int8), "w0s": rng.uniform(0.002, 0.01, C).astype(np.float32),
             "w0z": np.zeros(C, np.int8), "ps": np.float32(0.02),
             "w1": rng.integers(-127, 128, (6, C, 1, 1)).astype(np.int8), "w1s": rng.uniform(0.005, 0.02, 6).astype(np.float32),
             "w1z": np.zeros(6, np.int8), "b1": rng.integers(-900, 900, 6).astype(np.int32), "rs": np.float32(0.04),
             "w2": rng.integers(-127, 128, (C, 6, 1, 1)).astype(np.int8), "w2s": rng.uniform(0.005, 0.02, C).astype(np.float32),
             "w2z": np.zeros(C, np.int8), "hs_in": np.float32(0.06), "hs": np.float32(1 / 255),
             "ms": np.float32(0.045), "as": np.float32(0.07),
             "w3": rng.integers(-127, 128, (8, C, 1, 1)).astype(np.int8), "w3s": rng.uniform(0.002, 0.01, 8).astype(np.float32),
             "w3z": np.zeros(8, np.int8), "os": np.float32(0.1)}
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w0", "w0s", "w0z", "ys", "z"], ["c"], name="conv"),
             helper.make_node("QLinearGlobalAveragePool", [pool_of, "ys" if pool_of == "c" else "s", "z", "ps", "z"],
                              ["p"], name="pool", domain="com.microsoft", channels_last=0),
             helper.make_node("QLinearConv", ["p", "ps", "z", "w1", "w1s", "w1z", "rs", "z", "b1"], ["r0"], name="fc1"),
             helper.make_node("Clip", ["r0", "z"], ["r"], name="relu"),
             helper.make_node("QLinearConv", ["r", "rs", "z", "w2", "w2s", "w2z", "hs_in", "z"], ["h"], name="fc2"),
             helper.make_node("DequantizeLinear", ["h", "hs_in", "z"], ["hf"], name="h_dq"),
             helper.make_node("HardSigmoid", ["hf"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
             helper.make_node("QuantizeLinear", ["g", "hs", "zero"], ["gq"], name="gate_q"),
             helper.make_node("QLinearMul", ["c", "ys", "z", "gq", "hs", "zero", "ms", "z"], ["m"], name="se_mul",
                              domain="com.microsoft")]
    last = "m"
    if residual:
        nodes.append(helper.make_node("QLinearAdd", ["c", "ys", "z", "m", "ms", "z", "as", "z"], ["a"], name="se_add",
                                      domain="com.microsoft"))
        last = "a"
    nodes.append(helper.make_node("QLinearConv", [last, "as" if residual else "ms", "z", "w3", "w3s", "w3z", "os", "z"],
                                  ["y"], name="head"))
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, C, 10, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _feeds(seeds: int = 6) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(s).integers(0, 256, (1, C, 10, 14)).astype(np.uint8)} for s in range(seeds)]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_se_scale_expanded_in_nhwc_and_bit_exact():
    for residual in (True, False):
        original = se_program(residual=residual)
        rewritten = _copy(original)
        assert full_size_se_scale(rewritten) == 1
        ops = [n.op_type for n in rewritten.graph.node]
        assert ops.count("Expand") == 1 and ops.count("Transpose") == 2
        mul = next(n for n in rewritten.graph.node if n.op_type == "QLinearMul")
        expand = next(n for n in rewritten.graph.node if n.op_type == "Expand")
        back = next(n for n in rewritten.graph.node if n.output[0] == mul.input[3])
        assert back.op_type == "Transpose" and list(back.attribute[0].ints) == [0, 3, 1, 2]
        assert back.input[0] == expand.output[0]
        same, why = bit_identical(original, rewritten, feeds=_feeds())
        assert same, why


def test_kept_only_where_its_check_holds(monkeypatch):
    """A rewrite whose per-node check finds a differing bit is not applied (the check is what decides)."""
    from engine.compile import optimize

    original = se_program()
    monkeypatch.setattr(optimize, "_same_bits", lambda *a, **k: False)
    rewritten = _copy(original)
    assert full_size_se_scale(rewritten) == 0
    assert rewritten.SerializeToString() == original.SerializeToString()


def test_broadcast_along_the_wrong_axis_is_caught():
    """The whole-program comparison the rewrite relies on sees a scale broadcast along W instead of C."""
    original = se_program()
    rewritten = _copy(original)
    full_size_se_scale(rewritten)
    mul = next(n for n in rewritten.graph.node if n.op_type == "QLinearMul")
    back = next(n for n in rewritten.graph.node if n.output[0] == mul.input[3])
    back.attribute[0].ints[:] = [0, 2, 3, 1]  # [1, H, W, C] read as [1, W, C, H]: shapes no longer broadcast
    try:
        same, _ = bit_identical(original, rewritten, feeds=_feeds(2))
    except Exception:  # onnxruntime refuses the broadcast
        same = False
    assert not same


def test_scale_pooled_from_another_tensor_is_left_alone():
    original = se_program(pool_of="x")  # the pool reads the block's input, the multiply the conv output
    rewritten = _copy(original)
    assert full_size_se_scale(rewritten) == 0
    assert rewritten.SerializeToString() == original.SerializeToString()


def test_o2_counts_the_rewrite_and_stays_bit_exact():
    original = se_program(pool_of="c")
    result = optimize_program(original, "O2")
    assert not result.fallback and result.checked
    assert result.rewrites["full_size_se_scale"] == 1
    assert any(n.op_type == "Expand" for n in result.program.graph.node)
    same, why = bit_identical(original, result.program, feeds=_feeds())
    assert same, why
