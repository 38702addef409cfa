"""compiler_parameters resolved per march and model: hb_compile's messages, defaults, what is acted on."""

from __future__ import annotations

import pytest

from engine.compile.params import default_source, resolve
from engine.config.model import CompilerParameters

NV12 = [{"name": "images", "input_type_rt": "nv12"}, {"name": "feat", "input_type_rt": "featuremap"}]


def messages(problems, errors_only=True):
    return [p.message for p in problems if p.is_error or not errors_only]


def test_defaults_follow_the_reference():
    opts, problems = resolve(CompilerParameters(), "nash-e", NV12)
    assert problems == []
    assert (opts.compile_mode, opts.balance_factor, opts.optimize_level, opts.core_num) == ("latency", 100, "O2", 1)
    assert opts.input_source == {"images": "pyramid", "feat": "ddr"}
    assert resolve(CompilerParameters(compile_mode="bandwidth"), "nash-e")[0].balance_factor == 0


def test_balance_needs_its_factor_in_range():
    _, problems = resolve(CompilerParameters(compile_mode="balance"), "bayes-e")
    assert messages(problems) == ["Parameter compile_mode is set to balance, please set balance_factor to use this mode"]
    _, problems = resolve(CompilerParameters(compile_mode="balance", balance_factor=120), "bayes-e")
    assert messages(problems) == ["Invalid balance_factor received: 120, value range is 0-100"]
    opts, problems = resolve(CompilerParameters(compile_mode="balance", balance_factor=30), "bayes-e")
    assert problems == [] and opts.balance_factor == 30


def test_invalid_compile_mode_uses_hb_wording():
    _, problems = resolve(CompilerParameters(compile_mode="fastest"), "nash-e")
    assert messages(problems)[0].startswith("Invalid compile model received. fastest is invalid, it should in list")


@pytest.mark.parametrize("march,cores,ok", [("nash-e", 2, False), ("nash-p", 4, True), ("nash-p", 5, False),
                                            ("bernoulli2", 2, True)])
def test_core_num_per_march(march, cores, ok):
    _, problems = resolve(CompilerParameters(core_num=cores), march)
    assert (messages(problems) == []) == ok
    if not ok:
        assert f"Invalid core_num: {cores}, march {march} supports" in messages(problems)[0]


def test_o3_on_nash_becomes_o2_with_a_warning():
    opts, problems = resolve(CompilerParameters(optimize_level="O3"), "nash-m")
    assert opts.optimize_level == "O2" and messages(problems) == []
    assert "optimize_level O3 is not available on march nash-m" in messages(problems, errors_only=False)[0]
    assert resolve(CompilerParameters(optimize_level="O3"), "bayes-e")[0].optimize_level == "O3"


@pytest.mark.parametrize("value,ok", [(0, True), (999, False), (1000, True), (10_000_000, True), (10_000_001, False)])
def test_max_time_per_fc_range_on_nash(value, ok):
    _, problems = resolve(CompilerParameters(max_time_per_fc=value), "nash-e")
    assert (messages(problems) == []) == ok


def test_input_source_checked_against_the_rt_type():
    opts, problems = resolve(CompilerParameters(input_source={"images": "resizer", "feat": "ddr"}), "bayes-e", NV12)
    assert problems == [] and opts.input_source == {"images": "resizer", "feat": "ddr"}
    _, problems = resolve(CompilerParameters(input_source={"feat": "pyramid"}), "bayes-e", NV12)
    assert messages(problems) == ["Wrong input_source received. input type rt : featuremap does not support "
                                  "input_source pyramid"]
    _, problems = resolve(CompilerParameters(input_source={"nope": "ddr"}), "bayes-e", NV12)
    assert "'nope', which is not a model input" in messages(problems)[0]


def test_jobs_and_advice_must_be_sensible():
    _, problems = resolve(CompilerParameters(jobs=0, advice=-1), "nash-e")
    assert len(messages(problems)) == 2


def test_unknown_march():
    _, problems = resolve(CompilerParameters(), "nash-x")
    assert "The specified march 'nash-x' is invalid" in messages(problems)[0]


@pytest.mark.parametrize("rt,src", [("nv12", "pyramid"), ("gray", "pyramid"), ("rgb", "ddr"), ("featuremap", "ddr")])
def test_default_source(rt, src):
    assert default_source(rt) == src
