"""The pass runner: order as data, repeat until nothing changes, failures in hb_compile's wording."""

from __future__ import annotations

from types import SimpleNamespace

import onnx
import pytest

from engine.passes import (
    OPTIMIZE,
    PassResult,
    Skip,
    fold_constants,
    optimize,
    passes_signature,
    read_groups,
    remove_identity,
)
from engine.problems import StageError
from tests.support.models import assert_same_outputs, count_ops, dropout_identity, residual_block


def _pass(name: str, run) -> SimpleNamespace:
    return SimpleNamespace(NAME=name, VERSION=1, run=run)


def test_signature_lists_every_pass_once_in_order():
    sig = passes_signature()
    assert sig == [(p.NAME, p.VERSION) for p in OPTIMIZE]
    assert len({name for name, _ in sig}) == len(sig) and sig[0] == ("constant_folding", 1)
    assert all(isinstance(v, int) and v >= 1 for _, v in sig)


def test_optimize_works_on_a_copy_and_reports_per_pass():
    model = residual_block()
    before = model.SerializeToString()
    result = optimize(model)
    assert model.SerializeToString() == before
    assert result.results["fold_bn"].changed == 2 and result.results["remove_dead_nodes"].changed == 8
    assert result.iterations == 2  # one round that changes things, one that confirms nothing does
    assert count_ops(result.model) == {"Conv": 2, "Relu": 2, "Add": 1}
    assert {g.type for g in read_groups(result.model)} == {"Conv+Relu", "Conv+Add"}
    assert_same_outputs(model, result.model)


def test_graph_outputs_keep_their_names():
    model = dropout_identity()  # Identity and Dropout right before the output "y"
    result = optimize(model)
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert count_ops(result.model) == {"Conv": 2, "Relu": 2}
    assert_same_outputs(model, result.model)


def test_a_failing_pass_is_one_hb_compile_line_naming_the_passes_before():
    def boom(model):
        raise RuntimeError("kaput\nC++ stack trace ...")

    with pytest.raises(StageError) as err:
        optimize(residual_block(), passes=[fold_constants, remove_identity, _pass("boom", boom)])
    (problem,) = err.value.problems
    assert problem.message == ("There is an error in pass: boom. Error message: kaput "
                               "(passes run before it: constant_folding, remove_identity)")
    assert problem.data["pass"] == "boom" and problem.data["before"] == ["constant_folding", "remove_identity"]


def test_a_pass_that_breaks_the_model_is_caught_by_the_checker():
    def dangle(model):
        model.graph.node[0].input[0] = "nowhere"
        return PassResult(changed=0)

    with pytest.raises(StageError) as err:
        optimize(residual_block(), passes=[_pass("dangle", dangle)])
    assert err.value.problems[0].message.startswith("There is an error in pass: check_model. Error message: ")


def test_rounds_are_bounded_and_skips_come_from_the_last_round():
    rounds = []

    def restless(model):
        rounds.append(1)
        return PassResult(changed=1, skipped=[Skip("n", f"round {len(rounds)}")])

    result = optimize(residual_block(), passes=[_pass("restless", restless)], max_iterations=4)
    assert result.iterations == 4 and len(rounds) == 4
    assert result.results["restless"] == PassResult(4, [Skip("n", "round 4")])


def test_result_model_is_valid_onnx_with_shapes():
    result = optimize(residual_block())
    onnx.checker.check_model(result.model, full_check=True)
    assert {v.name for v in result.model.graph.value_info} >= {"Relu_2_y", "Add_5_y"}


def test_unnamed_nodes_get_names_before_any_pass_addresses_them():
    model = residual_block()
    for node in model.graph.node:
        node.name = ""
    result = optimize(model)
    names = [n.name for n in result.model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert_same_outputs(model, result.model)
