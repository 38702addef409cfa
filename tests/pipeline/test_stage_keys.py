"""Stage keys cover what a stage writes into its artefacts, and say truly why a stage re-ran.

An edit to a value a stage stamps into its output (the prefix in the .hbm and the perf report, the
march in the .bc) must re-run that stage, or the published file names the old value; the .hbm's
config digest is that of the compile stage's own slice, so a reused .hbm stays truthful.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from engine.pipeline import Engine
from engine.pipeline.hashing import canonical_json, sha256_json
from engine.pipeline.stage import KeyParts, explain
from engine.runtime.model import load
from engine.stages.compile import READS as COMPILE_READS

CONFIG = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tiny
input_parameters:
  input_name: data
  input_type_train: rgb
  input_layout_train: NCHW
  input_type_rt: rgb
  input_shape: 1x3x8x8
  mean_value: 128
  scale_value: 0.0078125
calibration_parameters:
  cal_data_dir: cal
  calibration_type: max
compiler_parameters:
  compile_mode: latency
"""


def write_samples(root, n=2):
    cal = root / "cal"
    cal.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8).tofile(cal / f"s{i:02d}.rgb")


def run_ok(engine, cfg):
    report = engine.run(cfg)
    assert report.ok, [p.render() for p in report.problems]
    return report


def test_prefix_edit_renames_inside_the_hbm_and_the_perf_report(project):
    write_samples(project.root)
    engine = Engine()
    run_ok(engine, project.config(CONFIG))
    again = run_ok(engine, project.config(CONFIG.replace("output_model_file_prefix: tiny",
                                                         "output_model_file_prefix: renamed")))
    assert again.stage("compile").status == "ran" and again.stage("quantize").status == "reused"
    out = project.root / "model_output"
    manifest = load(out / "renamed.hbm").manifest
    assert manifest["build"]["source"]["name"] == "renamed"
    assert json.loads((out / "renamed.json").read_text())["summary"]["model"] == "renamed"
    assert manifest["build"]["config_sha256"] == sha256_json(again.config.slice(*COMPILE_READS))
    assert manifest["build"]["config_sha256"] != again.config.digest


def test_march_edit_restamps_the_bc(project):
    write_samples(project.root)
    engine = Engine()
    run_ok(engine, project.config(CONFIG))
    again = run_ok(engine, project.config(CONFIG.replace("march: nash-e", "march: nash-m")))
    assert again.stage("quantize").status == "ran" and again.stage("calibrate").status == "reused"
    bc = onnx.load(str(project.root / "model_output" / "tiny_quantized_model.bc"))
    assert {p.key: p.value for p in bc.metadata_props}["hbcompile.march"] == "nash-m"


def test_explain_compares_extra_as_canonical_json():
    """The previous run's parts come back from JSON (lists); the new ones hold tuples."""
    new = KeyParts("optimize", 3, {}, {}, {"parse": "b"}, {"passes": (("fold", 1), ("fuse", 2))})
    old = json.loads(canonical_json({**new.as_json(), "upstream": {"parse": "a"}}))
    assert explain(new, old) == "upstream parse changed"
    changed = json.loads(canonical_json({**new.as_json(), "extra": {"passes": [["fold", 1]]}}))
    assert explain(new, changed) == "implementation changed"


def test_a_model_edit_does_not_claim_the_optimize_passes_changed(project):
    write_samples(project.root)
    engine = Engine()
    cfg = project.config(CONFIG)
    assert engine.run(cfg, until="optimize").ok
    model = onnx.load(str(project.root / "model.onnx"))
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 0.5, w.name))
    onnx.save(model, str(project.root / "model.onnx"))
    again = engine.run(cfg, until="optimize")
    assert again.stage("optimize").reason == "upstream parse changed"
