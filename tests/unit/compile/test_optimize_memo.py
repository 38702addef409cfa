"""O2's kept check answers (issue #8): a calibration change moves a few thresholds, and the rewrites of the
nodes whose constants did not move are not checked in onnxruntime again. Each answer is keyed by everything
it is made of (the check programs' bytes and inputs, or the conv's own constants); a key that drops a part
would hand one conv's rewrite to another conv's constants without any error — these tests are the ones
that would catch it. Warm (the memo filled by earlier programs) must equal cold (the memo empty)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import engine.compile.optimize as optimize
import engine.runtime.session as session_module
from engine.compile.optimize import optimize_program
from tests.unit.test_o2_divided_requantization import narrow_program, run, tail


@pytest.fixture
def cold():
    """An empty check memo before and after the test."""
    optimize._check_memo.clear()
    optimize._table_memo.clear()
    yield optimize._check_memo
    optimize._check_memo.clear()
    optimize._table_memo.clear()


def with_constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """A copy of `model` whose initializer `name` holds `value` (a threshold that moved)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    t = next(t for t in out.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value, numpy_helper.to_array(t).dtype), name))
    return out


def sessions_opened(monkeypatch) -> list[int]:
    count: list[int] = []
    real = session_module.open_session

    def counted(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "open_session", counted)
    return count


def test_a_moved_output_scale_gets_its_own_rewrite_not_the_kept_one(cold):
    """Two narrow-conv programs alike in every name and node, the conv's output scale moved (a
    threshold): after the first fills the memo, the second's O2 program is the one a cold optimizer
    writes for it — and not the first's (another divisor, another multiplier)."""
    a = narrow_program(np.random.default_rng(7).uniform(1e-3, 4e-3, 8), relu=True)
    b = with_constant(a, "ys", np.float32(0.0047))
    cold_b = optimize_program(b, "O2").program.SerializeToString()
    cold.clear()
    warm_a = optimize_program(a, "O2")
    warm_b = optimize_program(b, "O2")
    assert len(cold) > 0 and warm_a.rewrites["narrow_conv_in_float"] == warm_b.rewrites["narrow_conv_in_float"] == 1
    assert warm_b.program.SerializeToString() == cold_b
    divisors = [numpy_helper.to_array(next(t for t in r.program.graph.initializer if t.name == "conv_divisor"))
                for r in (warm_a, warm_b)]
    assert divisors[0].tobytes() != divisors[1].tobytes()


def test_the_same_program_again_runs_only_the_whole_program_check(cold, monkeypatch):
    """Nothing moved: every rewrite's check is answered from the memo; the whole-program check against
    O0 (the safety net) still runs its two sessions."""
    program = narrow_program(np.random.default_rng(3).uniform(1e-3, 4e-3, 6))
    first = optimize_program(program, "O2")
    opened = sessions_opened(monkeypatch)
    again = optimize_program(program, "O2")
    assert again.checked and len(opened) == 2  # bit_identical's O0 and O2 sessions, nothing else
    assert again.program.SerializeToString() == first.program.SerializeToString()


def test_a_kept_answer_is_not_given_to_a_replacement_with_other_constants(cold):
    """`_same_bits` on a correct replacement (kept: True), then on the same nodes with one replacement
    constant a hair off: the check runs again and refuses it."""
    multiplier = np.random.default_rng(1).uniform(1.5e-3, 8e-3, 4).astype(np.float32)
    nodes, constants = tail(multiplier, np.uint8(128))
    found = optimize._divided_requantization(nodes, constants, multiplier, np.uint8(128), np.full(4, 50_000), "t")
    assert found is not None
    quantize, tensors = found
    acc = [np.tile(np.arange(-50_000, 50_001, 7, dtype=np.float32), (1, 4, 1))]
    inits = {t.name: t for t in constants}
    assert optimize._same_bits(nodes, quantize, acc, ["y"], inits, tensors)
    off = [numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.01), t.name) if t.name == "t_divisor"
           else t for t in tensors]
    assert not optimize._same_bits(nodes, quantize, acc, ["y"], inits, off)


def test_a_kept_answer_is_not_given_to_other_inputs(cold):
    """The inputs are part of the key: the plain reciprocal 1/M of a PP-OCR cls multiplier gives the long
    form's code on accumulators away from its bad tie (kept: True), and not on 84 881 (checked again: False)."""
    multiplier = np.array([0.0016316962], np.float32)
    nodes, constants = tail(multiplier, np.uint8(0))
    reciprocal = [onnx.helper.make_node("QuantizeLinear", ["acc", "d", "dz"], ["y"], name="t", axis=1)]
    divisor = [numpy_helper.from_array((np.float32(1) / multiplier).astype(np.float32), "d"),
               numpy_helper.from_array(np.array([0], np.uint8), "dz")]
    inits = {t.name: t for t in constants}
    away = [np.array([[[0.0, 1000.0, 84_880.0, 84_882.0]]], np.float32)]
    at_the_tie = [np.array([[[0.0, 1000.0, 84_880.0, 84_881.0]]], np.float32)]
    assert run(nodes, constants, away[0]).tobytes() == run(reciprocal, divisor, away[0]).tobytes()
    assert run(nodes, constants, at_the_tie[0]).tobytes() != run(reciprocal, divisor, at_the_tie[0]).tobytes()
    assert optimize._same_bits(nodes, reciprocal, away, ["y"], inits, divisor)
    assert not optimize._same_bits(nodes, reciprocal, at_the_tie, ["y"], inits, divisor)


def test_the_divisor_search_answers_each_multiplier_for_itself(cold):
    """`_divided_requantization` kept for multipliers M, then asked for M' under the same names: the
    answer is a cold search's for M', not M's divisor."""
    rng = np.random.default_rng(2)
    m1 = rng.uniform(1.5e-3, 8e-3, 5).astype(np.float32)
    m2 = (m1 * np.float32(1.37)).astype(np.float32)
    bound = np.full(5, 80_000)
    z = np.uint8(128)

    def search(m):
        nodes, constants = tail(m, z)
        found = optimize._divided_requantization(nodes, constants, m, z, bound, "t")
        assert found is not None
        return numpy_helper.to_array(next(t for t in found[1] if t.name == "t_divisor"))

    cold_m2 = search(m2)
    cold.clear()
    warm_m1, warm_m2 = search(m1), search(m2)
    assert warm_m2.tobytes() == cold_m2.tobytes() and warm_m1.tobytes() != warm_m2.tobytes()
    again = search(m1)  # from the memo: fresh tensors with the same bytes
    assert again.tobytes() == warm_m1.tobytes()


def test_the_bound_is_part_of_the_divisor_key(cold):
    """The same multiplier, a bound that reaches a tie no divisor fits: refused, even after a kept answer
    for the smaller bound (the PP-OCR cls channel of test_o2_divided_requantization)."""
    multiplier = np.array([0.0016316962], np.float32)
    nodes, constants = tail(multiplier, np.uint8(0))
    assert optimize._divided_requantization(nodes, constants, multiplier, np.uint8(0), np.array([80_000]), "t")
    assert optimize._divided_requantization(nodes, constants, multiplier, np.uint8(0), np.array([300_000]), "t") \
        is None


def test_digests_tell_apart_what_the_bytes_alone_would_not():
    """dtype, shape and list boundaries are part of a digest: the same bytes under another reading are
    another key."""
    d = optimize._digest
    x = np.arange(8, dtype=np.uint8)
    assert d([x]) != d([x.view(np.int8)]) != d([x.reshape(2, 4)])
    assert d([x.reshape(2, 4)]) != d([x.reshape(4, 2)])
    assert d(["ab", "c"]) != d(["a", "bc"]) and d([[1], 2]) != d([1, [2]])
    assert d([1, None]) != d([1, "None"])
    with pytest.raises(TypeError):
        d([object()])


def test_a_table_dequantized_at_a_moved_scale_is_its_own(cold):
    """The dequantized table is kept by the DequantizeLinear program (scale, zero point) and the codes: a
    moved output scale (a threshold) under the same names gets its own float table, as a cold run writes."""
    from tests.unit.test_o2_dequantized_tables import table_program

    a = table_program()
    b = with_constant(a, "ts", np.float32(0.000977))
    cold_b = optimize_program(b, "O2").program.SerializeToString()
    cold.clear()
    optimize._table_memo.clear()
    warm_a, warm_b = optimize_program(a, "O2"), optimize_program(b, "O2")
    assert warm_a.rewrites["dequantized_tables"] == warm_b.rewrites["dequantized_tables"] == 1
    assert not warm_b.fallback and warm_b.program.SerializeToString() == cold_b
    tables = [next(t for t in r.program.graph.initializer if t.name.endswith("_dequantized")) for r in (warm_a, warm_b)]
    assert tables[0].raw_data != tables[1].raw_data
