"""O2's kernel-count rewrites: sibling QLinearConvs merged, the narrow conv's Relu moved into the
float Conv, the input scaling as DequantizeLinear → QuantizeLinear — each bit-exact to O0."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.compile.optimize import merge_sibling_convs, optimize_program
from engine.compile.program import NODE_MAP, json_metadata, set_metadata
from engine.runtime.session import open_session


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k)
                                                              for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def residual_program(same_weights: bool = True, other_kernel: bool = False) -> onnx.ModelProto:
    """A Conv+Add as the lowering writes it: the conv at a fine and at a wide output scale (same
    input, weights and bias), each added to the residual with QLinearAdd, both outputs kept."""
    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)
    w_other = w if same_weights else rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)
    inits = {"s": np.float32(0.0477), "z": np.uint8(128), "w": w, "w_other": w_other,
             "ws": rng.uniform(0.002, 0.006, 16).astype(np.float32), "wz": np.zeros(16, np.int8),
             "b": rng.integers(-3000, 3000, 16).astype(np.int32), "fine": np.float32(0.01293),
             "wide": np.float32(0.0898), "out": np.float32(0.0517)}
    kernel = {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2], "dilations": [2, 2]} if other_kernel \
        else {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "fine", "z", "b"], ["cf"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("QLinearConv", ["x", "s", "z", "w_other", "ws", "wz", "wide", "z", "b"], ["cw"],
                              name="conv_wide", **kernel),
             helper.make_node("QLinearAdd", ["cf", "fine", "z", "x", "s", "z", "out", "z"], ["yf"], name="add",
                              domain="com.microsoft"),
             helper.make_node("QLinearAdd", ["cw", "wide", "z", "x", "s", "z", "out", "z"], ["yw"], name="add_wide",
                              domain="com.microsoft")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 16, 12, 12])],
                   [helper.make_tensor_value_info(o, TensorProto.UINT8, None) for o in ("yf", "yw")], inits)
    set_metadata(model, NODE_MAP, {"Conv_3": ["conv_wide", "conv"], "Add_4": ["add_wide", "add"]})
    return model


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, shape, seeds: int = 6, dtype=np.uint8) -> None:
    sa, sb = open_session(a.SerializeToString()), open_session(b.SerializeToString())
    name = sa.get_inputs()[0].name
    for seed in range(seeds):
        x = np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)
        for p, q in zip(sa.run(None, {name: x}), sb.run(None, {name: x}), strict=True):
            assert p.dtype == q.dtype and p.tobytes() == q.tobytes()


@pytest.mark.parametrize("same_weights", [True, False])
def test_sibling_convs_become_one_conv_and_a_split_with_the_same_codes(same_weights):
    program = residual_program(same_weights)
    result = optimize_program(program, "O2")
    assert result.rewrites["merge_sibling_convs"] == 1 and result.checked and not result.fallback
    ops = Counter(n.op_type for n in result.program.graph.node)
    assert ops["QLinearConv"] == 1 and ops["Split"] == 1
    inits = {t.name: t for t in result.program.graph.initializer}
    conv = next(n for n in result.program.graph.node if n.op_type == "QLinearConv")
    assert list(inits[conv.input[3]].dims) == [32, 16, 3, 3]
    _same_outputs(program, result.program, (1, 16, 12, 12))
    node_map = json_metadata(result.program, NODE_MAP)
    assert node_map["Conv_3"] == [conv.name, f"{conv.name.removesuffix('_siblings')}_siblings_split"]
    assert node_map["Add_4"] == ["add_wide", "add"]


def test_convs_of_other_geometry_are_not_merged():
    result = optimize_program(residual_program(other_kernel=True), "O2")
    assert result.rewrites["merge_sibling_convs"] == 0
    assert Counter(n.op_type for n in result.program.graph.node)["QLinearConv"] == 2


def test_a_merge_that_changes_a_code_is_refused(monkeypatch):
    """Weight scales a hair off (every multiplier ×1.001) move some codes: the per-merge check keeps the convs."""
    import engine.compile.optimize as optimize

    real = optimize._multipliers
    monkeypatch.setattr(optimize, "_multipliers", lambda parts: real(parts) * np.float32(1.001))
    program = residual_program()
    model = onnx.ModelProto()
    model.CopyFrom(program)
    assert merge_sibling_convs(model) == 0
    assert [n.name for n in model.graph.node] == [n.name for n in program.graph.node]


def test_three_siblings_with_any_scales_merge_exactly():
    """64-channel convs with unrelated weight and output scales: the merged conv's scales are 1 and its
    weight scales the multipliers onnxruntime computes, fl(fl(s_x · s_w) / s_y), so every code stays."""
    rng = np.random.default_rng(5)
    inits = {"s": np.float32(0.0477), "z": np.uint8(128), "wz": np.zeros(64, np.int8)}
    nodes = []
    for k in range(3):
        inits.update({f"w{k}": rng.integers(-127, 128, (64, 8, 3, 3)).astype(np.int8),
                      f"ws{k}": rng.uniform(1e-3, 1e-2, 64).astype(np.float32),
                      f"ys{k}": np.float32(rng.uniform(0.01, 0.2)), f"b{k}": rng.integers(-900, 900, 64).astype(np.int32)})
        nodes.append(helper.make_node("QLinearConv", ["x", "s", "z", f"w{k}", f"ws{k}", "wz", f"ys{k}", "z", f"b{k}"],
                                      [f"y{k}"], name=f"conv{k}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    program = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 10, 10])],
                     [helper.make_tensor_value_info(f"y{k}", TensorProto.UINT8, None) for k in range(3)], inits)
    merged = onnx.ModelProto()
    merged.CopyFrom(program)
    assert merge_sibling_convs(merged) == 2
    conv = next(n for n in merged.graph.node if n.op_type == "QLinearConv")
    consts = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    assert consts[conv.input[1]] == 1 and consts[conv.input[6]] == 1
    want = np.concatenate([(inits["s"] * inits[f"ws{k}"]) / inits[f"ys{k}"] for k in range(3)])
    np.testing.assert_array_equal(consts[conv.input[4]], want)
    _same_outputs(program, merged, (1, 8, 10, 10))


def relu_program(high: int | None = None) -> onnx.ModelProto:
    """gray uint8 pixels → 1 → 8 3×3 QLinearConv → Clip at the output zero point (a Relu on codes;
    with `high` below 255 a Relu6-like clamp) → DequantizeLinear."""
    rng = np.random.default_rng(3)
    inits = {"s": np.float32(1 / 255), "z": np.uint8(128), "w": rng.integers(-127, 128, (8, 1, 3, 3)).astype(np.int8),
             "ws": rng.uniform(1e-3, 4e-3, 8).astype(np.float32), "wz": np.zeros(8, np.int8),
             "b": rng.integers(-20000, 20000, 8).astype(np.int32), "ys": np.float32(0.004), "lo": np.uint8(128)}
    clip_inputs = ["c", "lo"]
    if high is not None:
        inits["hi"] = np.uint8(high)
        clip_inputs.append("hi")
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "ys", "z", "b"], ["c"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", clip_inputs, ["r"], name="relu"),
             helper.make_node("DequantizeLinear", ["r", "ys", "z"], ["y"], name="out")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 20, 20])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 20, 20])], inits)


def test_a_relu_after_the_narrow_conv_runs_inside_the_float_conv():
    program = relu_program()
    result = optimize_program(program, "O2")
    assert result.rewrites["narrow_conv_in_float"] == 1 and result.checked and not result.fallback
    ops = [n.op_type for n in result.program.graph.node]
    assert "Clip" not in ops and ops.index("Conv") + 1 == ops.index("Relu")
    assert next(n for n in result.program.graph.node if n.op_type == "Relu").name == "relu"
    _same_outputs(program, result.program, (1, 1, 20, 20))


def test_a_clamp_below_the_top_code_stays_a_clip():
    program = relu_program(high=200)
    result = optimize_program(program, "O2")
    assert result.rewrites["narrow_conv_in_float"] == 1
    assert "Relu" not in [n.op_type for n in result.program.graph.node]
    assert "Clip" in [n.op_type for n in result.program.graph.node]
    _same_outputs(program, result.program, (1, 1, 20, 20))


def scaling_program(bias: int) -> onnx.ModelProto:
    """gray uint8 pixels → the input conversion as a diagonal 1×1 QLinearConv (x · 1/σ − μ/σ) → output codes."""
    inits = {"one": np.float32(1.0), "zero": np.uint8(0), "w": np.full((1, 1, 1, 1), 255, np.uint8),
             "ws": np.array([1 / 58.4 / 127], np.float32), "wz": np.array([128], np.uint8),
             "ns": np.float32(2.2 / 127), "z": np.uint8(128), "b": np.array([bias], np.int32)}
    nodes = [helper.make_node("QLinearConv", ["x", "one", "zero", "w", "ws", "wz", "ns", "z", "b"], ["n"],
                              name="HZ_PREPROCESS_FOR_x", kernel_shape=[1, 1])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 16, 16])],
                  [helper.make_tensor_value_info("n", TensorProto.UINT8, [1, 1, 16, 16])], inits)


@pytest.mark.parametrize("bias", [0, -15000])
def test_the_input_scaling_is_one_dequantization_on_every_code(bias):
    program = scaling_program(bias)
    result = optimize_program(program, "O2")
    assert result.rewrites["per_channel_scaling"] == 1
    ops = [n.op_type for n in result.program.graph.node]
    assert ops == ["DequantizeLinear", "QuantizeLinear"] if bias == 0 else ["DequantizeLinear", "Add", "QuantizeLinear"]
    every_code = np.random.default_rng(0).permutation(256).astype(np.uint8).reshape(1, 1, 16, 16)
    a = open_session(program.SerializeToString()).run(None, {"x": every_code})[0]
    b = open_session(result.program.SerializeToString()).run(None, {"x": every_code})[0]
    assert len(np.unique(a)) > 100 and a.tobytes() == b.tobytes()


def int16_table_program(reader: str = "DequantizeLinear") -> onnx.ModelProto:
    """float → int16 codes → a 65 536-entry table as the lowering writes it for a 4-D tensor (Transpose
    to NHWC, Cast, Add 32 768, flat GatherElements, Reshape to the Transpose's Shape, Transpose back)
    → `reader` (DequantizeLinear: a float kernel reads it; Identity: something else)."""
    table = np.random.default_rng(9).integers(-32768, 32768, 65536).astype(np.int16)
    inits = {"s": np.float32(1.0), "z": np.int16(0), "offset": np.int32(32768), "flat": np.array([-1], np.int64),
             "table": table}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("Transpose", ["q"], ["q_nhwc"], name="t_Transpose", perm=[0, 2, 3, 1]),
             helper.make_node("Shape", ["q_nhwc"], ["nhwc_shape"], name="t_Shape"),
             helper.make_node("Cast", ["q_nhwc"], ["i"], name="t_Cast", to=TensorProto.INT32),
             helper.make_node("Add", ["i", "offset"], ["j"], name="t_Add"),
             helper.make_node("Reshape", ["j", "flat"], ["j_flat"], name="t_Reshape"),
             helper.make_node("GatherElements", ["table", "j_flat"], ["t_flat"], name="t", axis=0),
             helper.make_node("Reshape", ["t_flat", "nhwc_shape"], ["t_nhwc"], name="t_Reshape_1"),
             helper.make_node("Transpose", ["t_nhwc"], ["t_codes"], name="t_Transpose_1", perm=[0, 3, 1, 2])]
    if reader == "DequantizeLinear":
        nodes.append(helper.make_node("DequantizeLinear", ["t_codes", "s", "z"], ["y"], name="dq"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 128, 128])
    else:
        nodes.append(helper.make_node("Identity", ["t_codes"], ["y"], name="id"))
        out = helper.make_tensor_value_info("y", TensorProto.INT16, [1, 4, 128, 128])
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 128, 128])], [out], inits,
                  opset=21)  # int16 QuantizeLinear


def test_an_int16_table_between_float_kernels_loses_its_offset_and_transposes():
    program = int16_table_program()
    result = optimize_program(program, "O2")
    assert result.rewrites["index_tables_directly"] == 1 and result.rewrites["untranspose_float_side_tables"] == 1
    assert result.checked and not result.fallback
    ops = [n.op_type for n in result.program.graph.node]
    assert "Transpose" not in ops and "Add" not in ops and "GatherElements" in ops
    codes = np.random.default_rng(1).permutation(np.arange(-32768, 32768)).astype(np.float32).reshape(1, 4, 128, 128)
    a = open_session(program.SerializeToString()).run(None, {"x": codes})[0]
    b = open_session(result.program.SerializeToString()).run(None, {"x": codes})[0]
    assert a.tobytes() == b.tobytes()


def test_a_table_read_by_other_ops_keeps_its_layout():
    result = optimize_program(int16_table_program(reader="Identity"), "O2")
    assert result.rewrites["index_tables_directly"] == 1 and result.rewrites["untranspose_float_side_tables"] == 0
    assert [n.op_type for n in result.program.graph.node].count("Transpose") == 2


def test_a_rolled_table_that_differs_is_refused(monkeypatch):
    """If the rolled table gave another value for any code (here: rolled by one entry too many) it is not used."""
    import engine.compile.optimize as optimize

    real_roll = np.roll
    monkeypatch.setattr(optimize.np, "roll", lambda a, shift: real_roll(a, shift - 1))
    result = optimize_program(int16_table_program(), "O2")
    assert result.rewrites["index_tables_directly"] == 0
    assert "Add" in [n.op_type for n in result.program.graph.node]


def si32_head_program(with_bias: bool = True) -> onnx.ModelProto:
    """uint8 codes → Flatten → MatMulInteger (int8 B, A zero point 128) [→ Add int32 bias] →
    DequantizeLinear per column: a classifier whose logits stay si32 until the output."""
    rng = np.random.default_rng(2)
    inits = {"B": rng.integers(-127, 128, (32, 10)).astype(np.int8), "z": np.uint8(128),
             "bias": rng.integers(-3000, 3000, 10).astype(np.int32),
             "scale": rng.uniform(1e-4, 2e-4, 10).astype(np.float32), "zero": np.zeros(10, np.int32)}
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMulInteger", ["flat", "B", "z"], ["acc"], name="gemm")]
    if with_bias:
        nodes.append(helper.make_node("Add", ["acc", "bias"], ["acc_b"], name="gemm_Add"))
    nodes.append(helper.make_node("DequantizeLinear", ["acc_b" if with_bias else "acc", "scale", "zero"], ["logits"],
                                  name="logits_dequantize", axis=-1))
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 32, 1, 1])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    set_metadata(model, NODE_MAP, {"Gemm_0": ["gemm", "gemm_Add"] if with_bias else ["gemm"]})
    return model


@pytest.mark.parametrize("with_bias", [True, False])
def test_an_si32_classifier_head_runs_as_one_qgemm(with_bias):
    program = si32_head_program(with_bias)
    result = optimize_program(program, "O2")
    assert result.rewrites["si32_head_as_qgemm"] == 1 and result.checked and not result.fallback
    assert [n.op_type for n in result.program.graph.node] == ["Flatten", "QGemm"]
    assert json_metadata(result.program, NODE_MAP)["Gemm_0"] == ["logits_dequantize"]
    _same_outputs(program, result.program, (1, 32, 1, 1), seeds=20)


def test_a_qgemm_that_differs_is_refused(monkeypatch):
    """A QGemm whose column scales are a hair off gives other floats: the chain stays."""
    import engine.compile.optimize as optimize

    real = optimize._qgemm_equal

    def with_wrong_scale(original, qgemm, constants, *args):
        wrong = [numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.0001), t.name)
                 if t.name.endswith("_column_scale") else t for t in constants]
        return real(original, qgemm, wrong, *args)

    monkeypatch.setattr(optimize, "_qgemm_equal", with_wrong_scale)
    result = optimize_program(si32_head_program(), "O2")
    assert result.rewrites["si32_head_as_qgemm"] == 0
    assert "MatMulInteger" in [n.op_type for n in result.program.graph.node]
