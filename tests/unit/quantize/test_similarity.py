"""engine.similarity: cosine edge cases, the node table with fused names, output distances."""

from __future__ import annotations

import numpy as np
import pytest

from engine.quantize.calibrated import build_calibrated_model
from engine.quantize.ptq import build_ptq_model
from engine.similarity import compare, cosine, distances, node_similarity, output_similarity, run_model
from tests.support.models import Builder, random_inputs
from tests.unit.quantize.quant_support import optimized, plan_for


def test_cosine_edge_cases():
    a = np.array([3.0, -4.0], np.float32)
    assert cosine(a, a) == pytest.approx(1.0, abs=1e-15)
    assert cosine(a, -a) == pytest.approx(-1.0, abs=1e-15)
    assert cosine(np.zeros(5), np.zeros(5)) == 1.0
    assert cosine(np.zeros(2), a) == 0.0 and cosine(a, np.zeros(2)) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="different sizes"):
        cosine(np.zeros(3), np.zeros(4))


def test_cosine_is_computed_in_float64():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(1 << 18) * 1e3).astype(np.float32)
    b = a.copy()
    b[0] += np.float32(1.0)
    x, y = a.astype(np.float64), b.astype(np.float64)
    exact = float(x @ y / np.sqrt((x @ x) * (y @ y)))
    assert cosine(a, b) == pytest.approx(exact, abs=1e-15) and cosine(a, b) < 1.0


def test_cosine_survives_values_whose_norm_overflows():
    a = np.array([1e200, 1e200, -1e200])
    assert cosine(a, a) == pytest.approx(1.0)


def test_distances_are_mean_abs_rms_and_max():
    row = distances(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.5, 2.0, 4.0]), "y")
    assert (row.tensor, row.l1, row.chebyshev) == ("y", 0.375, 1.0)
    assert row.l2 == pytest.approx(np.sqrt((0.25 + 1.0) / 4))


def residual():
    """x → Conv_0 → Relu_1 → Conv_2 → Add_3(+x) → Relu_4 → Erf_5 (CPU) → y."""
    b = Builder("residual")
    x = b.input("x", [1, 4, 6, 6])
    y = b.conv(b.op("Relu", [b.conv(x, 4, 4)]), 4, 4)
    b.output(b.op("Erf", [b.op("Relu", [b.op("Add", [y, x])])], out="y"))
    return optimized(b.build())


def test_identical_models_have_cosine_one_everywhere():
    model = residual()
    plan = plan_for(model)
    rows = node_similarity(model, model, random_inputs(model), plan)
    assert [r.calibrated_cosine for r in rows] == [1.0] * len(rows)
    out = output_similarity(model, model, random_inputs(model))
    assert [(o.tensor, o.cosine, o.l1, o.l2, o.chebyshev) for o in out] == [("y", 1.0, 0.0, 0.0, 0.0)]


def test_the_node_table_shows_fusion_groups_as_one_row():
    model = residual()
    plan = plan_for(model)
    cal = build_calibrated_model(model, plan)
    result = compare(model, cal, random_inputs(model, 3), plan)
    table = [(r.node, r.node_type, r.on, r.output_dtype, r.tensor) for r in result.nodes]
    assert table == [("Conv_0+Relu_1", "Conv+Relu", "BPU", "si8", "Relu_1_y"),
                     ("Conv_2+Add_3", "Conv+Add", "BPU", "si8", "Add_3_y"),
                     ("Relu_4", "Relu", "BPU", "si8", "Relu_4_y"),
                     ("Erf_5", "Erf", "CPU", "f32", "y")]
    first = result.nodes[0]
    assert first.threshold == pytest.approx(plan.calibrated_acts["Relu_1_y"].threshold)
    assert first.nodes == ("Conv_0", "Relu_1") and first.quantized_cosine is None
    assert result.nodes[-1].threshold is None  # CPU: hb prints --
    assert all(0.99 < r.calibrated_cosine < 1.0 for r in result.nodes)
    # the node's cosine is the fake-quantized value's: recompute one from the two models directly
    sample = random_inputs(model, 3)
    ref = run_model(model, sample, ["Add_3_y"])
    got = run_model(cal, sample, ["Add_3_y_HzCalibration_output"])
    assert result.nodes[1].calibrated_cosine == cosine(ref["Add_3_y"], got["Add_3_y_HzCalibration_output"])
    assert result.outputs[0].tensor == "y" and result.outputs[0].cosine == result.nodes[-1].calibrated_cosine


def test_a_ptq_model_compares_like_a_calibrated_one():
    model = residual()
    plan = plan_for(model)
    rows = node_similarity(model, build_ptq_model(model, plan), random_inputs(model), plan)
    assert len(rows) == 4 and all(r.calibrated_cosine > 0.99 for r in rows)


def test_cosine_matches_float64_dot_on_large_tensors_without_blas(monkeypatch):
    """Slice sums equal one float64 dot product to 1e-12, identical tensors give exactly 1.0, and
    no BLAS call is made (OpenBLAS's threaded ddot fights onnxruntime for the cores)."""
    rng = np.random.default_rng(3)
    cases = [(rng.standard_normal((1, 1, 640, 640)).astype(np.float32), 0.1),
             (rng.standard_normal((1, 40, 6625)).astype(np.float32) * 30, 3.0),
             (rng.integers(-128, 128, (1, 8, 99, 101)).astype(np.int8), 20.0)]
    expected = []
    for a, noise in cases:
        b = (a.astype(np.float64) + noise * rng.standard_normal(a.shape)).astype(a.dtype)
        x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        expected.append((a, b, float(x @ y / np.sqrt((x @ x) * (y @ y)))))

    def no_blas(*args, **kwargs):
        raise AssertionError("cosine called BLAS")

    for name in ("dot", "vdot", "inner", "matmul"):
        monkeypatch.setattr(np, name, no_blas)
    for a, b, exact in expected:
        assert abs(cosine(a, b) - exact) < 1e-12 and exact < 0.9999
        assert cosine(a, a) == 1.0 and cosine(b, a) == cosine(a, b)


def test_cosine_reads_float64_in_place_and_never_writes_its_inputs():
    """float64 slices are read without a copy; the overflow path scales copies, not the caller's arrays."""
    from engine.similarity import _flat, cosine

    rng = np.random.default_rng(7)
    big = rng.uniform(-1, 1, 70_000) * 1e300  # x·x overflows: the scaled path
    kept = big.copy()
    assert cosine(big, big * 0.5) == 1.0 and np.array_equal(big, kept)
    a32, b64 = rng.standard_normal(40_000).astype(np.float32), rng.integers(-9, 9, 30_000)
    joined = np.concatenate([a32.astype(np.float64), b64.astype(np.float64)])
    other = rng.standard_normal(70_000)
    assert cosine(_flat([a32, b64]), other) == cosine(joined, other)  # the same sums, bit for bit
    assert _flat([a32]).base is a32  # one tensor: a view


def test_a_reference_sums_each_rows_x_squared_once_and_gives_cosines_bit_for_bit():
    """row_cosine with a Reference equals cosine of the (joined) tensors exactly, and a second
    comparison reads x·x from the Reference instead of summing it again."""
    from engine.similarity import Reference, _flat, row_cosine

    rng = np.random.default_rng(11)
    ref = Reference({"a": rng.standard_normal((1, 8, 70, 90)).astype(np.float32),
                     "b": rng.standard_normal((1, 3, 50)).astype(np.float32)})
    for names in (("a",), ("a", "b")):
        joined = _flat([ref[n] for n in names])
        first = joined + rng.standard_normal(joined.size).astype(np.float32) * 0.3
        second = joined + rng.standard_normal(joined.size).astype(np.float32) * 0.05
        assert row_cosine(ref, names, first) == cosine(joined, first)
        x = joined.astype(np.float64)
        assert ref.squares[names] == pytest.approx(float(x @ x), rel=1e-12)
        assert row_cosine(ref, names, second) == cosine(joined, second)
        ref.squares[names] *= 4.0  # a kept x·x is what the second comparison reads: the cosine halves
        assert row_cosine(ref, names, second) == pytest.approx(cosine(joined, second) / 2, rel=1e-12)
    plain = {"a": ref["a"]}  # a plain mapping: nothing kept, the same number
    other = ref["a"] * 0.5 + 1.0
    assert row_cosine(plain, ("a",), other) == cosine(ref["a"], other)


def test_a_kept_x_squared_that_overflowed_still_gives_the_scaled_cosine():
    from engine.similarity import Reference, row_cosine

    big = np.array([1e200, 1e200, -1e200, 3e199])
    ref = Reference({"t": big})
    other = big * 0.5 + 1e199
    expected = cosine(big, other)
    assert row_cosine(ref, ("t",), other) == expected and not np.isfinite(ref.squares[("t",)])
    assert row_cosine(ref, ("t",), other) == expected and 0.9 < expected < 1.0
    zeros = Reference({"z": np.zeros(4)})
    assert row_cosine(zeros, ("z",), np.zeros(4)) == 1.0 and row_cosine(zeros, ("z",), big) == 0.0


def test_compare_and_with_quantized_give_the_same_rows_with_a_reference_or_a_plain_dict():
    from engine.similarity import Reference, compared_tensors, with_quantized

    model = residual()
    plan = plan_for(model)
    cal = build_calibrated_model(model, plan)
    sample = random_inputs(model, 4)
    values = run_model(model, sample, compared_tensors(model, plan))
    reference = Reference(values)
    plain = compare(model, cal, sample, plan, dict(values))
    kept = compare(model, cal, sample, plan, reference)
    assert kept == plain and reference.squares
    noisy = {t: v + np.float32(0.01) for t, v in values.items()}
    outputs = {o.tensor: noisy[o.tensor] for o in plain.outputs}
    filled = with_quantized(kept, reference, noisy, outputs)
    assert filled == with_quantized(plain, dict(values), noisy, outputs)
    assert all(r.quantized_cosine is not None and r.quantized_cosine < 1.0 for r in filled.nodes)
