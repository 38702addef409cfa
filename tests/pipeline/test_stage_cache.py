"""Stage keys decide what re-runs: identical runs reuse, comments change nothing, slices matter."""

from __future__ import annotations

import json

import onnx

from engine.pipeline import Engine
from engine.pipeline.stage import KeyParts, explain

PLAIN = """\
model_parameters:
  onnx_model: model.onnx
  march: nash-e
  working_dir: model_output
  output_model_file_prefix: tiny
input_parameters:
  input_type_train: featuremap
  input_type_rt: featuremap
  input_shape: 1x3x8x8
calibration_parameters:
  calibration_type: skip
compiler_parameters:
  compile_mode: latency
"""


def statuses(report) -> dict[str, str]:
    return {s.name: s.status for s in report.stages}


def test_first_run_writes_original_model_with_metadata(project):
    cfg = project.config(PLAIN)
    report = Engine().run(cfg, until="parse")
    assert report.ok, [p.render() for p in report.problems]
    path = project.root / "model_output" / "tiny_original_float_model.onnx"
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["hbcompile.stage"] == "original_float"
    assert json.loads(meta["hbcompile.inputs"])[0]["shape"] == [1, 3, 8, 8]
    assert [n.name for n in model.graph.node] == ["Conv_0", "BatchNormalization_1", "Relu_2", "GlobalAveragePool_3"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 8, 8]


def test_identical_run_reuses_and_comment_changes_nothing(project):
    cfg = project.config(PLAIN)
    engine = Engine()
    assert statuses(engine.run(cfg, until="parse"))["parse"] == "ran"
    assert statuses(engine.run(cfg, until="parse"))["parse"] == "reused"
    project.config("# a comment\n" + PLAIN.replace("march: nash-e", "march: nash-e   # S100"))
    assert statuses(engine.run(cfg, until="parse"))["parse"] == "reused"
    # a compiler_parameters edit is outside parse's slice
    project.config(PLAIN.replace("compile_mode: latency", "compile_mode: bandwidth"))
    assert statuses(Engine().run(cfg, until="parse"))["parse"] == "reused"


def test_input_shape_change_reruns_parse_and_says_why(project):
    from tests.conftest import conv_relu_model

    project.model(conv_relu_model(dynamic_batch=True))
    cfg = project.config(PLAIN)
    engine = Engine()
    engine.run(cfg, until="parse")
    project.config(PLAIN.replace("1x3x8x8", "2x3x8x8"))
    report = engine.run(cfg, until="parse")
    assert report.ok
    run = report.stage("parse")
    assert run.status == "ran" and "input_parameters.input_shape" in run.reason


def test_model_file_change_is_detected_by_content(project):
    from tests.conftest import conv_relu_model

    cfg = project.config(PLAIN)
    engine = Engine()
    engine.run(cfg, until="parse")
    project.model(conv_relu_model(seed=1))
    report = engine.run(cfg, until="parse")
    assert report.stage("parse").status == "ran"
    assert "1 of 1 input files changed" in report.stage("parse").reason


def test_failed_run_keeps_previous_artefacts(project):
    cfg = project.config(PLAIN)
    assert Engine().run(cfg, until="parse").ok
    out = project.root / "model_output" / "tiny_original_float_model.onnx"
    before = out.read_bytes()
    (project.root / "model.onnx").write_bytes(b"garbage")
    report = Engine().run(cfg, until="parse")
    assert not report.ok and report.stage("parse").status == "failed"
    assert out.read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")
                and p.name != ".hb_cache"], "no temp files left behind"


def test_corrupt_cache_entry_is_a_miss(project):
    cfg = project.config(PLAIN)
    engine = Engine()
    report = engine.run(cfg, until="parse")
    entry = project.root / "model_output" / ".hb_cache" / "parse" / report.stage("parse").key
    (entry / "model.onnx").unlink()
    again = engine.run(cfg, until="parse")
    assert again.ok and again.stage("parse").status == "ran"


def test_key_is_pinned():
    """A golden key: bump the stage version when this changes on purpose."""
    parts = KeyParts("parse", 1, {"input_parameters.input_shape": "1x3x8x8"}, {"m.onnx": "ab"}, {}, {})
    assert parts.key == "ed27af6ebc1cc4cc24b0e9d20256b69cffa889ffc75a27cbeb898744c537dc50"
    same = KeyParts("parse", 1, {"input_parameters.input_shape": "1x3x8x8"}, {"m.onnx": "ab"}, {}, {})
    assert parts.key == same.key
    assert KeyParts("parse", 2, parts.slice, parts.files, {}, {}).key != parts.key


def test_explain_counts_changed_calibration_files():
    old = KeyParts("calibrate", 1, {}, {f"f{i}": "x" for i in range(32)}, {"optimize": "k"}, {}).as_json()
    files = {f"f{i}": "x" for i in range(32)} | {"f3": "y", "f7": "z"}
    new = KeyParts("calibrate", 1, {}, files, {"optimize": "k"}, {})
    assert explain(new, old) == "2 of 32 calibration files changed"


def test_commit_keeps_an_entry_another_process_committed_meanwhile(tmp_path):
    """Two processes computing one key: the second commit finds a complete entry, keeps it and
    discards its own folder instead of failing on a non-empty destination."""
    from engine.pipeline.cache import StageCache

    cache = StageCache(tmp_path)
    theirs, ours = cache.new_temp("parse"), cache.new_temp("parse")
    (theirs / "model.onnx").write_text("theirs")
    (ours / "model.onnx").write_text("ours")
    first = cache.commit("parse", "k" * 64, theirs, {"by": "them"})
    second = cache.commit("parse", "k" * 64, ours, {"by": "us"})
    assert first == second and (second / "model.onnx").read_text() == "theirs"
    assert cache.result(second) == {"by": "them"} and not ours.exists()
    assert cache.lookup("parse", "k" * 64) == second


def test_commit_replaces_a_torn_entry(tmp_path):
    from engine.pipeline.cache import StageCache

    cache = StageCache(tmp_path)
    torn = cache.entry("parse", "t" * 64)
    torn.mkdir(parents=True)
    (torn / "model.onnx").write_text("half")  # no meta.json: never completed
    ours = cache.new_temp("parse")
    (ours / "model.onnx").write_text("ours")
    dest = cache.commit("parse", "t" * 64, ours, None)
    assert (dest / "model.onnx").read_text() == "ours" and cache.lookup("parse", "t" * 64) == dest
