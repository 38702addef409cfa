"""engine.runtime.threads: a thread budget becomes the threads a program gains from, never more."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.compile.hbm import write_hbm
from engine.compile.program import tensor_types
from engine.runtime.model import load
from engine.runtime.threads import SMALL_KERNEL_WORK, ThreadPlan, kernel_work, plan_for, plan_of


def test_a_plan_caps_the_budget_at_its_limit():
    assert [ThreadPlan(1).threads_for(b) for b in (1, 2, 8)] == [1, 1, 1]
    assert [ThreadPlan(None).threads_for(b) for b in (1, 2, 8)] == [1, 2, 8]
    assert ThreadPlan(2).threads_for(0) == 1  # a budget is at least one thread


def test_json_round_trip_and_what_is_not_a_plan():
    p = ThreadPlan(1, 1234.0, "small kernels")
    data = json.loads(json.dumps(p.to_json()))
    assert data["uses"] == {"1": 1, "2": 1, "4": 1} and ThreadPlan.from_json(data) == p
    assert plan_of({"build": {"threads": data}}) == p
    assert plan_of({"build": {}}) is None and plan_of({}) is None and plan_of(None) is None
    for bad in (None, [], {"limit": 0}, {"limit": "one"}, {"work per kernel": "much"}):
        assert ThreadPlan.from_json(bad) is None, bad
    assert p.describe(2) == "threads (budget → used): 1 → 1, 2 → 1, 4 → 1; small kernels; a budget of 2 uses 1"


def wide_program(channels: int = 64, hw: int = 56) -> onnx.ModelProto:
    """uint8 NCHW → three 3x3 QLinearConvs of `channels` (enough work per kernel for onnxruntime to
    split it between threads)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(np.float32(0.004), "sw"), numpy_helper.from_array(np.int8(0), "zw")]
    nodes, x = [], "x"
    for i in range(3):
        w = rng.integers(-100, 101, (channels, channels if i else 3, 3, 3)).astype(np.int8)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.integers(-2000, 2000, channels).astype(np.int32), f"b{i}")]
        nodes.append(helper.make_node("QLinearConv", [x, "s", "z", f"w{i}", "sw", "zw", "s", "z", f"b{i}"], [f"c{i}"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1]))
        x = f"c{i}"
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info(x, TensorProto.UINT8, [1, channels, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _hbm_with(path, model: onnx.ModelProto, threads: ThreadPlan | None):
    manifest = {"format": "hbcompile.hbm", "build": {"threads": threads.to_json()} if threads else {}}
    return write_hbm(path, model, manifest)


def test_load_opens_the_threads_the_plan_gives_for_the_budget(tmp_path):
    model = wide_program(8, 8)
    one = _hbm_with(tmp_path / "one.hbm", model, ThreadPlan(1, 100.0, "small kernels"))
    every = _hbm_with(tmp_path / "every.hbm", model, ThreadPlan(None, 1e6, "large kernels"))
    none = _hbm_with(tmp_path / "none.hbm", model, None)
    for path, budget, used in ((one, 2, 1), (one, 1, 1), (every, 2, 2), (every, 1, 1), (none, 2, 2)):
        loaded = load(path, threads=budget)
        assert (loaded.thread_budget, loaded.threads) == (budget, used), (path, budget)
        assert loaded.session.get_session_options().intra_op_num_threads == used


def test_kernel_work_counts_multiply_accumulates_and_elements():
    model = wide_program(16, 10)  # three 3x3 convs: 3→16, 16→16, 16→16 channels on 10x10
    ops, nodes = kernel_work(model, tensor_types(model))
    assert nodes == 3 and ops == 16 * 100 * (3 * 9) + 2 * 16 * 100 * (16 * 9)
    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])]), opset_imports=[helper.make_opsetid("", 17)])
    assert kernel_work(relu, tensor_types(relu)) == (20, 1)


def test_small_kernels_get_one_thread_large_ones_the_whole_budget():
    small, large = wide_program(8, 8), wide_program()
    p = plan_for(small, tensor_types(small))
    assert p.limit == 1 and p.work_per_kernel < SMALL_KERNEL_WORK and "small kernels" in p.why
    q = plan_for(large, tensor_types(large))
    assert q.limit is None and q.work_per_kernel >= SMALL_KERNEL_WORK and "large kernels" in q.why
    assert [q.threads_for(b) for b in (1, 2, 8)] == [1, 2, 8]
    assert plan_for(large, tensor_types(large)) == q  # no timing in it: every build records the same plan
