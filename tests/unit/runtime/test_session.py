"""engine.runtime.session: the one way integer programs are opened keeps float convs float and
still fuses the integer ones."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.problems import ModelError
from engine.runtime.session import DISABLED_REWRITES, open_session, session_options, without_value_rewrites


def island_conv(weight_int8: bool) -> onnx.ModelProto:
    """DQ(uint8 x) → Conv → Q → DQ: a CPU-island conv of a `.bc` (float W, float B) or a Q/DQ
    integer one (DQ of int8 W per channel, DQ of int32 B at s_x · s_w).

    Channel 0 of the float weight is 1000× larger than the others: per-tensor int8 rounds every
    other channel to (almost) zero, which is what onnxruntime's WeightBiasQuantization would do.
    """
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.1).astype(np.float32)
    w[0] *= 1000.0
    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(np.float32(0.5), "s_out")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"])]
    bias = (rng.standard_normal(8) * 0.1).astype(np.float32)
    if weight_int8:
        ws = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
        codes = np.clip(np.rint(w / ws[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(codes, "Wq"), numpy_helper.from_array(ws, "ws"),
                  numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
                  numpy_helper.from_array(np.rint(bias / (0.05 * ws)).astype(np.int32), "Bq"),
                  numpy_helper.from_array((np.float32(0.05) * ws).astype(np.float32), "bs"),
                  numpy_helper.from_array(np.zeros(8, np.int32), "bz")]
        nodes += [helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"], axis=0),
                  helper.make_node("DequantizeLinear", ["Bq", "bs", "bz"], ["B"], axis=0)]
    else:
        inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B")]
    nodes += [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("QuantizeLinear", ["c", "s_out", "z"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "s_out", "z"], ["y"])]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


X = np.random.default_rng(1).integers(0, 256, (1, 4, 8, 8)).astype(np.uint8)


def _as_written(model: onnx.ModelProto) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"xq": X})[0]


def test_a_float_island_conv_stays_float():
    model = island_conv(weight_int8=False)
    reference = _as_written(model)
    default = ort.SessionOptions()
    default.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    rewritten = ort.InferenceSession(model.SerializeToString(), default, providers=["CPUExecutionProvider"]).run(
        None, {"xq": X})[0]
    # without the disabled rewrite onnxruntime quantizes the float weight and channels 1-7 collapse
    assert np.abs(rewritten[0, 1:] - reference[0, 1:]).max() > 1.0
    for session in (open_session(model), open_session(model.SerializeToString(), threads=2),
                    ort.InferenceSession(model.SerializeToString(), session_options(),
                                         providers=["CPUExecutionProvider"])):
        np.testing.assert_array_equal(session.run(None, {"xq": X})[0], reference)
    assert "WeightBiasQuantization" in DISABLED_REWRITES


def test_basic_level_sessions_can_disable_the_rewrite_too():
    model = island_conv(weight_int8=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), without_value_rewrites(options),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"xq": X})[0], _as_written(model))


def test_integer_convs_are_still_fused_into_qlinearconv(tmp_path):
    model = island_conv(weight_int8=True)
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert np.abs(session.run(None, {"xq": X})[0] - _as_written(model)).max() <= 0.5 + 1e-6  # one output step


def test_a_program_onnxruntime_refuses_is_a_model_error():
    with pytest.raises(ModelError, match="onnxruntime cannot load the broken program"):
        open_session(b"not a model", what="the broken program")


def test_worker_threads_do_not_spin_between_kernels_and_change_no_value():
    """With 2 threads the pool's workers block instead of spinning (a shared machine's other thread
    needs the core); one thread has no pool. The integer program gives the same bits either way."""
    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="does not have configuration"):
        session_options(1).get_session_config_entry("session.intra_op.allow_spinning")
    model = island_conv(weight_int8=True)
    x = np.random.default_rng(7).integers(0, 256, (1, 4, 8, 8)).astype(np.uint8)
    one, two = (open_session(model, threads=t).run(None, {"xq": x})[0] for t in (1, 2))
    assert one.tobytes() == two.tobytes()
