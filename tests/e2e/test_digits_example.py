"""The bundled example end to end through the CLI: every artefact, the table, accuracy kept."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "digits"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("digits")
    for name in ("digits.onnx", "digits.hb.yaml", "heldout.npz"):
        shutil.copy(EXAMPLE / name, work / name)
    shutil.copytree(EXAMPLE / "calibration_data", work / "calibration_data")
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "-c", "digits.hb.yaml"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work / "model_output", proc.stdout


def test_artefacts_named_like_hb_compile(compiled):
    out, _ = compiled
    names = {p.name for p in out.iterdir() if p.is_file()}
    for suffix in ("_original_float_model.onnx", "_optimized_float_model.onnx", "_calibrated_model.onnx",
                   "_ptq_model.onnx", "_quantized_model.bc", "_node_info.csv", "_quant_info.json",
                   "_advice.json", ".hbm", ".json", ".html"):
        assert f"digits{suffix}" in names
    assert "hb_compile.log" in names


def test_console_and_log_carry_the_tables(compiled):
    out, stdout = compiled
    assert stdout.splitlines()[0] == "Start hb_compile..."
    assert stdout.rstrip().splitlines()[-1] == "The hb_compile completes running"
    header = "Node  NodeType  ON  Threshold  Calibrated Cosine  Quantized Cosine  Output Data Type"
    for text in (stdout, (out / "hb_compile.log").read_text()):
        squeezed = " ".join(text.split())
        assert " ".join(header.split()) in squeezed
        assert "TensorName Calibrated Cosine Quantized Cosine" in squeezed


def test_node_info_csv_rows(compiled):
    out, _ = compiled
    rows = list(csv.DictReader((out / "digits_node_info.csv").open()))
    assert list(rows[0]) == ["Node", "NodeType", "ON", "Threshold", "Calibrated Cosine", "Quantized Cosine",
                             "Output Data Type"]
    types = {r["NodeType"] for r in rows}
    assert {"Conv+Relu", "Conv+Add", "HardSwish"} <= types
    assert all(float(r["Quantized Cosine"]) > 0.99 for r in rows)
    assert rows[-1]["Output Data Type"] in ("si32", "si8")


def test_hbm_equals_bc_bit_for_bit(compiled):
    from engine.runtime import load

    out, _ = compiled
    bc, hbm = load(out / "digits_quantized_model.bc"), load(out / "digits.hbm")
    images = np.load(EXAMPLE / "heldout.npz")["images"][:20]
    for x in images:
        a, b = bc.run({"input": x[None]}), hbm.run({"input": x[None]})
        assert set(a) == set(b) == {"logits"} and all(np.array_equal(a[k], b[k]) for k in a)


def test_integer_model_keeps_top1(compiled):
    out, _ = compiled
    data = np.load(EXAMPLE / "heldout.npz")
    images, labels = data["images"], data["labels"]
    fl = ort.InferenceSession(str(out / "digits_original_float_model.onnx"), providers=["CPUExecutionProvider"])
    bc = ort.InferenceSession(str(out / "digits_quantized_model.bc"), providers=["CPUExecutionProvider"])
    f_pred = np.array([fl.run(None, {"input": x[None].astype(np.float32)})[0].argmax() for x in images])
    q_pred = np.array([bc.run(None, {"input": x[None]})[0].argmax() for x in images])  # uint8: the camera's view
    f_acc, q_acc = (f_pred == labels).mean(), (q_pred == labels).mean()
    assert f_acc >= 0.99
    assert q_acc >= f_acc - 0.005
