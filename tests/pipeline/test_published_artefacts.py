"""working_dir holds one run's artefacts: a file the new run does not produce is removed, not left
beside the new ones (an old removed-node `.bc` next to a new `.hbm` misleads)."""

from __future__ import annotations

import pytest

from engine.pipeline import Engine
from tests.pipeline.test_stage_cache import PLAIN


def test_an_artefact_the_new_run_does_not_make_is_removed(project):
    project.model()
    removing = PLAIN.replace("  output_model_file_prefix: tiny\n",
                             "  output_model_file_prefix: tiny\n  remove_node_type: Dequantize\n")
    cfg = project.config(removing)
    first = Engine().run(cfg)
    assert first.ok, [p.render() for p in first.problems]
    assert "tiny_quantized_removed_model.bc" in project.artefacts()

    project.config(PLAIN)
    second = Engine().run(cfg)
    assert second.ok and second.stage("compile").status == "ran"
    names = project.artefacts()
    assert "tiny_quantized_removed_model.bc" not in names
    assert {"tiny.hbm", "tiny_quantized_model.bc", "tiny_advice.json"} <= set(names)

    project.config(removing)  # back: the reused entry publishes it again
    third = Engine().run(cfg)
    assert third.ok and third.stage("compile").status == "reused"
    assert "tiny_quantized_removed_model.bc" in project.artefacts()


def test_artefacts_of_stages_a_run_stops_before_are_removed(project):
    """`hb_compile --skip compile` after a full run: the old `.hbm` / perf report are not this config's
    model, so they leave working_dir; the next full run publishes them again."""
    project.model()
    cfg = project.config(PLAIN)
    assert Engine().run(cfg).ok
    assert {"tiny.hbm", "tiny.json", "tiny.html"} <= set(project.artefacts())

    skipped = Engine().run(cfg, until="report")
    assert skipped.ok
    names = set(project.artefacts())
    assert "tiny_quantized_model.bc" in names
    assert not {"tiny.hbm", "tiny.json", "tiny.html", "tiny_advice.json"} & names

    again = Engine().run(cfg)
    assert again.ok and again.stage("compile").status == "reused"
    assert {"tiny.hbm", "tiny.json", "tiny.html"} <= set(project.artefacts())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artefacts_get_the_mode_the_umask_gives(project, umask):
    """Artefacts are written through temp files (mkstemp: 0600) and renamed into place; they must end
    up with the mode a plain open() gives, so another user or a server can read the .hbm."""
    import os
    import stat

    project.model()
    from engine.pipeline.publish import replace_folder

    cfg = project.config(PLAIN)
    folder = project.root / "entry" / "calibration_data"  # a folder artefact, as dump_calibration_data makes
    folder.mkdir(parents=True)
    (folder / "0.npy").write_bytes(b"x")
    old = os.umask(umask)
    try:
        report = Engine().run(cfg)
        replace_folder(folder, project.root / "model_output" / "calibration_data")
    finally:
        os.umask(old)
    assert report.ok, [p.render() for p in report.problems]
    wd = project.root / "model_output"
    files = [wd / n for n in ("tiny.hbm", "tiny_quantized_model.bc", "tiny_node_info.csv", "tiny.html",
                              "tiny_quant_info.json", "tiny_calibrated_model.onnx")]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}
    dumped = wd / "calibration_data"
    assert stat.S_IMODE(dumped.stat().st_mode) == 0o777 & ~umask


def test_a_warm_engine_still_notices_a_working_dir_that_went_away(project):
    """The write probe runs once per engine and working_dir; later runs ask os.access, so a
    working_dir deleted (recreated) or replaced by a file between runs is still handled."""
    import shutil

    project.model()
    cfg = project.config(PLAIN)
    engine = Engine()
    assert engine.run(cfg).ok
    wd = project.root / "model_output"
    shutil.rmtree(wd)
    assert engine.run(cfg).ok and (wd / "tiny.hbm").is_file()  # deleted: made again
    shutil.rmtree(wd)
    wd.write_text("not a folder")
    blocked = engine.run(cfg)
    assert not blocked.ok
    assert any("Cannot write into working_dir" in p.message for p in blocked.problems)



def _digits_in_place(tmp_path, extra: str = ""):
    """The bundled example compiled with `working_dir: .`: artefacts beside the model and the
    calibration folder, as many users lay it out."""
    import shutil

    from tests.conftest import REPO

    work = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", work, ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    cfg = work / "digits.hb.yaml"
    cfg.write_text(cfg.read_text().replace("working_dir: model_output", "working_dir: .")
                   .replace("  output_model_file_prefix: digits\n", f"  output_model_file_prefix: digits\n{extra}"))
    return work, cfg


def test_working_dir_dot_never_removes_the_calibration_folder(tmp_path):
    """`calibration_data` is also the name of the dump artefact: a run without the dump must not remove
    the user's folder of that name (it did, with all 32 samples)."""
    work, cfg = _digits_in_place(tmp_path)
    samples = sorted(p.name for p in (work / "calibration_data").iterdir())
    first = Engine().run(cfg)
    assert first.ok, [p.render() for p in first.problems]
    assert sorted(p.name for p in (work / "calibration_data").iterdir()) == samples
    again = Engine().run(cfg)  # and the next run still finds its data
    assert again.ok, [p.render() for p in again.problems]


def test_the_calibration_dump_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    work, cfg = _digits_in_place(tmp_path, "  debug_mode: dump_calibration_data\n")
    before = {p.name: p.read_bytes() for p in (work / "calibration_data").iterdir()}
    report = Engine().run(cfg)
    assert not report.ok
    [problem] = [p for p in report.problems if p.code == "artefact-collision"]
    assert "calibration_data" in problem.message and "an input of this run" in problem.message
    assert {p.name: p.read_bytes() for p in (work / "calibration_data").iterdir()} == before
    assert not list(work.glob("digits_*")) and not (work / "digits.hbm").exists()  # nothing published: all or none
    (work / "calibration_data").rename(work / "cal")  # the data elsewhere; a folder of the user's keeps the name
    cfg.write_text(cfg.read_text().replace("cal_data_dir: ./calibration_data", "cal_data_dir: ./cal"))
    (work / "calibration_data").mkdir()
    (work / "calibration_data" / "notes.txt").write_text("mine")
    report = Engine().run(cfg)
    [problem] = [p for p in report.problems if p.code == "artefact-collision"]
    assert "did not write" in problem.message and (work / "calibration_data" / "notes.txt").read_text() == "mine"


def test_a_file_with_an_artefact_name_is_removed_only_while_it_holds_what_was_published(project):
    """`--skip compile` removes the previous run's perf report — not a file of the user's that merely has
    its name, nor a published one the user has changed since."""
    cfg = project.config(PLAIN)
    wd = project.root / "model_output"
    wd.mkdir()
    (wd / "tiny.json").write_text('{"mine": true}')  # the user's, never published
    assert Engine().run(cfg, until="report").ok
    assert (wd / "tiny.json").read_text() == '{"mine": true}'

    assert Engine().run(cfg).ok  # now published (the artefact's own name: overwritten, as hb_compile does)
    assert (wd / "tiny.json").read_text() != '{"mine": true}'
    (wd / "tiny.html").write_text("<p>my notes</p>")  # a published file changed since
    assert Engine().run(cfg, until="report").ok
    assert not (wd / "tiny.json").exists() and not (wd / "tiny.hbm").exists()  # still what was published: removed
    assert (wd / "tiny.html").read_text() == "<p>my notes</p>"  # changed since: kept


def test_an_artefact_never_removes_or_replaces_an_input_of_the_run(tmp_path):
    """R2 §5: a run whose cal_data_dir is an earlier run's dump folder removed it as a stale artefact (the
    dump is off this time); the next run had no calibration data."""
    work, cfg = _digits_in_place(tmp_path, "  debug_mode: dump_calibration_data\n")
    (work / "calibration_data").rename(work / "cal")
    cfg.write_text(cfg.read_text().replace("cal_data_dir: ./calibration_data", "cal_data_dir: ./cal"))
    assert Engine().run(cfg).ok  # dumps working_dir/calibration_data/input/*.npy
    dumped = work / "calibration_data" / "input"
    samples = sorted(p.name for p in dumped.iterdir())
    cfg.write_text(cfg.read_text().replace("  debug_mode: dump_calibration_data\n", "")
                   .replace("cal_data_dir: ./cal", "cal_data_dir: ./calibration_data/input")
                   .replace("  cal_data_type: uint8\n", ""))
    second = Engine().run(cfg)
    assert second.ok, [p.render() for p in second.problems]
    assert sorted(p.name for p in dumped.iterdir()) == samples  # still there: this run reads it
    assert Engine().run(cfg).ok


def test_with_no_record_an_old_model_of_ours_is_still_removed_and_nothing_else(project):
    """R2 §2: a working_dir from before the record (or with .hb_cache deleted): `--skip compile` must not
    leave an old `.hbm` beside the new `.bc`; a file that is not recognizably ours stays."""
    import shutil

    cfg = project.config(PLAIN)
    assert Engine().run(cfg).ok
    wd = project.root / "model_output"
    shutil.rmtree(wd / ".hb_cache")
    (wd / "tiny_sensitivity.json").write_text("{}")  # not recognizably ours: kept
    assert Engine().run(cfg, until="report").ok
    assert not (wd / "tiny.hbm").exists()
    assert (wd / "tiny_sensitivity.json").read_text() == "{}"


def test_a_model_is_recognized_by_its_stamp_even_when_its_metadata_is_large(tmp_path):
    """The stamp sits in the metadata after the graph; a big model's node map puts it tens of KB from the
    end of the file (PP-OCRv4 rec's .bc: ~60 KB)."""
    import onnx

    from engine.pipeline.publish import recognizably_ours
    from tests.conftest import conv_relu_model

    model = conv_relu_model()
    onnx.helper.set_model_props(model, {"hbcompile.stage": "quantized", "hbcompile.node_map": "x" * 500_000})
    onnx.save(model, str(tmp_path / "big.bc"))
    plain = conv_relu_model()
    onnx.save(plain, str(tmp_path / "theirs.onnx"))
    assert recognizably_ours(tmp_path / "big.bc") and not recognizably_ours(tmp_path / "theirs.onnx")
