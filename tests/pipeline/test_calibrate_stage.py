"""calibrate: statistics per sample, reused by content hash; bad data is one clear error."""

from __future__ import annotations

import numpy as np
import onnx

from engine.calibration.memo import read_pack
from engine.pipeline import Engine

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


def write_samples(root, n=6, seed=0):
    cal = root / "cal"
    cal.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8).tofile(cal / f"s{i:02d}.rgb")
    return cal


def test_one_changed_sample_reruns_only_its_forward_pass(project):
    cal = write_samples(project.root)
    cfg = project.config(CONFIG)
    engine = Engine()
    first = engine.run(cfg, until="calibrate")
    assert first.ok, [p.render() for p in first.problems]
    assert first.results["calibrate"]["computed"] == 6
    np.full((1, 3, 8, 8), 7, np.uint8).tofile(cal / "s03.rgb")
    second = engine.run(cfg, until="calibrate")
    run = second.stage("calibrate")
    assert run.status == "ran" and run.reason == "1 of 6 calibration files changed"
    assert second.results["calibrate"]["computed"] == 1 and second.results["calibrate"]["reused"] == 5
    assert second.stage("parse").status == "reused" and second.stage("optimize").status == "reused"


def test_compiler_edit_reuses_calibration(project):
    write_samples(project.root)
    cfg = project.config(CONFIG)
    engine = Engine()
    assert engine.run(cfg, until="ptq").ok
    project.config(CONFIG.replace("compile_mode: latency", "compile_mode: bandwidth"))
    again = engine.run(cfg, until="ptq")
    assert again.ran == ["config"] and set(again.reused) == {"parse", "optimize", "calibrate", "ptq"}


def test_calibrated_model_has_named_fake_quant_pairs(project):
    write_samples(project.root)
    cfg = project.config(CONFIG)
    assert Engine().run(cfg, until="calibrate").ok
    model = onnx.load(str(project.root / "model_output" / "tiny_calibrated_model.onnx"))
    names = {n.name for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert any(n.endswith("_HzCalibration") for n in names)
    assert [o.name for o in model.graph.output] == ["output"]


def test_wrong_size_sample_names_the_file_and_writes_nothing(project):
    cal = write_samples(project.root)
    cfg = project.config(CONFIG)
    assert Engine().run(cfg, until="calibrate").ok
    before = {p.name: p.read_bytes() for p in (project.root / "model_output").iterdir() if p.is_file()}
    np.zeros(100, np.uint8).tofile(cal / "s01.rgb")
    report = Engine().run(cfg, until="calibrate")
    assert not report.ok
    [err] = [p for p in report.problems if p.is_error]
    assert "cannot reshape array of size 100 into shape (1,3,8,8)" in err.message and "s01.rgb" in err.message
    after = {p.name: p.read_bytes() for p in (project.root / "model_output").iterdir() if p.is_file()}
    assert after == before


def test_nan_in_float_sample_is_an_error(project):
    cal = project.root / "cal_f32"
    cal.mkdir()
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    x.tofile(cal / "bad.bin")
    cfg = project.config(CONFIG.replace("cal_data_dir: cal", "cal_data_dir: cal_f32"))
    report = Engine().run(cfg, until="calibrate")
    [err] = [p for p in report.problems if p.is_error]
    assert "bad.bin" in err.message and "NaN" in err.message


def test_statistics_memo_entries_read_back_equal_computed_ones_and_a_corrupt_one_is_recomputed(project):
    """Thresholds from memoised per-sample statistics equal those of a cold run; a torn memo entry
    is computed again instead of failing the run."""
    import json

    cal = write_samples(project.root, n=8)
    cfg = project.config(CONFIG)
    engine = Engine()
    assert engine.run(cfg, until="calibrate").ok
    [pack] = (project.root / "model_output" / ".hb_cache" / "memo" / "sample_stats").rglob("*.hbpack")
    data = bytearray(pack.read_bytes())
    assert len(read_pack(bytes(data))) == 8
    data[-5] ^= 0xFF  # the last sample's entry altered: its checksum fails, the other seven read back
    pack.write_bytes(bytes(data))
    np.full((1, 3, 8, 8), 9, np.uint8).tofile(cal / "s05.rgb")  # the stage runs again
    second = engine.run(cfg, until="calibrate")
    assert second.ok and second.results["calibrate"]["computed"] == 2 and second.results["calibrate"]["reused"] == 6
    def thresholds(working_dir: str) -> dict:
        runs = (project.root / working_dir / ".hb_cache" / "calibrate").glob("*/thresholds.json")
        return json.loads(max(runs, key=lambda p: p.stat().st_mtime_ns).read_text())

    cold_cfg = project.config(CONFIG.replace("working_dir: model_output", "working_dir: cold"), name="cold.yaml")
    assert Engine().run(cold_cfg, until="calibrate").ok
    assert thresholds("cold") == thresholds("model_output")


def _report_sample(project) -> dict:
    entries = (project.root / "model_output" / ".hb_cache" / "calibrate").glob("*/first_sample.npz")
    with np.load(max(entries, key=lambda p: p.stat().st_mtime_ns)) as z:
        return dict(z)


def test_load_reports_on_the_first_calibration_sample(project):
    """`load` with cal_data_dir: the report's sample is the first calibration file, not random pixels."""
    import json

    cal = write_samples(project.root, n=3)
    np.full((1, 3, 8, 8), 5, np.uint8).tofile(cal / "s00.rgb")
    assert Engine().run(project.config(CONFIG), until="calibrate").ok
    found = json.loads(next((project.root / "model_output" / ".hb_cache" / "calibrate").glob("*/thresholds.json"))
                       .read_text())
    (project.root / "thr.json").write_text(json.dumps({t: v["threshold"] for t, v in found.items()}))
    cfg = project.config(CONFIG.replace("calibration_type: max", "calibration_type: load\n  quant_config: thr.json"))
    run = Engine().run(cfg, until="calibrate")
    assert run.ok, [p.render() for p in run.problems]
    assert np.array_equal(_report_sample(project)["data"], np.full((1, 3, 8, 8), 5, np.float32))


def test_skip_reports_on_normal_values_for_a_featuremap_input(project):
    text = (CONFIG.replace("calibration_type: max", "calibration_type: skip")
            .replace("input_type_train: rgb", "input_type_train: featuremap")
            .replace("input_type_rt: rgb", "input_type_rt: featuremap")
            .replace("  mean_value: 128\n  scale_value: 0.0078125\n", "").replace("  cal_data_dir: cal\n", ""))
    run = Engine().run(project.config(text), until="calibrate")
    assert run.ok, [p.render() for p in run.problems]
    x = _report_sample(project)["data"]
    assert x.min() < 0 and abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5
    import json

    found = json.loads(next((project.root / "model_output" / ".hb_cache" / "calibrate").glob("*/thresholds.json"))
                       .read_text())
    assert float(np.abs(x).max()) <= found["data"]["threshold"] < 10  # taken on normal values too, not 0-255


def test_calibration_data_of_tiny_values_quantizes(project):
    """Samples of 1e-38 (below 2048 / FLT_MAX): statistics, thresholds and the ptq model, no crash."""
    cal = project.root / "cal"
    cal.mkdir()
    for i in range(2):
        np.save(cal / f"s{i}.npy", np.full((1, 3, 8, 8), 1e-38 * (i + 1), np.float32))
    text = (CONFIG.replace("input_type_train: rgb", "input_type_train: featuremap")
            .replace("input_type_rt: rgb", "input_type_rt: featuremap")
            .replace("  mean_value: 128\n  scale_value: 0.0078125\n", ""))
    run = Engine().run(project.config(text), until="ptq")
    assert run.ok, [p.render() for p in run.problems]
    assert run.results["calibrate"]["computed"] == 2


def test_memos_are_pruned_with_their_optimize_entry_and_replaced_samples(project):
    """Six model edits, each with one calibration file replaced: the per-sample memo keeps one folder
    per kept optimize entry, and the current folder only the current samples' files."""
    from engine.pipeline.cache import KEEP_PER_STAGE

    cal = write_samples(project.root, n=3)
    cfg = project.config(CONFIG)
    engine = Engine()
    cache = project.root / "model_output" / ".hb_cache"
    for edit in range(6):
        model = onnx.load(str(project.root / "model.onnx"))
        w = next(t for t in model.graph.initializer if len(t.dims) == 4)
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(0.9), w.name))
        onnx.save(model, str(project.root / "model.onnx"))
        np.full((1, 3, 8, 8), edit, np.uint8).tofile(cal / "s01.rgb")
        run = engine.run(cfg, until="calibrate")
        assert run.ok and run.results["calibrate"]["computed"] == 3
    optimize = {p.name[:16] for p in (cache / "optimize").iterdir() if not p.name.startswith(".")}
    folders = sorted((cache / "memo" / "sample_stats").iterdir())
    assert len(optimize) == KEEP_PER_STAGE and {f.name[:16] for f in folders} <= optimize and len(folders) <= len(optimize)
    current = next(f for f in folders if f.name.startswith(run.stage("optimize").key[:16]))
    [pack] = [p for p in current.iterdir() if not p.name.startswith(".")]
    before = read_pack(pack.read_bytes())
    assert len(before) == 3
    (current / "0123.hbstats").write_bytes(b"stale")  # a per-sample file of an older format
    np.full((1, 3, 8, 8), 99, np.uint8).tofile(cal / "s01.rgb")
    again = engine.run(cfg, until="calibrate")
    assert again.ok and again.results["calibrate"]["computed"] == 1
    [pack] = [p for p in current.iterdir()]  # one pack of exactly the current samples
    after = read_pack(pack.read_bytes())
    assert len(after) == 3 and len(set(after) & set(before)) == 2
    assert all(after[d] == before[d] for d in set(after) & set(before))  # reused entries kept as they were


def test_a_cancelled_run_keeps_the_statistics_it_computed(project):
    """The memo pack is written when the stage stops early too: a superseded run (the daemon cancels
    it) leaves its samples for the next."""
    import threading

    write_samples(project.root)
    cfg = project.config(CONFIG)
    cancel = threading.Event()

    def progress(stage: str, message: str, fraction: float | None) -> None:
        if stage == "calibrate" and message.startswith("calibration sample 3/"):
            cancel.set()

    first = Engine().run(cfg, until="calibrate", progress=progress, cancel=cancel)
    assert first.stage("calibrate").status == "cancelled"
    again = Engine().run(cfg, until="calibrate")
    assert again.ok and again.results["calibrate"]["computed"] == 3 and again.results["calibrate"]["reused"] == 3


def test_calibration_type_skip_warns_once(project, caplog):
    """The skip warning came twice in two wordings (the stage and the random-data search both said it)."""
    import logging

    from tests.pipeline.test_stage_cache import PLAIN

    project.model()
    cfg = project.config(PLAIN)
    with caplog.at_level(logging.WARNING):
        assert Engine().run(cfg).ok
    told = [r.getMessage() for r in caplog.records if "calibration_type is skip" in r.getMessage()]
    assert len(told) == 1, told
