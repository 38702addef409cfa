"""Automatic mixed precision: reaches a target pure int8 cannot, moving the fewest nodes."""

from __future__ import annotations

import pytest

from engine.accuracy.mixed import mixed_precision
from engine.quantize.planner import Calibration, QuantOptions, make_plan
from engine.quantize.ptq import build_ptq_model
from engine.quantize.types import ActQuant
from engine.similarity import cosine, run_model
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples


class Judge:
    """A plan evaluator whose loss depends on the prefix length only; it records what it was asked."""

    def __init__(self, cosine_at: list[float]):
        self.cosine_at = cosine_at
        self.asked: list[int] = []

    def loss(self, moves, samples=None):
        self.asked.append(len(moves))
        return 1.0 - self.cosine_at[len(moves)]


def test_raises_only_the_broken_node_to_int16_and_meets_the_target():
    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    mp = mixed_precision(model, calibration, data[:4], merged, target=0.999)
    assert mp.before < 0.7  # pure int8 cannot: measured 0.52
    assert [(m.row, m.to) for m in mp.moves] == [("conv_b+relu_b", "int16")]
    assert mp.met and mp.after >= 0.999 and mp.verified == mp.after
    assert mp.node_info == {"relu_b": {"OutputType": "int16"}}  # what the user can copy into node_info
    assert mp.thresholds == {"rb": merged["rb"].absmax}
    assert "isolated activation loss" in mp.moves[0].reason

    # the decision, applied the way later stages apply it, holds on samples it never saw
    final = Calibration({**calibration, "rb": ActQuant("rb", mp.thresholds["rb"])}, mp.node_info)
    plan = make_plan(model, final)
    assert plan.acts["rb"].bits == 16 and plan.nodes["relu_b"].output_dtype == "si16"
    ptq = build_ptq_model(model, plan)
    for s in samples(model, 3, seed=9):
        assert cosine(run_model(model, s)["y"], run_model(ptq, s)["y"]) > 0.999


def test_a_target_already_met_moves_nothing_and_users_placements_are_left_alone():
    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, _ = calibrate(model, data)
    easy = mixed_precision(model, calibration, data, merged, target=0.3)
    assert easy.met and easy.moves == [] and easy.sensitivity is None  # no analysis when not needed
    mine = QuantOptions.build(node_info={"relu_b": {"ON": "BPU"}})  # the user placed it: not ours to move
    kept = mixed_precision(model, calibration, data, merged, target=0.999, options=mine)
    assert "conv_b+relu_b" not in {m.row for m in kept.moves} and not kept.met
    assert any("below the target" in n for n in kept.notes)


def test_the_budget_limits_the_moves():
    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, _ = calibrate(model, data)
    none = mixed_precision(model, calibration, data, merged, target=0.999, budget=0)
    assert none.moves == [] and not none.met


def test_a_weight_int8_cannot_hold_goes_to_the_cpu_after_int16_is_not_enough():
    model = outlier_chain(read_outlier=True)  # conv_c reads the outlier channel with 400x smaller weights
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    mp = mixed_precision(model, calibration, data[:4], merged, target=0.999, budget=4)
    assert [(m.row, m.to) for m in mp.moves] == [("conv_b+relu_b", "int16"), ("conv_c+relu_c", "CPU")]
    assert mp.met and mp.after > 0.999  # measured: int8 0.53, int16 alone 0.894, with conv_c in float 0.9997
    assert mp.node_info == {"relu_b": {"OutputType": "int16"},
                            "conv_c": {"ON": "CPU", "OutputType": "int16"}, "relu_c": {"ON": "CPU", "OutputType": "int16"}}
    plan = make_plan(model, Calibration(calibration, mp.node_info))
    assert plan.nodes["conv_c"].on == "CPU" and "Wc" not in plan.weights and plan.acts["rc"].bits == 16


def test_prefix_scan_finds_the_first_prefix_that_meets_the_target_in_few_judgements():
    from engine.accuracy.mixed import _prefix_scan
    from engine.accuracy.switchable import Row

    cosine_at = [0.95, 0.94, 0.96, 0.97, 0.975, 0.98, 0.985, 0.991, 0.992, 0.993, 0.994, 0.995, 0.995, 0.996, 0.996,
                 0.997, 0.997]  # by prefix length: a dip at the start, then rising

    shortlist = [(Row(f"r{i}", "Conv", (f"r{i}",), f"t{i}"), "int16", 1.0) for i in range(16)]
    judge = Judge(cosine_at)
    loss, k, curve = _prefix_scan(judge, shortlist, 1.0 - cosine_at[0], target=0.99)
    assert k == 7 and loss == pytest.approx(1 - 0.991)
    assert len(judge.asked) <= 5 < 7  # every 4th prefix up to the crossing, then bisection inside it
    assert list(curve) == [f"r{i}" for i in range(7)]
    assert curve["r6"][1] == pytest.approx(0.991)

    judge = Judge(cosine_at)
    loss, k, _ = _prefix_scan(judge, shortlist, 1.0 - cosine_at[0], target=0.999)  # out of reach
    assert k == 16 and loss == pytest.approx(1 - 0.997)  # the best judged prefix


def test_int16_priced_in_milliseconds_linear_in_size_with_every_tensor_it_raises():
    """onnxruntime has no int16 Conv: an int16 tensor a Conv reads makes that Conv a float kernel; a
    tensor at 16 bits costs its requantization per element (linear, not a square root of its size);
    and raising one member of a shared-scale set raises the whole set (`width_sets`)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from engine.accuracy.mixed import ELEMENT_NS, Pricing, _costs, kernel_cost
    from engine.accuracy.switchable import build_switchable
    from engine.quantize.planner import width_sets
    from tests.support.models import finish
    from tests.unit.accuracy.acc_models import calibrate, samples
    from tests.unit.quantize.quant_support import optimized

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4, 3, 3)).astype(np.float32)
    w16 = rng.normal(size=(16, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s1"], name="to_conv"),  # read by a dense 3x3 Conv
             helper.make_node("Conv", ["s1", "w"], ["y1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["x"], ["s2"], name="to_add"),  # shares its scale with x at the Add
             helper.make_node("Add", ["s2", "x"], ["y2"], name="add"),
             helper.make_node("Sigmoid", ["x"], ["y3"], name="small"),  # 4x8x8, read by nothing
             helper.make_node("Conv", ["x", "w16"], ["c16"], name="widen"),  # 1x1, reads x
             helper.make_node("Sigmoid", ["c16"], ["y4"], name="big")]  # 16x8x8: four times small
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x", "y1", "y2", "y3")]
    big = helper.make_tensor_value_info("y4", TensorProto.FLOAT, [1, 16, 8, 8])
    g = helper.make_graph(nodes, "costs", vi[:1], [*vi[1:], big],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w16, "w16")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = optimized(finish(model))
    _, calibration, _ = calibrate(model, samples(model, 2))
    plan = make_plan(model, calibration)
    rows = {r.name: r for r in build_switchable(model, plan).rows}
    assert {"to_conv", "conv", "to_add", "small", "big", "widen"} <= set(rows), sorted(rows)
    assert ("x", "s2") in width_sets(model)  # the Add's inputs share one scale
    ms = {r.name: Pricing(model, plan).int16(r) for r in rows.values()}
    element = 4 * 8 * 8 * ELEMENT_NS * 1e-6
    assert ms["small"] == pytest.approx(element)
    assert ms["big"] == pytest.approx(4 * ms["small"])  # linear in elements
    # the dense 3x3 conv (4x8x8 outputs x 36 products) leaves its int8 kernel
    assert ms["to_conv"] == pytest.approx(element + kernel_cost("pointwise", "input", 4 * 8 * 8 * 36))
    # raising s2 raises x too: both requantized, and x's 1x1 reader (16x8x8 outputs x 4) leaves int8
    assert ms["to_add"] == pytest.approx(2 * element + kernel_cost("pointwise", "input", 16 * 8 * 8 * 4))
    costs = _costs(list(rows.values()), Pricing(model, plan))  # in units of the typical move: 1 + ms / median
    median = float(np.median(list(ms.values())))
    assert costs["big"] == pytest.approx(1 + ms["big"] / median) and costs["big"] > costs["small"]
    plain = {r.name: Pricing(model).int16(r) for r in rows.values()}  # without a plan: the row's own bytes only
    assert plain["to_conv"] == pytest.approx(plain["to_add"]) == pytest.approx(element)


def test_prefix_scan_asks_for_the_standard_error_as_margin():
    """A prefix only meets the target when its mean cosine less its standard error does (capped at
    half the allowed loss): the evaluation samples are few, held-out data falls below their mean."""
    from engine.accuracy.mixed import _prefix_scan
    from engine.accuracy.switchable import Row

    cosine_at = [0.95, 0.96, 0.97, 0.98, 0.985, 0.9905, 0.991, 0.992, 0.994, 0.996, 0.997]

    class Judge:
        def loss(self, moves, samples=None):
            return 1.0 - cosine_at[len(moves)]

    shortlist = [(Row(f"r{i}", "Conv", (f"r{i}",), f"t{i}"), "int16", 1.0) for i in range(10)]
    loss, k, _ = _prefix_scan(Judge(), shortlist, 1.0 - cosine_at[0], target=0.99)
    assert k == 5  # no margin: the first prefix at 0.99
    loss, k, _ = _prefix_scan(Judge(), shortlist, 1.0 - cosine_at[0], target=0.99, margin=lambda moves, n: 0.0015)
    assert k == 7 and loss == pytest.approx(1 - 0.992)
    loss, k, _ = _prefix_scan(Judge(), shortlist, 1.0 - cosine_at[0], target=0.99, margin=lambda moves, n: 0.5)
    assert k == 9  # the margin is capped at (1 - 0.99) / 2: 0.996 - 0.005 meets it


def test_the_evaluator_measures_the_spread_of_the_mean_cosine():
    import numpy as np

    from engine.accuracy.mixed import PlanEvaluator
    from engine.accuracy.switchable import build_switchable
    from tests.unit.accuracy.acc_models import outlier_chain

    model = outlier_chain()
    data = samples(model, 5)
    merged, calibration, _ = calibrate(model, data)
    plan = make_plan(model, calibration)
    ev = PlanEvaluator(model, calibration, QuantOptions(), data, merged, build_switchable(model, plan), plan)
    ptq = build_ptq_model(model, plan)
    each = [cosine(run_model(model, s)["y"], run_model(ptq, s)["y"]) for s in data]
    assert ev.loss({}) == pytest.approx(1 - np.mean(each), abs=1e-6)
    assert ev.margin({}) == pytest.approx(np.std(each, ddof=1) / np.sqrt(len(each)), rel=1e-3, abs=1e-7)
    assert ev.builds == 1  # margin reuses loss's run


def test_move_budget_is_at_most_the_share_of_nodes():
    from engine.accuracy import move_budget
    assert move_budget(0.1, 199) == 19  # 10.05 % would be over "at most 10 %"
    assert move_budget(0.1, 200) == 20
    assert move_budget(0.1, 265) == 26
    assert move_budget(0.1, 5) == 1  # a tiny model may still move one node
    assert move_budget(0.0, 199) == 0


def test_the_ranking_runs_on_the_first_rank_samples_evaluation_samples():
    from engine.accuracy.mixed import RANK_SAMPLES

    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    default = mixed_precision(model, calibration, data[:4], merged, target=0.999)
    assert default.sensitivity.samples == min(RANK_SAMPLES, 4)
    three = mixed_precision(model, calibration, data[:4], merged, target=0.999, rank_samples=3)
    assert three.sensitivity.samples == 3
    assert [(m.row, m.to) for m in three.moves] == [("conv_b+relu_b", "int16")]  # the broken node either way


def test_graph_order_candidates_are_the_noisy_activation_rows_from_the_input_on_within_the_budget():
    from engine.accuracy.mixed import GRAPH_ORDER_NOISE, _in_graph_order
    from engine.accuracy.sensitivity import row_noise
    from engine.accuracy.switchable import build_switchable

    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, plan = calibrate(model, data)
    probe = build_switchable(model, plan)
    rows = [r for r in probe.rows if r.switches]
    noisy = {r.name for r in rows if r.of_kind("activation") and row_noise(r, plan, merged) >= GRAPH_ORDER_NOISE}
    assert "conv_b+relu_b" in noisy and len(noisy) < len(rows)  # the broken tensor is noisy, not every row is

    def size(moves):
        return len(moves)

    shuffled = list(reversed(rows))  # rows handed over in any order come back in graph order
    assert [r.name for r in shuffled if r.name in noisy] != [r.name for r in rows if r.name in noisy]
    listed = _in_graph_order(model, shuffled, plan, merged, size, budget=10)
    names = [r.name for r, _, _ in listed]
    assert set(names) == noisy and all(to == "int16" for _, to, _ in listed)
    order = [r.name for r in probe.rows if r.name in noisy]  # table rows: entry tensors first, then graph order
    position = {n.name: i for i, n in enumerate(model.graph.node)}
    assert names == sorted(order, key=lambda n: position.get(probe.row(n).nodes[0], -1) if probe.row(n).nodes else -1)
    assert [r.name for r, _, _ in _in_graph_order(model, shuffled, plan, merged, size, budget=1)] == names[:1]


def test_graph_order_is_tried_when_the_isolated_ranking_misses_the_target(monkeypatch):
    """Errors that compound from the start of the graph, which the isolated ranking does not see:
    with a ranking that offers nothing useful, the graph-order candidates still reach the target."""
    from engine.accuracy import mixed

    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    monkeypatch.setattr(mixed, "_candidates", lambda rows, sens, cost: [])  # the isolated ranking finds nothing
    monkeypatch.setattr(mixed, "weight_culprits", lambda *a, **k: [])  # nor the weights' leave-one-out
    mp = mixed.mixed_precision(model, calibration, data[:4], merged, target=0.999, budget=4)
    assert mp.met and mp.after >= 0.999
    assert "conv_b+relu_b" in {m.row for m in mp.moves} and all(m.to == "int16" for m in mp.moves)
    assert any("in graph order" in n for n in mp.notes)
    assert all("not ranked" in m.reason or "rank" in m.reason for m in mp.moves)

    monkeypatch.setattr(mixed, "GRAPH_ORDER_NOISE", float("inf"))  # no graph-order candidates either
    none = mixed.mixed_precision(model, calibration, data[:4], merged, target=0.999, budget=4)
    assert none.moves == [] and not none.met


def test_graph_order_list_that_improves_but_misses_the_target_is_kept(monkeypatch):
    """Neither list meets an unreachable target: the graph-order list that gets closer than the
    (empty) isolated ranking is kept, and the result says the target was not met."""
    from engine.accuracy import mixed

    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    monkeypatch.setattr(mixed, "_candidates", lambda rows, sens, cost: [])  # the isolated ranking finds nothing
    monkeypatch.setattr(mixed, "weight_culprits", lambda *a, **k: [])  # nor the weights' leave-one-out
    mp = mixed.mixed_precision(model, calibration, data[:4], merged, target=1.0, budget=4)
    assert not mp.met and mp.moves  # missed, but the moves that helped are kept
    assert mp.after > mp.before + 1e-4
    assert "conv_b+relu_b" in {m.row for m in mp.moves} and all(m.to == "int16" for m in mp.moves)
    assert any("in graph order" in n and "taken" in n for n in mp.notes)
    assert any("below the target" in n for n in mp.notes)


def test_int16_priced_by_what_each_kernel_really_costs():
    """Measured alone against int8 (docs/formats.md): an int16 input makes a 1x1 conv ~4x slower, an
    int16 output ~3x, a 3x3 depthwise conv little: the same tensor costs more read by a 1x1 conv
    than by a depthwise one, and a 1x1 conv's output costs less than its input."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from engine.accuracy.mixed import Pricing, _costs, kernel_cost, kernel_kind
    from engine.accuracy.switchable import build_switchable
    from tests.support.models import finish
    from tests.unit.accuracy.acc_models import calibrate, samples
    from tests.unit.quantize.quant_support import optimized

    rng = np.random.default_rng(0)
    pw = rng.normal(size=(8, 8, 1, 1)).astype(np.float32)
    dw = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s1"], name="to_pw"),
             helper.make_node("Conv", ["s1", "pw"], ["y1"], name="pw_conv"),
             helper.make_node("Tanh", ["x"], ["s2"], name="to_dw"),
             helper.make_node("Conv", ["s2", "dw"], ["y2"], name="dw_conv", group=8, pads=[1, 1, 1, 1])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 8, 8]) for n in ("x", "y1", "y2")]
    g = helper.make_graph(nodes, "kinds", vi[:1], vi[1:], [numpy_helper.from_array(pw, "pw"),
                                                           numpy_helper.from_array(dw, "dw")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = optimized(finish(model))
    by_name = {n.name: n for n in model.graph.node}
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    assert kernel_kind(by_name["dw_conv"], shapes[by_name["dw_conv"].input[1]]) == "depthwise"
    assert kernel_kind(by_name["pw_conv"], shapes[by_name["pw_conv"].input[1]]) == "pointwise"
    # per output element: a 3x3 depthwise conv sums 9 products, a 1x1 conv over 32 channels 32
    assert kernel_cost("depthwise", "input", 9e6) < kernel_cost("pointwise", "output", 32e6) \
        < kernel_cost("pointwise", "input", 32e6)
    _, calibration, _ = calibrate(model, samples(model, 2))
    plan = make_plan(model, calibration)
    rows = {r.name: r for r in build_switchable(model, plan).rows}
    costs = _costs(list(rows.values()), Pricing(model, plan))
    assert {"to_pw", "to_dw", "pw_conv", "dw_conv"} <= set(rows), sorted(rows)
    assert costs["to_pw"] > costs["to_dw"]  # same size, read by a 1x1 conv against a depthwise one
    assert costs["pw_conv"] < costs["to_pw"]  # a 1x1 conv's int16 output is cheaper than its int16 input


def test_weight_culprits_are_the_weights_whose_rounding_costs_most_among_all_int8_weights():
    """Leave-one-out among the int8 weights (activations float): conv_c's weights, which int8 rounds
    to zero on the channel it reads, are the one culprit (measured: it wins back 0.09 of the loss,
    conv_b 3e-4); with that channel dead, conv_c still costs 5e-4 (its bias rounds at the outlier
    input's scale): a culprit at target 0.99, not when the target allows a loss of 0.5 (the floor)."""
    from engine.accuracy.mixed import weight_culprits
    from engine.accuracy.switchable import build_switchable

    def culprits(read_outlier: bool, **kw):
        model = outlier_chain(read_outlier=read_outlier)
        data = samples(model, 4)
        _, _, plan = calibrate(model, data)
        probe = build_switchable(model, plan)
        found = weight_culprits(model, plan, probe, [r for r in probe.rows if r.switches], data[:1], **kw)
        assert all(to == "CPU" and gain > 0 for _, to, gain in found)
        return [r.name for r, _, _ in found]

    assert culprits(True) == ["conv_c+relu_c"]
    assert culprits(True, target=0.0) == ["conv_c+relu_c"]
    assert culprits(True, share=0.0, target=1.0)[:2] == ["conv_c+relu_c", "conv_b+relu_b"]  # by gain
    assert culprits(True, share=1.01) == []  # no single weight wins back more than all of them
    assert culprits(False, target=0.99) == ["conv_c+relu_c"]
    assert culprits(False, target=0.5) == []


def test_a_list_whose_every_move_together_misses_is_not_walked():
    """After SCAN_LEAD stride points miss, the whole list is judged: when it misses too, the scan
    stops (each judgement is a full ptq run); `lead` 0 judges the whole list first."""
    from engine.accuracy.mixed import SCAN_LEAD, _prefix_scan
    from engine.accuracy.switchable import Row

    cosine_at = [0.95 + 0.002 * k for k in range(21)]  # rising, 0.99 out of reach (0.99 at 20 only)

    shortlist = [(Row(f"r{i}", "Conv", (f"r{i}",), f"t{i}"), "int16", 1.0) for i in range(19)]
    judge = Judge(cosine_at)
    loss, k, _ = _prefix_scan(judge, shortlist, 1.0 - cosine_at[0], target=0.99)
    assert SCAN_LEAD == 2 and judge.asked == [4, 8, 19]  # not 12 and 16
    assert k == 19 and loss == pytest.approx(1 - cosine_at[19])  # the best judged
    judge = Judge(cosine_at)
    _prefix_scan(judge, shortlist, 1.0 - cosine_at[0], target=0.99, lead=0)
    assert judge.asked == [19]

    reachable = [0.95, 0.96, 0.97, 0.98, 0.985, 0.986, 0.987, 0.988, 0.989, 0.9895, 0.991, 0.992, 0.993]
    judge = Judge(cosine_at)
    cosine_at[:len(reachable)] = reachable
    loss, k, _ = _prefix_scan(judge, shortlist[:12], 1.0 - cosine_at[0], target=0.99, lead=0)
    assert k == 10 and judge.asked == [12, 3, 6, 9, 10]  # the whole list meets: walked from the short end


def test_a_plan_that_meets_the_target_costs_one_plan_and_one_ptq_run(monkeypatch):
    """No switchable model (rows, switches) and no second plan when no move is needed: on a small
    model those were most of the accuracy steps' time."""
    import engine.accuracy.mixed as mixed
    import engine.quantize.planner as planner
    from engine.accuracy import AccuracySettings, improve

    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, _ = calibrate(model, data)
    calls = {"plan": 0, "switchable": 0}
    real_plan, real_switchable = planner.make_plan, mixed.build_switchable

    def counted_plan(*args, **kwargs):
        calls["plan"] += 1
        return real_plan(*args, **kwargs)

    def counted_switchable(*args, **kwargs):
        calls["switchable"] += 1
        return real_switchable(*args, **kwargs)

    monkeypatch.setattr(mixed, "make_plan", counted_plan)
    monkeypatch.setattr(mixed, "build_switchable", counted_switchable)
    res = improve(model, calibration, QuantOptions(), merged, data, [], AccuracySettings(target=0.3, check_data=False))
    assert res.mixed.met and res.mixed.moves == [] and res.mixed.evaluations == 1
    assert calls == {"plan": 1, "switchable": 0}
    assert res.verified_cosine == pytest.approx(1 - mixed.PlanEvaluator(
        model, calibration, QuantOptions(), data, merged, None, real_plan(model, calibration)).loss({}))

    hard = improve(model, calibration, QuantOptions(), merged, data, [], AccuracySettings(target=0.999, check_data=False))
    assert hard.mixed.moves and calls["switchable"] >= 1  # a move needs the rows: built then


def _concat_of_two_ranges():
    """x → two convs (outputs ~10x apart) → Concat: the concat shares one scale, so the ptq model's
    threshold for the small branch is not the calibrated model's."""
    import numpy as np
    from onnx import TensorProto, helper

    from tests.unit.accuracy.acc_models import _model

    rng = np.random.default_rng(0)
    w = {"W1": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
         "W2": (rng.standard_normal((4, 3, 3, 3)) * 3.0).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="conv_1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "W2"], ["b"], name="conv_2", pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "b"], ["s"], name="cat", axis=1),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    return _model(nodes, w, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], "concat_of_two_ranges")


def test_the_searchs_cosine_stands_in_for_the_ptq_run_only_when_it_clears_the_target_by_far(monkeypatch):
    import engine.quantize.ptq as ptq
    from engine.accuracy import AccuracySettings, Searched, improve
    from engine.accuracy.mixed import SEARCHED_SHARE, searched_meets

    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, plan = calibrate(model, data)
    builds = []
    real = ptq.build_ptq_model
    monkeypatch.setattr(ptq, "build_ptq_model", lambda *a, **k: builds.append(1) or real(*a, **k))
    settings = AccuracySettings(target=0.3, check_data=False)
    allowed = 1.0 - settings.target
    clear = Searched(1.0 - 0.99 * SEARCHED_SHARE * allowed, 4)  # within the share
    res = improve(model, calibration, QuantOptions(), merged, data, [], settings, searched=clear)
    assert builds == [] and res.mixed.met and res.mixed.moves == [] and res.mixed.evaluations == 0
    assert res.mixed.before == clear.cosine and res.verified_cosine is None
    assert "threshold search measured output cosine" in res.mixed.notes[0]

    close = Searched(1.0 - 1.01 * SEARCHED_SHARE * allowed, 4)  # meets the target, not by far: the ptq model decides
    res = improve(model, calibration, QuantOptions(), merged, data, [], settings, searched=close)
    assert builds == [1] and res.mixed.met and res.mixed.evaluations == 1 and res.verified_cosine is not None
    assert res.mixed.before != close.cosine

    # user int16 widens a threshold first: the search measured other thresholds
    widened = improve(model, calibration, QuantOptions.build(node_info={"relu_b": {"OutputType": "int16"}}), merged,
                      data, [], settings, searched=clear)
    assert widened.int16_thresholds == 1 and widened.mixed.evaluations == 1 and len(builds) == 2

    # a shared scale: the ptq model's thresholds are not the calibrated model's
    cat = _concat_of_two_ranges()
    merged, calibration, plan = calibrate(cat, samples(cat, 3))
    assert plan.acts["a"].threshold != plan.calibrated_acts["a"].threshold
    assert not searched_meets(Searched(1.0, 4), plan, 0.99)
    assert searched_meets(Searched(1.0, 4), make_plan(model, calibrate(model, data)[1]), 0.99)


def _chain():
    """Conv a → Sigmoid b → Conv c → Tanh d on 1x4x8x8, optimized, calibrated on 2 samples: (model, plan, probe)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper


    rng = np.random.default_rng(1)
    wa, wc = (rng.normal(size=(4, 4, 1, 1)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="b"),
             helper.make_node("Conv", ["b", "wc"], ["c"], name="c"),
             helper.make_node("Tanh", ["c"], ["d"], name="d")]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x", "d")]
    return _planned(helper.make_graph(nodes, "chain", vi[:1], vi[1:], [numpy_helper.from_array(wa, "wa"),
                                                                       numpy_helper.from_array(wc, "wc")]))


def _planned(g):
    """`g` as a model, optimized, calibrated on 2 samples: (model, plan, switchable probe)."""
    from onnx import helper

    from engine.accuracy.switchable import build_switchable
    from tests.support.models import finish
    from tests.unit.accuracy.acc_models import calibrate, samples
    from tests.unit.quantize.quant_support import optimized

    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = optimized(finish(model))
    _, calibration, _ = calibrate(model, samples(model, 2))
    plan = make_plan(model, calibration)
    return model, plan, build_switchable(model, plan)


def test_int16_moves_in_a_chain_are_offered_as_one_float_island():
    """Two moved rows with one unmoved row between them make one island (the row between joins it);
    rows further apart, or alone, make none. Its estimate: float kernels inside, requantization only
    at its borders (the tensors entering it and those leaving it)."""

    from engine.accuracy.mixed import ELEMENT_NS, Pricing, _islands, kernel_cost

    model, plan, probe = _chain()
    rows = {r.name: r for r in probe.rows}
    assert {"a", "b", "c", "d"} <= set(rows), sorted(rows)
    pricing = Pricing(model, plan)
    movable = set(rows)
    islands = _islands(probe, pricing, {"a": "int16", "c": "int16"}, movable)
    assert [[r.name for r in i] for i in islands] == [["a", "b", "c"]]
    assert _islands(probe, pricing, {"a": "int16", "d": "int16"}, movable) == []  # two rows apart
    assert _islands(probe, pricing, {"b": "int16"}, movable) == []  # alone
    assert _islands(probe, pricing, {"a": "int16", "c": "int16"}, movable - {"b"}) == []  # b is the user's
    # inside: the two 1x1 convs as float kernels; borders: x entering, c leaving for d (a table: no kernel)
    macs = 4 * 8 * 8 * 4
    assert pricing.float_island(islands[0]) == pytest.approx(
        2 * kernel_cost("pointwise", "input", macs) + 2 * 4 * 8 * 8 * ELEMENT_NS * 1e-6)
    # an island whose int16 output a 1x1 conv reads takes that conv off its int8 kernel too
    assert pricing.float_island([rows["a"], rows["b"]]) == pytest.approx(
        2 * kernel_cost("pointwise", "input", macs) + 2 * 4 * 8 * 8 * ELEMENT_NS * 1e-6)


def test_a_met_target_drops_the_costliest_moves_it_does_without():
    """After the scan (whose curve is not monotone) and the islands, each of the costliest moves is
    dropped when the others still meet the target on the (here: judged) real plan."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from engine.accuracy.mixed import Pricing, _prune

    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="a"),
             helper.make_node("Conv", ["a", "w"], ["b"], name="b"),
             helper.make_node("Tanh", ["b"], ["c"], name="c")]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x", "c")]
    model, plan, probe = _planned(helper.make_graph(nodes, "three", vi[:1], vi[1:], [numpy_helper.from_array(w, "w")]))
    pricing = Pricing(model, plan)
    assert pricing.int16(probe.row("a")) > pricing.int16(probe.row("c"))  # a is read by the conv

    class Needs:
        """Meets 0.99 exactly when `needed` are among the moves."""

        def __init__(self, needed: set[str]):
            self.needed, self.asked = needed, []

        def loss(self, moves, samples=None):
            self.asked.append(set(moves))
            return 0.005 if self.needed <= set(moves) else 0.02

        def margin(self, moves, samples=None):
            return 0.0

    both = {"a": "int16", "c": "int16"}
    ev = Needs({"c"})
    loss, kept = _prune(ev, probe, pricing, dict(both), {}, 0.005, 0.99, notes := [])
    assert kept == {"c": "int16"} and loss == 0.005
    assert ev.asked[0] == {"c"}  # the costlier move is tried first
    assert any("a dropped" in n for n in notes)
    loss, kept = _prune(Needs({"a", "c"}), probe, pricing, dict(both), {}, 0.005, 0.99, [])
    assert kept == both  # each is needed: nothing dropped


def test_an_island_whose_border_has_no_threshold_is_skipped_with_a_note():
    """R-M review s7: PP-OCRv4 rec with photos as calibration data crashed in calibrate with
    MissingThresholdError: an island's border was a tensor (a Transpose's output) no plan had quantized, so
    calibrate never observed it. Such an island (and such a pruning) is not tried; the run goes on."""

    from engine.accuracy.mixed import Pricing, _float_islands, _prune
    from engine.quantize.planner import MissingThresholdError

    model, plan, probe = _chain()
    pricing = Pricing(model, plan)
    pricing.float_island = lambda rows: 0.0  # the island is estimated cheaper: it is tried

    class Unobserved:
        def loss(self, moves, samples=None):
            if "CPU" in moves.values() or len(moves) < 2:
                raise MissingThresholdError("no calibration threshold for tensor 't' (from n): the calibrate stage …")
            return 0.001

        def margin(self, moves, samples=None):
            return 0.0

    chosen = {"a": "int16", "c": "int16"}
    loss, kept, taken = _float_islands(Unobserved(), probe, pricing, dict(chosen), set(chosen) | {"b"}, 0.001, 0.99,
                                       lambda m: len(m), 10, notes := [])
    assert kept == chosen and taken == {} and loss == 0.001
    assert any("not tried: no calibration threshold for tensor 't' (from n)" in n for n in notes), notes
    loss, kept = _prune(Unobserved(), probe, pricing, dict(chosen), {}, 0.001, 0.99, notes := [])
    assert kept == chosen and any("not tried" in n for n in notes), notes
