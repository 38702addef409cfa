"""Sensitivity: the deliberately broken node ranks first, split into activation and weight."""

from __future__ import annotations

import json

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
