"""The accuracy steps' per-run memo (issue #8): a warm process gives a cold one's numbers bit for bit,
one changed sample re-runs that sample's runs only, a moved threshold misses, and the map is bounded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine.accuracy.mixed as mixed
from engine.accuracy import AccuracySettings, improve, runs, sessions
from engine.accuracy.mixed import PlanEvaluator, mixed_precision
from engine.accuracy.runs import RunMemo
from engine.accuracy.sensitivity import Evaluator, analyse, output_loss
from engine.accuracy.switchable import Setting, build_switchable
from engine.quantize.planner import Calibration, QuantOptions, make_plan
from engine.quantize.types import ActQuant
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples


@pytest.fixture
def memo(monkeypatch) -> RunMemo:
    """A fresh run memo and float-output store: other tests' runs in this process do not interfere."""
    fresh = RunMemo()
    monkeypatch.setattr(runs, "RUNS", fresh)
    monkeypatch.setattr(sessions, "FLOAT_OUTPUTS", sessions.FloatOutputs())
    return fresh


def executed(monkeypatch) -> list[tuple[str, str]]:
    """(model digest, sample key) of every run from now on that the memo did not hold: the runs executed."""
    made: dict[str, tuple[str, str]] = {}
    done: list[tuple[str, str]] = []
    real_key, real_store = runs.run_key, runs.store

    def run_key(model, sample, *args, **kwargs):
        key = real_key(model, sample, *args, **kwargs)
        made[key] = (model, sample)
        return key

    def store(key, value):
        done.append(made[key])
        return real_store(key, value)

    monkeypatch.setattr(runs, "run_key", run_key)
    monkeypatch.setattr(runs, "store", store)
    return done


def without_seconds(value):
    """A result's JSON with its timings (which differ run to run) left out."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def shifted(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.roll(v, 1, axis=-1)) for k, v in sample.items()}


def test_a_warm_memo_gives_the_cold_results_bit_for_bit(memo, monkeypatch):
    """Mixed precision moves conv_b to int16 on this model; its ranking, moves and cosines are the same
    numbers with the memo empty, full, and disabled (size 0: every run executed, the unmemoised path)."""
    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)

    def once():
        return mixed_precision(model, calibration, data[:4], merged, target=0.999)

    cold = once()
    assert [(m.row, m.to) for m in cold.moves] == [("conv_b+relu_b", "int16")]
    filled = len(memo)
    warm = once()
    assert memo.hits >= filled and len(memo) == filled  # every run found, none added
    monkeypatch.setattr(runs, "RUNS", RunMemo(0))
    plain = once()
    for other in (warm, plain):
        assert without_seconds(other.to_json()) == without_seconds(cold.to_json())
        assert other.before == cold.before and other.after == cold.after and other.verified == cold.verified
        assert [dataclasses.astuple(r) for r in other.sensitivity.rows] == \
            [dataclasses.astuple(r) for r in cold.sensitivity.rows]
        assert other.sensitivity.output_cosine == cold.sensitivity.output_cosine


def test_the_evaluators_loss_is_output_loss_of_the_runs_it_made_and_then_runs_nothing(memo):
    model = outlier_chain()
    data = samples(model, 3)
    _, _, plan = calibrate(model, data)
    sw = build_switchable(model, plan)
    setting = sw.rows_on([sw.row("conv_b+relu_b")])
    direct = output_loss(sessions.References(model, data).values, [sw.run(s, setting) for s in data], sw.outputs)
    ev = Evaluator(sw, model, data)
    assert ev.loss(setting) == direct and ev.runs == 3
    again = Evaluator(sw, model, [{k: v.copy() for k, v in s.items()} for s in data])  # the same content
    assert again.loss(setting) == direct and again.runs == 0
    assert again.loss(sw.all_on()) != direct and again.runs == 3  # another setting: other runs


def test_one_changed_sample_runs_again_alone_and_its_float_reference_alone(memo, monkeypatch):
    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, plan = calibrate(model, data)
    sw = build_switchable(model, plan)
    setting = sw.rows_on([sw.row("conv_b+relu_b")], ("activation",))
    Evaluator(sw, model, data).loss(setting)
    PlanEvaluator(model, calibration, QuantOptions(), data, merged, None, plan).loss({})

    changed = [*data[:2], shifted(data[2]), data[3]]
    new_key = sessions.sample_key(changed[2])
    ran = executed(monkeypatch)
    float_runs, ptq_sessions = [], []
    real_outputs, real_session = sessions.run_outputs, mixed.quiet_session
    monkeypatch.setattr(sessions, "run_outputs", lambda *a, **k: float_runs.append(1) or real_outputs(*a, **k))
    monkeypatch.setattr(mixed, "quiet_session", lambda *a, **k: ptq_sessions.append(1) or real_session(*a, **k))
    ev = Evaluator(sw, model, changed)
    loss = ev.loss(setting)
    pe = PlanEvaluator(model, calibration, QuantOptions(), changed, merged, None, plan)
    pe.loss({})
    assert ev.runs == 1 and [s for _, s in ran] == [new_key, new_key]  # one switchable run, one ptq run
    assert len(float_runs) == 1 and len(ptq_sessions) == 1  # the float reference of that sample only

    # the same numbers as computed from nothing
    monkeypatch.setattr(runs, "RUNS", RunMemo(0))
    monkeypatch.setattr(sessions, "FLOAT_OUTPUTS", sessions.FloatOutputs())
    assert Evaluator(sw, model, changed).loss(setting) == loss
    cold = PlanEvaluator(model, calibration, QuantOptions(), changed, merged, None, plan)
    assert cold.loss({}) == pe.loss({}) and cold.margin({}) == pe.margin({})


def test_after_one_sample_changed_the_steps_run_only_that_sample_or_new_models(memo, monkeypatch):
    """The whole mixed precision: with sample 0 (the ranking's) changed, a run on an unchanged sample
    happens only for a model the first calibration did not run (a prefix the new cosines lead to)."""
    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    first = executed(monkeypatch)
    mixed_precision(model, calibration, data[:4], merged, target=0.999)
    before_models = {m for m, _ in first}
    first.clear()
    changed = [shifted(data[0]), *data[1:4]]
    result = mixed_precision(model, calibration, changed, merged, target=0.999)
    new_key = sessions.sample_key(changed[0])
    assert any(s == new_key for _, s in first)
    assert all(s == new_key or m not in before_models for m, s in first)
    assert len(first) < 0.5 * len(runs.RUNS)
    monkeypatch.setattr(runs, "RUNS", RunMemo(0))
    assert without_seconds(mixed_precision(model, calibration, changed, merged, target=0.999).to_json()) == \
        without_seconds(result.to_json())


def test_a_moved_threshold_misses_the_runs_that_read_it_and_the_others_are_exact(memo, monkeypatch):
    """The ptq model bakes every threshold: all its runs miss. A switchable run reads only the constants
    of the switches it turns on (`gated_digests`): moving ra's threshold misses the all-quantized run,
    conv_a's activation run (ra is its output) and conv_b's weight run (its int32 bias is at s_in · s_w,
    s_in ra's scale); the ranking is the one computed from nothing, number for number."""
    model = outlier_chain()
    data = samples(model, 3)
    merged, calibration, plan = calibrate(model, data)
    PlanEvaluator(model, calibration, QuantOptions(), data, merged, None, plan).loss({})
    old = {r.node: r for r in analyse(model, plan, data[:1], merged).rows}
    moved = Calibration({**calibration, "ra": ActQuant("ra", float(calibration["ra"].threshold) * 0.9)})
    moved_plan = make_plan(model, moved)
    ran = executed(monkeypatch)
    PlanEvaluator(model, moved, QuantOptions(), data, merged, None, moved_plan).loss({})
    assert len(ran) == 3  # every sample
    ran.clear()
    sens = analyse(model, moved_plan, data[:1], merged)
    assert len(ran) == 3
    new = {r.node: r for r in sens.rows}
    assert new["conv_a+relu_a"].activation != old["conv_a+relu_a"].activation
    assert new["conv_b+relu_b"].weight != old["conv_b+relu_b"].weight
    assert new["conv_c+relu_c"].activation == old["conv_c+relu_c"].activation  # found, not run
    ran.clear()
    analyse(model, moved_plan, data[:1], merged)
    assert ran == []
    monkeypatch.setattr(runs, "RUNS", RunMemo(0))
    cold = analyse(model, moved_plan, data[:1], merged)
    assert [dataclasses.astuple(r) for r in cold.rows] == [dataclasses.astuple(r) for r in sens.rows]
    assert cold.output_cosine == sens.output_cosine


def test_the_gated_constants_are_each_switchs_scales_weights_and_bias_codes():
    from engine.accuracy.switchable import gated_constants

    model = outlier_chain()
    _, _, plan = calibrate(model, samples(model, 2))
    sw = build_switchable(model, plan)
    gated = gated_constants(sw.model, {s.input8 for s in sw.switches})
    by_switch: dict[str, set[str]] = {}
    for name, owners in gated.items():
        assert len(owners) == 1
        by_switch.setdefault(next(iter(owners)), set()).add(name)
    ra = next(s for s in sw.switches if s.target == "ra")
    assert by_switch[ra.input8] == {"ra_HzCalibration_scale", "ra_HzCalibration_zero_point"}
    wb = next(s for s in sw.switches if s.target == "Wb")
    assert len(by_switch[wb.input8]) == 2  # the fake-quantized weight and the bias codes at s_in · s_w
    floats = {t.name for t in model.graph.initializer}
    assert not floats & set(gated)  # the float weights and biases are read when a switch is off


def test_improve_in_a_warm_process_equals_a_cold_one(memo, monkeypatch):
    model = outlier_chain()
    data = samples(model, 6)
    merged, calibration, _ = calibrate(model, data)
    settings = AccuracySettings(target=0.999, sensitivity=3, check_data=False)
    first = improve(model, calibration, QuantOptions(), merged, data, [], settings)
    warm = improve(model, calibration, QuantOptions(), merged, data, [], settings)
    monkeypatch.setattr(runs, "RUNS", RunMemo(0))
    cold = improve(model, calibration, QuantOptions(), merged, data, [], settings)
    assert first.mixed.moves and memo.hits > 0
    for other in (warm, cold):
        assert without_seconds(other.to_json()) == without_seconds(first.to_json())
        assert without_seconds(other.sensitivity.to_json()) == without_seconds(first.sensitivity.to_json())


def test_the_memo_is_bounded_and_keeps_the_most_recently_used():
    memo = RunMemo(3)
    for k in range(3):
        memo.put(f"k{k}", (float(k),))
    assert memo.get("k0") == (0.0,)  # now the most recent
    memo.put("k3", (3.0,))
    memo.put("k4", (4.0,))
    assert len(memo) == 3 and memo.get("k1") is None and memo.get("k2") is None
    assert memo.get("k0") == (0.0,) and memo.get("k4") == (4.0,)
    assert (memo.hits, memo.misses) == (3, 2)
    off = RunMemo(0)  # disabled: every run executed
    off.put("k", (1.0,))
    assert len(off) == 0 and off.get("k") is None


def test_a_full_memo_takes_a_few_megabytes():
    """ENTRIES runs of two output cosines each (det's ranking and ptq runs), under their real keys."""
    import tracemalloc

    tracemalloc.start()
    try:
        memo = RunMemo()
        for i in range(runs.ENTRIES + 100):
            memo.put(runs.run_key(f"model{i}", "sample", ["y", "z"], "float"), (i / 3.0, i / 7.0))
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(memo) == runs.ENTRIES and used < 4 << 20


def test_the_key_is_every_input_of_a_run():
    base = dict(model="m", sample="s", outputs=["y"], reference="f", setting="a=1")
    key = runs.run_key(**base)
    assert key == runs.run_key(**base)
    for name, other in (("model", "m2"), ("sample", "s2"), ("outputs", ["y", "z"]), ("reference", "f2"),
                        ("setting", "a=0")):
        assert runs.run_key(**{**base, name: other}) != key
    assert runs.run_key(**base, kind="output and exposed tensor cosines") != key


def test_float_references_are_computed_per_sample_when_asked_for(memo, monkeypatch):
    model = outlier_chain()
    data = samples(model, 4)
    float_runs: list[int] = []
    real = sessions.run_outputs
    monkeypatch.setattr(sessions, "run_outputs", lambda *a, **k: float_runs.append(1) or real(*a, **k))
    refs = sessions.References(model, data)
    third = refs[2]
    assert len(float_runs) == 1
    assert refs.some([2, 0])[0] is third and len(float_runs) == 2
    every = refs.values
    assert len(float_runs) == 4 and every[2] is third and every[0] is refs[0]
    with pytest.raises(IndexError):
        refs[4]


def test_a_crops_float_outputs_do_not_replace_the_whole_models(memo, monkeypatch):
    """The ranking's centre crops run another (smaller) model: its float outputs are kept apart, so the
    whole model's outputs are still there for the next calibration's data checks and ptq runs."""
    from engine.accuracy.sensitivity import crop_references

    model, other = outlier_chain(), outlier_chain(seed=1)
    data = samples(model, 3)
    monkeypatch.setattr(sessions, "CROP_OUTPUTS", sessions.FloatOutputs())
    assert len(sessions.References(model, data).values) == 3
    float_runs: list[int] = []
    real = sessions.run_outputs
    monkeypatch.setattr(sessions, "run_outputs", lambda *a, **k: float_runs.append(1) or real(*a, **k))
    assert len(crop_references(other, data[:1]).values) == 1
    assert len(float_runs) == 1
    assert len(sessions.References(model, data).values) == 3
    assert len(float_runs) == 1  # still kept


def test_the_setting_key_names_exactly_the_switch_inputs_the_feeds_turn_on():
    model = outlier_chain()
    _, _, plan = calibrate(model, samples(model, 2))
    sw = build_switchable(model, plan, int16=True)
    settings = [sw.all_on(), sw.all_on(16), Setting(), sw.rows_on([sw.row("conv_b+relu_b")], ("weight",)),
                Setting({"ra": 16, "rb": 8, "not_a_tensor": 8}, {"Wc", "not_a_weight"})]
    keys = set()
    for setting in settings:
        on = sorted(k for k, v in sw.feeds(setting).items() if v)
        assert sorted(sw.inputs_on(setting)) == on
        keys.add(sw.setting_key(setting))
    assert len(keys) == len(settings)
