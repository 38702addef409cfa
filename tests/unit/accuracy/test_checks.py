"""Checks before calibration: the float model's confidence tells wrong colour order or double
normalization apart from good data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.accuracy.checks import check_calibration_data, output_entropy
from tests.support.models import finish

SPEC = {"name": "x", "shape": [1, 3, 8, 8], "input_type_train": "rgb", "input_layout_train": "NCHW",
        "mean_value": [127.5], "scale_value": [1 / 127.5]}


def red_detector() -> onnx.ModelProto:
    """(x − 127.5) / 127.5 → mean colour → class 0 when red outweighs blue, else 3 equal classes.
    Trained on red-dominant photos: confident on them, unsure on anything else."""
    w = np.zeros((3, 4), np.float32)
    w[0, 0], w[2, 0] = 8.0, -8.0
    inits = {"mean": np.array(127.5, np.float32), "scale": np.array(1 / 127.5, np.float32), "W": w,
             "B": np.zeros(4, np.float32)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]), helper.make_node("Mul", ["centred", "scale"], ["n"]),
             helper.make_node("GlobalAveragePool", ["n"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])]
    g = helper.make_graph(nodes, "red", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return finish(model)


def red_photos(n: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.empty((1, 3, 8, 8), np.float32)
        x[:, 0] = rng.uniform(170, 255, (8, 8))  # R
        x[:, 1] = rng.uniform(60, 160, (8, 8))
        x[:, 2] = rng.uniform(0, 80, (8, 8))  # B
        out.append({"x": x})
    return out


def suspicious(checks) -> set[str]:
    return {c.variant for c in checks if c.suspicious}


def test_good_data_gives_no_warning():
    checks = check_calibration_data(red_detector(), red_photos(), [SPEC])
    assert {c.variant for c in checks} == {"channels swapped"}  # raw pixels: normalized-twice is not plausible
    assert suspicious(checks) == set()


def test_bgr_files_for_an_rgb_model_are_flagged():
    bgr = [{"x": np.ascontiguousarray(s["x"][:, ::-1])} for s in red_photos()]
    checks = check_calibration_data(red_detector(), bgr, [SPEC])
    assert suspicious(checks) == {"channels swapped"}
    (check,) = checks
    assert check.entropy_variant < 0.1 < 1.0 < check.entropy_given  # ln 3 ≈ 1.10 when unsure
    assert "input_type_train (rgb vs bgr)" in check.message() and "'x'" in check.message()


def test_files_normalized_already_are_flagged():
    normalized = [{"x": (s["x"] - 127.5) / 127.5} for s in red_photos()]
    checks = check_calibration_data(red_detector(), normalized, [SPEC])
    assert "normalized twice" in suspicious(checks)
    assert "without mean / scale" in next(c for c in checks if c.variant == "normalized twice").message()


def test_entropy_reads_distributions_probability_maps_and_logits():
    assert output_entropy(np.array([[1.0, 0.0, 0.0]])) < 1e-5
    np.testing.assert_allclose(output_entropy(np.full((1, 4), 0.25)), np.log(4), rtol=1e-5)
    np.testing.assert_allclose(output_entropy(np.full((1, 1, 4, 4), 0.5)), np.log(2), rtol=1e-5)  # sigmoid map
    logits = np.array([[0.0, 0.0, -2.0, 3.0]])  # outside [0, 1]: read as logits, softmax first
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(output_entropy(logits), -(p * np.log(p)).sum(), rtol=1e-5)
