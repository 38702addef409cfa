"""Sensitivity: the deliberately broken node ranks first, split into activation and weight."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.accuracy.sensitivity import Sensitivity, analyse, local_noise
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples


def test_the_broken_node_ranks_first_for_its_activation():
    model = outlier_chain()
    data = samples(model, 4)
    merged, _, plan = calibrate(model, data)
    sens = analyse(model, plan, data[:2], merged)
    top = sens.rows[0]
    assert top.node == "conv_b+relu_b" and top.culprit == "activation"
    # measured: 0.45; next, conv_c's int32 bias at the broken tensor's coarse scale s_in · s_w: 0.11
    assert top.activation > 0.3 and top.activation > 3 * sens.rows[1].loss
    assert top.weight is not None and top.weight < 0.01  # per-channel int8 weights are fine
    assert sens.output_cosine < 0.7
    # accumulated: at its own output the large channel hides the loss (what a node table shows);
    # the next layer, which reads the small channels, has lost most of its signal
    acc = {r.node: r.accumulated for r in sens.rows}
    assert acc["conv_a+relu_a"] < 0.01 and acc["conv_b+relu_b"] < 0.01 and acc["conv_c+relu_c"] > 0.3
    assert sens.measured == len(sens.rows)


def test_local_noise_screens_without_running_and_json_round_trips():
    model = outlier_chain()
    data = samples(model, 3)
    merged, _, plan = calibrate(model, data)
    noise = {t: local_noise(merged[t], plan.acts[t].threshold) for t in ("x", "ra", "rb", "rc")}
    assert noise["rb"] > 0.1 and noise["rb"] > 100 * max(noise["x"], noise["ra"], noise["rc"])
    sens = analyse(model, plan, data[:1], merged, limit=1)
    assert sens.measured == 1 and sens.rows[0].node == "conv_b+relu_b"
    assert sum(r.activation is None for r in sens.rows) == len(sens.rows) - 1
    again = Sensitivity.from_json(json.loads(json.dumps(sens.to_json())))
    assert again.rows == sens.rows and "conv_b+relu_b" in sens.table_text(3)


def test_a_cropped_ranking_still_puts_the_broken_node_first(monkeypatch):
    from engine.accuracy import sensitivity

    monkeypatch.setattr(sensitivity, "MIN_CROP_SIDE", 4)
    model = outlier_chain()  # 16x16: the centre 8x8 is a quarter of the pixels
    data = samples(model, 3)
    merged, _, plan = calibrate(model, data)
    small, crops, shown = sensitivity.cropped(model, data[:1], 0.25)
    assert shown == "8x8" and crops[0]["x"].shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(crops[0]["x"], data[0]["x"][:, :, 4:12, 4:12])
    sens = analyse(model, plan, data[:1], merged, crop=0.25)
    assert any("8x8 crop" in n for n in sens.notes)
    assert sens.rows[0].node == "conv_b+relu_b" and sens.rows[0].activation > 0.3
    # refined: the crop's top two measured again on the whole sample, as the uncropped analysis does
    whole = {r.node: r.activation for r in analyse(model, plan, data[:1], merged).rows}
    refined = analyse(model, plan, data[:1], merged, crop=0.25, refine=2)
    assert [r.node for r in refined.rows[:2]] == sorted([r.node for r in sens.rows[:2]], key=lambda n: -whole[n])
    for r in refined.rows[:2]:
        assert r.activation == pytest.approx(whole[r.node], abs=1e-9)
    assert refined.rows[2].activation == next(r.activation for r in sens.rows if r.node == refined.rows[2].node)


def test_no_crop_for_a_model_that_cannot_run_at_one():
    from onnx import TensorProto, helper, numpy_helper

    from engine.accuracy.sensitivity import cropped

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((4 * 128 * 128, 5)).astype(np.float32), "G")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "G"], ["y"])]
    g = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128, 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)}
    assert cropped(model, [x], 0.25, min_side=8) is None  # the classifier's MatMul needs every pixel
    assert cropped(model, [x], 0.25) is None  # and 64 px is below the smallest crop anyway
